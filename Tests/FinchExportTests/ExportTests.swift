import XCTest
import FinchTestSupport
@testable import FinchKernels
@testable import FinchIO
@testable import FinchTokenizers
@testable import FinchModels
@testable import FinchExport

/// `finch export`: merged weights equal model + adapter, Finch reads its exports back, GGUF to
/// HF to GGUF keeps f32 tensors bit for bit, q8_0 matches ggml's quantizer, and each refusal
/// says what was wrong. (reference/check_export.py checks the same exports in transformers.)
final class ExportTests: TemporaryDirectoryTestCase {
    typealias S = TestSupport

    func parity(_ name: String) -> String { S.fixtures.appendingPathComponent("parity/\(name)").path }
    func out(_ name: String) -> String { temporary.appendingPathComponent(name).path }

    /// Logits of the model at `path` (plus adapter) on the parity fixture's batch.
    func logits(_ path: String, adapter: String? = nil, fixture: String) throws -> [Float] {
        let expected = try SafeTensors.read(path: parity(fixture) + "/expected.safetensors")
        let shape = expected["input_ids"]!.shape
        let batch = TokenBatch(batch: shape[0], seq: shape[1], ids: dequantize(expected["input_ids"]!).map { Int32($0) },
                               mask: dequantize(expected["attention_mask"]!))
        let files = try ModelFiles.open(path)
        return try Transformer(files: files, adapter: adapter).logits(batch)
    }

    // MARK: - Merging

    func testMergedHFExportGivesTheLogitsOfModelPlusAdapter() throws {
        // llama_tied: alpha/r scale; qwen2_bias: rsLoRA, biases; llama_scaled: separate head, llama3 rope.
        for name in ["llama_tied", "qwen2_bias", "llama_scaled", "qwen3_qknorm", "smollm3_norope"] {
            let adapter = parity(name) + "/adapter"
            let withAdapter = try logits(parity(name), adapter: adapter, fixture: name)
            let base = try logits(parity(name), fixture: name)
            let folder = out("\(name)-merged")
            let summary = try Exporter.export(ExportOptions(model: parity(name), adapter: adapter, format: .hf, dtype: .f32, output: folder))
            XCTAssertEqual(summary.mergedModules, 14, name)   // 7 projections x 2 layers
            let merged = try logits(folder, fixture: name)
            XCTAssertLessThan(S.maxRelativeError(merged, withAdapter), 1e-5, name)
            // The adapter changes the logits, so the comparison above can fail.
            XCTAssertGreaterThan(S.maxRelativeError(base, withAdapter), 1e-2, name)
            // And matches transformers + peft's logits (fixture).
            let expected = dequantize(try SafeTensors.read(path: parity(name) + "/expected.safetensors")["lora_logits"]!)
            XCTAssertLessThan(S.maxRelativeError(merged, expected), 1e-4, name)
            XCTAssertTrue(FileManager.default.fileExists(atPath: folder + "/generation_config.json"), name)
        }
    }

    // MARK: - LoRA adapter as GGUF

    /// llama.cpp applies a LoRA GGUF as W x + (alpha / r) B (A x) on the base GGUF's weights: that
    /// sum, formed from the two files Finch writes, equals the weights of Finch's merged GGUF
    /// export (q/k rows permuted alike), for alpha/r and rsLoRA scales.
    func testAdapterGGUFOverTheBaseGivesTheMergedWeights() throws {
        for name in ["llama_tied", "qwen2_bias"] {
            let adapter = parity(name) + "/adapter"
            let base = out("\(name)-base.gguf"), merged = out("\(name)-merged.gguf"), lora = out("\(name)-lora.gguf")
            try Exporter.export(ExportOptions(model: parity(name), format: .gguf, output: base))
            try Exporter.export(ExportOptions(model: parity(name), adapter: adapter, format: .gguf, output: merged))
            let summary = try Exporter.export(ExportOptions(model: parity(name), adapter: adapter, format: .ggufLoRA, output: lora))
            XCTAssertEqual(summary.tensorCount, 28, name)
            let (b, m, l) = (try GGUFFile(path: base), try GGUFFile(path: merged), try GGUFFile(path: lora))
            XCTAssertEqual(l.metadata["general.type"]?.string, "adapter")
            XCTAssertEqual(l.metadata["adapter.type"]?.string, "lora")
            XCTAssertEqual(l.metadata["general.architecture"]?.string, b.metadata["general.architecture"]?.string)
            let config = try PEFTAdapter.config(directory: adapter)
            let alpha = try XCTUnwrap(l.metadata["adapter.lora.alpha"]?.float)
            XCTAssertEqual(alpha / Float(config.rank), config.scale, accuracy: 1e-6, name)   // rsLoRA: alpha * sqrt(r) written
            var checked = 0
            for tensorName in l.tensorNames where tensorName.hasSuffix(".lora_a") {
                let weight = String(tensorName.dropLast(".lora_a".count))
                let a = dequantize(l.tensors[tensorName]!), bMatrix = dequantize(l.tensors[weight + ".lora_b"]!)
                let w = b.tensors[weight]!, out = w.shape[0], inputs = w.shape[1], r = config.rank
                XCTAssertEqual(l.tensors[tensorName]!.shape, [r, inputs], tensorName)
                XCTAssertEqual(l.tensors[weight + ".lora_b"]!.shape, [out, r], tensorName)
                var sum = dequantize(w)
                for i in 0..<out { for j in 0..<inputs {
                    var dot: Float = 0
                    for k in 0..<r { dot += bMatrix[i * r + k] * a[k * inputs + j] }
                    sum[i * inputs + j] += alpha / Float(r) * dot
                } }
                XCTAssertLessThan(S.maxRelativeError(sum, dequantize(m.tensors[weight]!)), 1e-5, "\(name) \(weight)")
                XCTAssertGreaterThan(S.maxRelativeError(dequantize(w), dequantize(m.tensors[weight]!)), 1e-3, "\(name) \(weight) unchanged")
                checked += 1
            }
            XCTAssertEqual(checked, 14, name)
        }
        XCTAssertThrowsError(try Exporter.export(ExportOptions(model: parity("llama_tied"), format: .ggufLoRA, output: out("x.gguf")))) {
            XCTAssertEqual($0 as? ExportError, .adapterRequired(format: .ggufLoRA))
        }
    }

    // MARK: - Quantized GGUF

    /// llama.cpp's choices for SmolLM2-135M (30 layers, rows of 576 and 1536, 9 heads over 3 KV
    /// heads, tied embeddings): the mixture raises attn_v and ffn_down in the layers
    /// use_more_bits picks; rows of 576 take the block-32 fallbacks; norms stay F32.
    func testTensorTypesFollowLlamaCppMixtures() {
        func types(_ fileType: ExportDType) -> String {
            let chooser = GGUFTensorTypes(fileType: fileType, layerCount: 30, groupSize: 3, tiedEmbeddings: true)
            var tensors: [(name: String, type: DType)] = [("token_embd.weight", chooser.type(of: "token_embd.weight", shape: [49152, 576]))]
            for l in (0..<30).sorted(by: { String($0) < String($1) }) {   // file order need not be layer order
                for (name, shape) in [("attn_q", [576, 576]), ("attn_k", [192, 576]), ("attn_v", [192, 576]), ("attn_output", [576, 576]),
                                      ("ffn_gate", [1536, 576]), ("ffn_up", [1536, 576]), ("ffn_down", [576, 1536]), ("attn_norm", [576])] {
                    let full = "blk.\(l).\(name).weight"
                    tensors.append((full, chooser.type(of: full, shape: shape)))
                }
            }
            return GGUFTensorTypes.summary(tensors)
        }
        XCTAssertEqual(GGUFTensorTypes.usesMoreBits(0, of: 30), true)
        XCTAssertEqual((0..<30).filter { GGUFTensorTypes.usesMoreBits($0, of: 30) }, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29])
        // The layers llama.cpp's own q4_k_m of SmolLM2 holds in Q6_K, whatever the file order.
        let q4km = GGUFTensorTypes(fileType: .q4_k_m, layerCount: 30, groupSize: 3, tiedEmbeddings: true)
        XCTAssertEqual((0..<30).filter { q4km.type(of: "blk.\($0).ffn_down.weight", shape: [576, 1536]) == .q6_K },
                       [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29])
        XCTAssertEqual(types(.q4_k_m), "token_embd.weight Q8_0; attn_q.weight Q5_0 x30; attn_k.weight Q5_0 x30; attn_v.weight Q8_0 x14, Q5_0 x16; "
                       + "attn_output.weight Q5_0 x30; ffn_gate.weight Q5_0 x30; ffn_up.weight Q5_0 x30; ffn_down.weight Q6_K x14, Q4_K x16; attn_norm.weight F32 x30")
        XCTAssertEqual(types(.q5_k_m), "token_embd.weight Q8_0; attn_q.weight Q5_1 x30; attn_k.weight Q5_1 x30; attn_v.weight Q8_0 x14, Q5_1 x16; "
                       + "attn_output.weight Q5_1 x30; ffn_gate.weight Q5_1 x30; ffn_up.weight Q5_1 x30; ffn_down.weight Q6_K x14, Q5_K x16; attn_norm.weight F32 x30")
        XCTAssertEqual(types(.q4_0), "token_embd.weight Q8_0; attn_q.weight Q4_0 x30; attn_k.weight Q4_0 x30; attn_v.weight Q4_0 x30; "
                       + "attn_output.weight Q4_0 x30; ffn_gate.weight Q4_0 x30; ffn_up.weight Q4_0 x30; ffn_down.weight Q4_0 x30; attn_norm.weight F32 x30")
        XCTAssertEqual(types(.q6_k), "token_embd.weight Q8_0; attn_q.weight Q8_0 x30; attn_k.weight Q8_0 x30; attn_v.weight Q8_0 x30; "
                       + "attn_output.weight Q8_0 x30; ffn_gate.weight Q8_0 x30; ffn_up.weight Q8_0 x30; ffn_down.weight Q6_K x30; attn_norm.weight F32 x30")
        XCTAssertEqual(types(.f16), "token_embd.weight F16; attn_q.weight F16 x30; attn_k.weight F16 x30; attn_v.weight F16 x30; "
                       + "attn_output.weight F16 x30; ffn_gate.weight F16 x30; ffn_up.weight F16 x30; ffn_down.weight F16 x30; attn_norm.weight F32 x30")
    }

    /// IQ4_NL and IQ4_XS files, and Phi-3's joined attn_qkv (llama.cpp counts it as attn_v): the
    /// types llama.cpp's quantizer gave SmolLM2 (with and without an importance matrix) and a
    /// 2-layer Phi-3, compared by hand with reference/llamacpp_quantize.py.
    func testIQ4FileTypesAndJoinedQKVFollowLlamaCpp() {
        for fileType in [ExportDType.iq4_nl, .iq4_xs] {
            let base = fileType.dtype
            let plain = GGUFTensorTypes(fileType: fileType, layerCount: 30, groupSize: 3, tiedEmbeddings: true)
            let weighted = GGUFTensorTypes(fileType: fileType, layerCount: 30, groupSize: 3, tiedEmbeddings: true, hasImportance: true)
            XCTAssertEqual((0..<30).filter { plain.type(of: "blk.\($0).ffn_down.weight", shape: [576, 1536]) == .q5_K }, [0, 1, 2], fileType.rawValue)
            XCTAssertEqual(plain.type(of: "blk.3.ffn_down.weight", shape: [576, 1536]), base)
            XCTAssertEqual(weighted.type(of: "blk.0.ffn_down.weight", shape: [576, 1536]), base, "an importance matrix lifts the rule")
            XCTAssertEqual(plain.type(of: "blk.0.attn_q.weight", shape: [576, 576]), .iq4_NL, "576 columns: IQ4_XS falls back to IQ4_NL")
            XCTAssertEqual(plain.type(of: "token_embd.weight", shape: [49152, 576]), .q8_0)
            let gqa4 = GGUFTensorTypes(fileType: fileType, layerCount: 16, groupSize: 4, tiedEmbeddings: false)
            XCTAssertEqual(gqa4.type(of: "blk.5.attn_v.weight", shape: [512, 2048]), .q5_K, "n_gqa >= 4")
            XCTAssertEqual(gqa4.type(of: "token_embd.weight", shape: [128256, 2048]), base)
        }
        let phi = GGUFTensorTypes(fileType: .q4_k_m, layerCount: 32, groupSize: 1, tiedEmbeddings: false)
        XCTAssertEqual(phi.type(of: "blk.0.attn_qkv.weight", shape: [9216, 3072]), .q6_K)
        XCTAssertEqual(phi.type(of: "blk.5.attn_qkv.weight", shape: [9216, 3072]), .q4_K)
        XCTAssertEqual(GGUFTensorTypes(fileType: .q3_k_m, layerCount: 32, groupSize: 1, tiedEmbeddings: false)
                        .type(of: "blk.1.attn_qkv.weight", shape: [9216, 3072]), .q5_K)
        // The tiny Phi-3 fixture (64 columns): llama.cpp's q4_k_m holds layer 1's attn_qkv in Q8_0 (Q6_K's fallback).
        XCTAssertEqual(GGUFTensorTypes(fileType: .q4_k_m, layerCount: 2, groupSize: 1, tiedEmbeddings: false)
                        .type(of: "blk.1.attn_qkv.weight", shape: [192, 64]), .q8_0)
    }

    /// llama-quantize's `--pure`, `--output-tensor-type` and `--token-embedding-type`: the types its
    /// quantizer gave SmolLM2 with them (all 272 tensors equal, by hand with
    /// `reference/llamacpp_quantize.py ... --pure` etc.), and a named type that does not fit refused.
    func testPureAndUserTypesFollowLlamaCpp() throws {
        var pure = GGUFTensorTypes(fileType: .q4_k_m, layerCount: 30, groupSize: 3, tiedEmbeddings: true)
        pure.pure = true
        XCTAssertEqual(pure.type(of: "blk.0.ffn_down.weight", shape: [576, 1536]), .q4_K, "no layer protected")
        XCTAssertEqual(pure.type(of: "blk.0.attn_v.weight", shape: [192, 576]), .q5_0, "the fallback still applies")
        XCTAssertEqual(pure.type(of: "token_embd.weight", shape: [49152, 576]), .q5_0)
        var tied = GGUFTensorTypes(fileType: .q4_k_m, layerCount: 30, groupSize: 3, tiedEmbeddings: true)
        tied.outputType = .q8_0
        XCTAssertEqual(tied.type(of: "token_embd.weight", shape: [49152, 576]), .q8_0, "a tied embedding follows the output's type")
        tied.embeddingType = .f16
        XCTAssertEqual(tied.type(of: "token_embd.weight", shape: [49152, 576]), .f16, "its own type wins")
        var untied = GGUFTensorTypes(fileType: .q5_k_m, layerCount: 16, groupSize: 4, tiedEmbeddings: false)
        untied.outputType = .f16
        untied.embeddingType = .q4_0
        XCTAssertEqual(untied.type(of: "output.weight", shape: [128256, 2048]), .f16)
        XCTAssertEqual(untied.type(of: "token_embd.weight", shape: [128256, 2048]), .q4_0)
        XCTAssertEqual(untied.type(of: "blk.0.attn_q.weight", shape: [2048, 2048]), .q5_K)

        var options = ExportOptions(model: parity("llama_tied"), format: .gguf, dtype: .q4_0, output: out("t.gguf"))
        options.tokenEmbeddingType = .q6_K  // 256-value blocks, 64 columns
        XCTAssertThrowsError(try Exporter.export(options)) { error in
            for part in ["--token-embedding-type", "token_embd.weight", "Q6_K", "64 columns"] { XCTAssertTrue("\(error)".contains(part), "\(error)") }
        }
        options.tokenEmbeddingType = .q8_0
        XCTAssertEqual(try Exporter.export(options).tensorTypes?.hasPrefix("token_embd.weight Q8_0"), true)
        var hf = ExportOptions(model: parity("llama_tied"), format: .hf, output: out("hf"))
        hf.pure = true
        XCTAssertThrowsError(try Exporter.export(hf)) { XCTAssertTrue("\($0)".contains("--pure"), "\($0)") }
    }

    /// An 8-expert model (llama.cpp's Mixtral rule): attn_k and attn_v at Q8_0, attn_output at Q5_K
    /// in the low-bit mixtures, the stacked experts as the dense projections, the router F32. The
    /// same choices, and the same bytes, as llama.cpp's quantizer on a 4-layer Qwen3-MoE with 8
    /// experts of rows 256 (q2_k, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_m, q6_k, q4_0 compared by hand
    /// with reference/llamacpp_quantize.py on Finch's f32 export).
    func testTensorTypesOfAnEightExpertModelFollowLlamaCpp() {
        func types(_ fileType: ExportDType) -> String {
            let chooser = GGUFTensorTypes(fileType: fileType, layerCount: 4, groupSize: 2, tiedEmbeddings: false, expertCount: 8)
            var tensors: [(name: String, type: DType)] = []
            for l in 0..<4 {
                for (name, shape) in [("attn_q", [256, 256]), ("attn_k", [128, 256]), ("attn_v", [128, 256]), ("attn_output", [256, 256]),
                                      ("ffn_gate_inp", [8, 256]), ("ffn_gate_exps", [8, 256, 256]), ("ffn_down_exps", [8, 256, 256])] {
                    let full = "blk.\(l).\(name).weight"
                    tensors.append((full, chooser.type(of: full, shape: shape)))
                }
            }
            return GGUFTensorTypes.summary(tensors)
        }
        XCTAssertEqual(types(.q4_k_m), "attn_q.weight Q4_K x4; attn_k.weight Q8_0 x4; attn_v.weight Q8_0 x4; attn_output.weight Q5_K x4; "
                       + "ffn_gate_inp.weight F32 x4; ffn_gate_exps.weight Q4_K x4; ffn_down_exps.weight Q4_K x2, Q6_K x2")
        XCTAssertEqual(types(.q6_k), "attn_q.weight Q6_K x4; attn_k.weight Q8_0 x4; attn_v.weight Q8_0 x4; attn_output.weight Q6_K x4; "
                       + "ffn_gate_inp.weight F32 x4; ffn_gate_exps.weight Q6_K x4; ffn_down_exps.weight Q6_K x4")
        let dense = GGUFTensorTypes(fileType: .q4_k_m, layerCount: 4, groupSize: 2, tiedEmbeddings: false, expertCount: 4)
        XCTAssertEqual(dense.type(of: "blk.1.attn_k.weight", shape: [128, 256]), .q4_K, "the bump is for 8 experts only")
    }

    /// A quantized export reads back (every type dequantizes) and stays near the f32 model's logits.
    func testQuantizedExportsReadBackNearTheF32Model() throws {
        let name = "llama_tied", reference = try logits(parity(name), fixture: name)
        for (quant, tolerance) in [(ExportDType.q8_0, Float(0.02)), (.q6_k, 0.05), (.q5_k_m, 0.1), (.q4_k_m, 0.2), (.q5_0, 0.1), (.q4_0, 0.2)] {
            let path = out("\(quant.rawValue).gguf")
            let summary = try Exporter.export(ExportOptions(model: parity(name), format: .gguf, dtype: quant, output: path))
            XCTAssertNotNil(summary.tensorTypes)
            let file = try GGUFFile(path: path)
            XCTAssertEqual(file.metadata["general.file_type"]?.int, Int(quant.ggufFileType), quant.rawValue)
            let error = S.maxRelativeError(try logits(path, fixture: name), reference)
            XCTAssertLessThan(error, tolerance, quant.rawValue)
            XCTAssertGreaterThan(error, 0, quant.rawValue)
        }
    }

    func testLowerPrecisionExportsReadBackCloseToF32() throws {
        let name = "llama_tied", adapter = parity(name) + "/adapter"
        let reference = try logits(parity(name), adapter: adapter, fixture: name)
        for (format, dtype, tolerance) in [(ExportFormat.hf, ExportDType.f16, Float(5e-3)), (.hf, .bf16, 3e-2),
                                           (.gguf, .f32, 1e-5), (.gguf, .f16, 5e-3), (.gguf, .bf16, 3e-2), (.gguf, .q8_0, 3e-2)] {
            let path = out("m-\(dtype.rawValue)" + (format == .gguf ? ".gguf" : ""))
            try Exporter.export(ExportOptions(model: parity(name), adapter: adapter, format: format, dtype: dtype, output: path))
            let back = try ModelFiles.open(path)
            XCTAssertEqual(back.config.hiddenSize, 64)
            let error = S.maxRelativeError(try logits(path, fixture: name), reference)
            XCTAssertLessThan(error, tolerance, "\(format) \(dtype)")
            if format == .gguf {
                let gguf = try GGUFFile(path: path)
                XCTAssertEqual(gguf.tensors["blk.0.attn_q.weight"]?.dtype, dtype.dtype)
                XCTAssertEqual(gguf.tensors["blk.0.attn_norm.weight"]?.dtype, .f32, "norms stay f32")
                XCTAssertEqual(gguf.metadata["general.file_type"]?.int, [ExportDType.f32: 0, .f16: 1, .q8_0: 7, .bf16: 32][dtype])
            } else {
                XCTAssertEqual(back.tensors["model.norm.weight"]?.dtype, dtype.dtype)
            }
        }
    }

    // MARK: - GGUF

    func testGGUFToHFToGGUFKeepsF32TensorsBitIdentical() throws {
        let source = S.fixtures.appendingPathComponent("gguf/tiny_llama.gguf").path
        let first = out("first.gguf"), folder = out("hf"), second = out("second.gguf")
        try Exporter.export(ExportOptions(model: source, format: .gguf, dtype: .f32, output: first))
        try Exporter.export(ExportOptions(model: first, format: .hf, dtype: .f32, output: folder))
        try Exporter.export(ExportOptions(model: folder, format: .gguf, dtype: .f32, output: second))
        let a = try GGUFFile(path: first), b = try GGUFFile(path: second)
        XCTAssertEqual(a.tensorNames, b.tensorNames)
        XCTAssertEqual(a.tensorNames.count, 1 + 2 * 9 + 1)
        for name in a.tensorNames {
            let x = a.tensors[name]!, y = b.tensors[name]!
            XCTAssertEqual(x.dtype, .f32, name)
            XCTAssertEqual(x.shape, y.shape, name)
            XCTAssertEqual(memcmp(x.bytes, y.bytes, x.byteCount), 0, "\(name) differs")
        }
        for key in ["llama.embedding_length", "llama.block_count", "llama.attention.head_count", "llama.attention.head_count_kv",
                    "llama.feed_forward_length", "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon"] {
            XCTAssertEqual(a.metadata[key]?.double, b.metadata[key]?.double, key)
        }
        // The source's f16 and q8_0 weights, dequantized, are what the export holds; q/k rows
        // are back in llama.cpp's order (the source's own), so F16 rows compare exactly.
        let original = try GGUFFile(path: source)
        XCTAssertEqual(dequantize(original.tensors["blk.0.attn_q.weight"]!), dequantize(a.tensors["blk.0.attn_q.weight"]!))
        XCTAssertEqual(dequantize(original.tensors["blk.1.attn_k.weight"]!), dequantize(a.tensors["blk.1.attn_k.weight"]!))
        // And all three load as the same model.
        let expected = try SafeTensors.read(path: S.fixtures.appendingPathComponent("gguf/expected_tiny.safetensors").path)
        let hf = try ModelFiles.open(folder)
        for (name, tensor) in hf.tensors {
            XCTAssertEqual(dequantize(tensor), dequantize(expected["tiny_llama." + name]!), name)
        }
    }

    /// Llama 3 rope scaling goes to GGUF as llama.cpp writes it, the tensor rope_freqs.weight
    /// (equal to the factors transformers' llama3 inverse frequencies imply: fixture), and comes
    /// back as the same scaling from the factors alone; the same model answers alike from both
    /// files. A tensor that disagrees with a declared scaling, or that no Llama 3 scaling gives,
    /// is refused naming it.
    func testLlama3RopeScalingThroughGGUF() throws {
        let name = "llama_scaled", path = out("scaled.gguf")
        try Exporter.export(ExportOptions(model: parity(name), format: .gguf, dtype: .f32, output: path))
        let gguf = try GGUFFile(path: path)
        XCTAssertEqual(gguf.tensorNames.first, "rope_freqs.weight")
        let record = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: parity(name) + "/rope_freqs.json"))) as! [String: Any]
        let want = (record["factors"] as! [NSNumber]).map(\.floatValue), got = dequantize(gguf.tensors["rope_freqs.weight"]!)
        XCTAssertEqual(got.count, want.count)
        for (g, w) in zip(got, want) { XCTAssertEqual(g, w, accuracy: 1e-6 * w) }
        let source = try ModelFiles.open(parity(name))
        XCTAssertEqual(try ModelFiles.open(path).config.ropeScaling, source.config.ropeScaling)
        XCTAssertLessThan(S.maxRelativeError(try logits(path, fixture: name), try logits(parity(name), fixture: name)), 1e-5)

        // The same file with a declared scaling the tensor disagrees with, then with factors no
        // Llama 3 scaling gives.
        func rewrite(_ output: String, extra: [(key: String, value: GGUFValue)], factors: [Float]? = nil) throws {
            let metadata = gguf.metadataKeys.map { (key: $0, value: gguf.metadata[$0]!) } + extra
            let tensors = gguf.tensorNames.map { GGUFWriter.Tensor(name: $0, shape: gguf.tensors[$0]!.shape, dtype: gguf.tensors[$0]!.dtype) }
            try GGUFWriter.write(path: output, metadata: metadata, tensors: tensors) { index, sink in
                let t = gguf.tensors[tensors[index].name]!
                if index == 0, let factors { try factors.withUnsafeBytes { try sink($0) } } else { try sink(UnsafeRawBufferPointer(start: t.bytes, count: t.byteCount)) }
            }
        }
        let declared = out("declared.gguf")
        try rewrite(declared, extra: [("llama.rope.scaling.type", .string("llama3")), ("llama.rope.scaling.factor", .float32(4)),
                                      ("llama.rope.scaling.low_freq_factor", .float32(1)), ("llama.rope.scaling.high_freq_factor", .float32(4)),
                                      ("llama.rope.scaling.original_context_length", .uint32(64))])
        XCTAssertThrowsError(try ModelFiles.open(declared)) {
            XCTAssertTrue("\($0)".contains("rope_freqs.weight[1]") && "\($0)".contains("declares"), "\($0)")
        }
        let odd = out("odd.gguf")
        try rewrite(odd, extra: [], factors: [1, 5, 2, 8, 8, 8, 8, 8])
        XCTAssertThrowsError(try ModelFiles.open(odd)) {
            XCTAssertTrue("\($0)".contains("rope_freqs.weight") && "\($0)".contains("Llama 3 rope scaling"), "\($0)")
        }
    }

    /// Qwen3 (q and k RMS norms) goes to GGUF as llama.cpp's architecture qwen3 and back with the
    /// same logits as transformers' (parity fixture).
    func testQwen3ThroughGGUF() throws {
        let name = "qwen3_qknorm", path = out("qwen3.gguf")
        try Exporter.export(ExportOptions(model: parity(name), format: .gguf, dtype: .f32, output: path))
        let gguf = try GGUFFile(path: path)
        XCTAssertEqual(gguf.metadata["general.architecture"]?.string, "qwen3")
        XCTAssertNotNil(gguf.tensors["blk.1.attn_k_norm.weight"])
        let back = try ModelFiles.open(path)
        XCTAssertEqual(back.config.modelType, "qwen3")
        XCTAssertTrue(back.config.qkNorm)
        let expected = dequantize(try SafeTensors.read(path: parity(name) + "/expected.safetensors")["logits"]!)
        XCTAssertLessThan(S.maxRelativeError(try logits(path, fixture: name), expected), 1e-4)
        XCTAssertLessThan(S.maxRelativeError(try logits(path, fixture: name), try logits(parity(name), fixture: name)), 1e-5)
    }

    /// Phi-3 as llama.cpp's `phi3`: the joined `attn_qkv` and `ffn_up`, the rotated dimensions,
    /// LongRoPE's factor tensors and keys; read back as the same model, with its adapter merged too.
    func testPhi3ThroughGGUF() throws {
        let name = "phi3_longrope", path = out("phi3.gguf")
        try Exporter.export(ExportOptions(model: parity(name), format: .gguf, dtype: .f32, output: path))
        let gguf = try GGUFFile(path: path)
        XCTAssertEqual(gguf.metadata["general.architecture"]?.string, "phi3")
        XCTAssertEqual(gguf.metadata["phi3.rope.dimension_count"]?.int, 8)
        XCTAssertEqual(gguf.metadata["phi3.rope.scaling.original_context_length"]?.int, 8)
        XCTAssertEqual(gguf.tensors["blk.0.attn_qkv.weight"]?.shape, [128, 64])
        XCTAssertEqual(gguf.tensors["blk.0.ffn_up.weight"]?.shape, [192, 64])
        XCTAssertEqual(dequantize(try XCTUnwrap(gguf.tensors["rope_factors_long.weight"])), [1.1, 2, 3.5, 7])
        let back = try ModelFiles.open(path)
        XCTAssertEqual(back.config.modelType, "phi3")
        XCTAssertEqual(back.config.rotaryDim, 8)
        XCTAssertEqual(back.config.ropeScaling, try ModelFiles.open(parity(name)).config.ropeScaling)
        let expected = dequantize(try SafeTensors.read(path: parity(name) + "/expected.safetensors")["logits"]!)
        XCTAssertLessThan(S.maxRelativeError(try logits(path, fixture: name), expected), 1e-4)
        XCTAssertLessThan(S.maxRelativeError(try logits(path, fixture: name), try logits(parity(name), fixture: name)), 1e-5)

        let merged = out("phi3-merged.gguf")
        try Exporter.export(ExportOptions(model: parity(name), adapter: parity(name) + "/adapter", format: .gguf, dtype: .f32, output: merged))
        let lora = dequantize(try SafeTensors.read(path: parity(name) + "/expected.safetensors")["lora_logits"]!)
        XCTAssertLessThan(S.maxRelativeError(try logits(merged, fixture: name), lora), 1e-4)
    }

    /// SmolLM3 as llama.cpp's `smollm3` (Llama's tensors, q/k rows permuted) plus Finch's
    /// `smollm3.no_rope_layers`; without that key a file reads with llama.cpp's rule (every 4th
    /// layer without RoPE).
    func testSmolLM3ThroughGGUF() throws {
        let name = "smollm3_norope", path = out("smollm3.gguf")
        try Exporter.export(ExportOptions(model: parity(name), format: .gguf, dtype: .f32, output: path))
        let gguf = try GGUFFile(path: path)
        XCTAssertEqual(gguf.metadata["general.architecture"]?.string, "smollm3")
        XCTAssertEqual(gguf.metadata["smollm3.no_rope_layers"]?.array?.compactMap(\.int), [1, 0])
        let back = try ModelFiles.open(path)
        XCTAssertEqual(back.config.modelType, "smollm3")
        XCTAssertEqual(back.config.layersWithoutRope, [1])
        let expected = dequantize(try SafeTensors.read(path: parity(name) + "/expected.safetensors")["logits"]!)
        XCTAssertLessThan(S.maxRelativeError(try logits(path, fixture: name), expected), 1e-4)
        XCTAssertLessThan(S.maxRelativeError(try logits(path, fixture: name), try logits(parity(name), fixture: name)), 1e-5)

        // The same file as llama.cpp's converter writes it: no key, so no layer of two is a 4th.
        let plain = out("smollm3-llamacpp.gguf")
        let tensors = gguf.tensorNames.map { GGUFWriter.Tensor(name: $0, shape: gguf.tensors[$0]!.shape, dtype: gguf.tensors[$0]!.dtype) }
        try GGUFWriter.write(path: plain, metadata: gguf.metadataKeys.filter { $0 != "smollm3.no_rope_layers" && $0 != "general.alignment" }
                                .map { (key: $0, value: gguf.metadata[$0]!) }, tensors: tensors) { index, sink in
            let t = gguf.tensors[gguf.tensorNames[index]]!
            try sink(UnsafeRawBufferPointer(start: t.bytes, count: t.byteCount))
        }
        XCTAssertEqual(try ModelFiles.open(plain).config.layersWithoutRope, [])
        XCTAssertGreaterThan(S.maxRelativeError(try logits(plain, fixture: name), expected), 1e-3, "layer 1's RoPE changes the logits")
    }

    func testGGUFWriterRoundTripsEveryMetadataType() throws {
        let path = out("types.gguf")
        let metadata: [(key: String, value: GGUFValue)] = [
            ("general.architecture", .string("llama")), ("u8", .uint8(200)), ("i8", .int8(-5)), ("u16", .uint16(60000)),
            ("i16", .int16(-300)), ("u32", .uint32(4_000_000_000)), ("i32", .int32(-7)), ("f32", .float32(1.5)),
            ("b", .bool(true)), ("s", .string("héllo")), ("u64", .uint64(1 << 40)), ("i64", .int64(-(1 << 40))),
            ("f64", .float64(-2.25)), ("strings", .array([.string("a"), .string("b c")])),
            ("nested", .array([.array([.int32(1), .int32(2)]), .array([.int32(3)])])),
        ]
        let values: [Float] = (0..<96).map { Float($0) / 7 }
        try GGUFWriter.write(path: path, metadata: metadata, tensors: [GGUFWriter.Tensor(name: "t", shape: [3, 32], dtype: .f32),
                                                                       GGUFWriter.Tensor(name: "v", shape: [5], dtype: .f16)]) { index, sink in
            let count = index == 0 ? 96 : 5
            var bytes = [UInt8](repeating: 0, count: count * 4)
            let n = values.withUnsafeBufferPointer { v in bytes.withUnsafeMutableBytes { encodeRow(v.baseAddress!, as: index == 0 ? .f32 : .f16, into: $0.baseAddress!, count: count) } }
            try bytes.withUnsafeBytes { try sink(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        }
        let file = try GGUFFile(path: path)
        XCTAssertEqual(file.version, 3)
        for (key, value) in metadata { XCTAssertEqual(file.metadata[key], value, key) }
        XCTAssertEqual(file.metadata["general.alignment"], .uint32(32))
        XCTAssertEqual(file.metadataKeys.prefix(2), ["general.architecture", "general.alignment"])
        XCTAssertEqual(file.tensors["t"]!.shape, [3, 32])
        XCTAssertEqual(dequantize(file.tensors["t"]!), values)
        XCTAssertEqual(dequantize(file.tensors["v"]!), values.prefix(5).map { Float(Float16($0)) })
        XCTAssertEqual(file.dataOffset % 32, 0)
    }

    func testQ8_0QuantizationMatchesGGML() {
        // Expected bytes from gguf-py 0.19's quants.quantize (ggml's quantize_row_q8_0_ref):
        // block 0 has max 1.27 (d = 0.01); block 1 ties 1.5 and -1.5, rounded away from zero.
        var x: [Float] = [0.00036904599983245134, 0.08962365984916687, -0.08224135637283325, -0.267177551984787, -0.1364012360572815,
                          1.27, -1.27, 0.005, -0.147661954164505, -0.1861424744129181, 0.14695261418819427, 0.10706610232591629,
                          0.03162427619099617, -0.2791404128074646, -0.00877554714679718, 0.20859095454216003, -0.4032643735408783,
                          -0.13728472590446472, -0.5703667998313904, -0.38686132431030273, -0.5525205135345459, -0.0705273374915123,
                          -0.3802339434623718, 0.08137930929660797, 0.047025326639413834, -0.056079283356666565, -0.7550278902053833,
                          -0.16160786151885986, -0.014550283551216125, 0.033992696553468704, -0.45904073119163513, -0.14332598447799683]
        x += [Float](repeating: 0, count: 32)
        x[40] = -2.54; x[41] = 0.03; x[42] = -0.03
        let expected: [UInt8] = [31, 33, 0, 9, 248, 229, 242, 127, 129, 1, 241, 237, 15, 11, 3, 228, 255, 21, 216, 242, 199, 217, 201, 249,
                                 218, 8, 5, 250, 180, 240, 255, 3, 210, 242, 31, 37, 0, 0, 0, 0, 0, 0, 0, 0, 129, 2, 254,
                                 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        var bytes = [UInt8](repeating: 0, count: 68)
        x.withUnsafeBufferPointer { src in bytes.withUnsafeMutableBytes { quantizeRowQ8_0(src.baseAddress!, $0.baseAddress!, count: 64) } }
        XCTAssertEqual(bytes, expected)
        // Dequantized, every value is within about half a step (d rounded to f16) of the input.
        var back = [Float](repeating: 0, count: 64)
        bytes.withUnsafeBytes { dequantizeRow(.q8_0, $0.baseAddress!, &back, count: 64) }
        for i in 0..<64 { XCTAssertEqual(back[i], x[i], accuracy: (i < 32 ? 0.01 : 0.02) * 0.6, "\(i)") }
    }

    func testHFExportShardsPastTheLimitWithAnIndex() throws {
        let name = "llama_tied", folder = out("sharded")
        try Exporter.export(ExportOptions(model: parity(name), format: .hf, dtype: .f32, output: folder, maxShardBytes: 60_000))
        let files = try FileManager.default.contentsOfDirectory(atPath: folder)
        let shards = files.filter { $0.hasPrefix("model-") && $0.hasSuffix(".safetensors") }.sorted()
        XCTAssertGreaterThan(shards.count, 2)
        XCTAssertEqual(shards.first, String(format: "model-00001-of-%05d.safetensors", shards.count))
        XCTAssertTrue(files.contains("model.safetensors.index.json"))
        XCTAssertFalse(files.contains("model.safetensors"))
        for shard in shards {
            let size = try FileManager.default.attributesOfItem(atPath: folder + "/" + shard)[.size] as! Int
            XCTAssertLessThan(size, 60_000 + 4096, shard)   // the limit, plus the header
        }
        XCTAssertEqual(S.maxRelativeError(try logits(folder, fixture: name), try logits(parity(name), fixture: name)), 0)
    }

    // MARK: - Refusals

    func testAdapterForAnotherModelIsRefusedNamingTheTensorAndShapes() throws {
        let options = ExportOptions(model: parity("llama_tied"), adapter: parity("llama_scaled") + "/adapter", format: .hf, output: out("x"))
        XCTAssertThrowsError(try Exporter.export(options)) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("lora_"), text)
            XCTAssertTrue(text.contains("another model"), text)
            XCTAssertTrue(text.contains("has shape [") && text.contains("needs ["), text)
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: temporary.path), [], "nothing left behind")
    }

    func testRefusalsThroughTheCLI() throws {
        let model = parity("llama_tied")
        let unknown = try FinchProcess.run(["export", "--model", model, "--format", "hf", "--dtype", "f8", "--output", out("a")])
        XCTAssertEqual(unknown.status, 1)
        XCTAssertTrue(unknown.err.contains("unknown dtype 'f8'") && unknown.err.contains("f32, f16, bf16, q8_0"), unknown.err)

        let q8hf = try FinchProcess.run(["export", "--model", model, "--format", "hf", "--dtype", "q8_0", "--output", out("a")])
        XCTAssertEqual(q8hf.status, 1)
        XCTAssertTrue(q8hf.err.contains("q8_0 cannot be written as hf"), q8hf.err)

        let missing = out("no-such-folder/model.gguf")
        let unwritable = try FinchProcess.run(["export", "--model", model, "--format", "gguf", "--output", missing])
        XCTAssertEqual(unwritable.status, 1)
        XCTAssertTrue(unwritable.err.contains(missing) && unwritable.err.contains("does not exist"), unwritable.err)

        let mismatch = try FinchProcess.run(["export", "--model", model, "--adapter", parity("llama_scaled") + "/adapter",
                                             "--format", "gguf", "--output", out("b.gguf")])
        XCTAssertEqual(mismatch.status, 1)
        XCTAssertTrue(mismatch.err.contains("another model") && mismatch.err.contains("down_proj.lora_A.weight' has shape [4, 128] but this model needs [4, 96]"), mismatch.err)

        let ok = try FinchProcess.run(["export", "--model", model, "--adapter", parity("llama_tied") + "/adapter",
                                       "--format", "gguf", "--dtype", "q8_0", "--output", out("c.gguf")])
        XCTAssertEqual(ok.status, 0, ok.err)
        XCTAssertTrue(ok.out.contains("14 LoRA modules merged"), ok.out)
        let again = try FinchProcess.run(["export", "--model", model, "--format", "gguf", "--output", out("c.gguf")])
        XCTAssertEqual(again.status, 1)
        XCTAssertTrue(again.err.contains("already exists") && again.err.contains("--overwrite"), again.err)
        let replaced = try FinchProcess.run(["export", "--model", model, "--format", "gguf", "--output", out("c.gguf"), "--overwrite"])
        XCTAssertEqual(replaced.status, 0, replaced.err)
        XCTAssertEqual(try GGUFFile(path: out("c.gguf")).metadata["general.file_type"]?.int, 0)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: temporary.path).sorted(), ["c.gguf"], "no temporary files left")
    }

    func testOverwritingAnHFFolderReplacesItWhole() throws {
        let folder = out("hf")
        try Exporter.export(ExportOptions(model: parity("llama_tied"), format: .hf, output: folder, maxShardBytes: 60_000))
        XCTAssertThrowsError(try Exporter.export(ExportOptions(model: parity("llama_tied"), format: .hf, output: folder)))
        try Exporter.export(ExportOptions(model: parity("llama_tied"), format: .hf, dtype: .bf16, output: folder, overwrite: true))
        let files = try FileManager.default.contentsOfDirectory(atPath: folder)
        XCTAssertTrue(files.contains("model.safetensors"))
        XCTAssertFalse(files.contains { $0.hasPrefix("model-") }, "old shards are gone: \(files)")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: temporary.path), ["hf"])
    }

    // MARK: - Tokenizers

    /// llama.cpp's vocabularies (tests/test-tokenizer-0 strings and ids) through GGUF -> tokenizer.json
    /// and back -> GGUF metadata: both give llama.cpp's ids. Vocabularies not on disk are skipped
    /// (llama-spm is committed; scripts/fetch_tokenizer_vocabs.sh fetches the rest).
    func testTokenizerConversionKeepsLlamaCppIDs() throws {
        let names = ["llama-spm", "gpt-2", "llama-bpe", "qwen2", "qwen35", "phi-3", "deepseek-coder", "deepseek-llm", "falcon", "mpt",
                     "starcoder", "refact", "command-r"]
        var checked = 0
        for name in names {
            guard let url = TokenizerFixtures.llamaCppVocab(name) else { continue }
            let dir = TokenizerFixtures.root.appendingPathComponent("llama.cpp")
            let raw = try String(contentsOf: dir.appendingPathComponent("ggml-vocab-\(name).gguf.inp"), encoding: .utf8)
            let texts = raw.components(separatedBy: "\n__ggml_vocab_test__\n")
            let expectedLines = try String(contentsOf: dir.appendingPathComponent("ggml-vocab-\(name).gguf.out"), encoding: .utf8)
                .split(separator: "\n", omittingEmptySubsequences: false)

            let gguf = try GGUFFile(path: url.path)
            // FINCH_EXPORT_TOKENIZERS=DIR keeps the folders for reference/check_export_tokenizers.py (HF tokenizers).
            let keep = ProcessInfo.processInfo.environment["FINCH_EXPORT_TOKENIZERS"]
            let folder = keep.map { "\($0)/\(name)" } ?? out("tok-\(name)")
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            let (json, config) = try TokenizerConversion.huggingFaceFiles(from: gguf, modelMaxLength: 4096)
            try Data(json.utf8).write(to: URL(fileURLWithPath: folder + "/tokenizer.json"))
            try Exporter.jsonText(config).write(to: URL(fileURLWithPath: folder + "/tokenizer_config.json"))
            let hf = try Tokenizer.load(from: folder)

            let modelConfig = ModelConfig(modelType: "llama", hiddenSize: 8, intermediateSize: 8, layerCount: 1, headCount: 1,
                                          kvHeadCount: 1, vocabSize: gguf.metadata["tokenizer.ggml.tokens"]!.array!.count)
            let metadata = [(key: "general.architecture", value: GGUFValue.string("llama"))]
                + (try TokenizerConversion.ggufMetadata(folder: folder, config: modelConfig))
            let back = out("tok-\(name).gguf")
            try GGUFWriter.write(path: back, metadata: metadata, tensors: []) { _, _ in }
            let again = try Tokenizer.load(from: back)

            var hfPassed = 0, backPassed = 0
            for (index, text) in texts.enumerated() {
                let expected = expectedLines[index].split(separator: " ").map { Int($0)! }
                if try hf.encode(text, addSpecialTokens: false) == expected { hfPassed += 1 }
                if try again.encode(text, addSpecialTokens: false) == expected { backPassed += 1 }
            }
            XCTAssertEqual(hfPassed, texts.count, "\(name): tokenizer.json")
            XCTAssertEqual(backPassed, texts.count, "\(name): tokenizer.json -> GGUF")
            XCTAssertEqual(try hf.encode("Hello world", addSpecialTokens: true), try Tokenizer.load(from: url.path).encode("Hello world", addSpecialTokens: true), name)
            print("export tokenizer ggml-vocab-\(name): tokenizer.json \(hfPassed)/\(texts.count), back to GGUF \(backPassed)/\(texts.count)")
            checked += 1
        }
        if checked == 0 { throw XCTSkip("no llama.cpp vocabulary found") }
    }

    // MARK: - The real model (skipped without FINCH_SMOLLM2_GGUF)

    func testSmolLM2TokenizerSurvivesExport() throws {
        guard let gguf = ProcessInfo.processInfo.environment["FINCH_SMOLLM2_GGUF"], FileManager.default.fileExists(atPath: gguf) else {
            throw XCTSkip("FINCH_SMOLLM2_GGUF is not set")
        }
        let folder = out("smollm2"), back = out("smollm2.gguf")
        try Exporter.export(ExportOptions(model: gguf, format: .hf, dtype: .bf16, output: folder))
        try Exporter.export(ExportOptions(model: folder, format: .gguf, dtype: .bf16, output: back))
        let original = try Tokenizer.load(from: gguf), hf = try Tokenizer.load(from: folder), again = try Tokenizer.load(from: back)
        let texts = ["Hello, world!", "  leading spaces and 12345 digits", "<|im_start|>user\nWhat is 2+2?<|im_end|>\n",
                     "naïve café — ünïcödé 東京 🙂", "tabs\tand\nnewlines\r\n", "don't won't it's", String(repeating: "abc ", count: 50)]
        for text in texts {
            XCTAssertEqual(try hf.encode(text), try original.encode(text), text)
            XCTAssertEqual(try again.encode(text), try original.encode(text), text)
        }
        XCTAssertEqual(hf.chatTemplate, original.chatTemplate)
        XCTAssertEqual(hf.eosTokenId, original.eosTokenId)
        XCTAssertEqual(again.bosTokenId, original.bosTokenId)
        let a = try GGUFFile(path: gguf), b = try GGUFFile(path: back)
        for key in ["tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.chat_template"] {
            XCTAssertEqual(a.metadata[key], b.metadata[key], key)
        }
    }

    /// SIGKILL in the middle of writing leaves nothing under the final name (only a hidden
    /// temporary sibling, which a later export does not mind).
    func testKilledExportLeavesNoHalfWrittenOutput() throws {
        guard let gguf = ProcessInfo.processInfo.environment["FINCH_SMOLLM2_GGUF"], FileManager.default.fileExists(atPath: gguf) else {
            throw XCTSkip("FINCH_SMOLLM2_GGUF is not set")
        }
        let binary = try FinchProcess.binary()
        for (format, name) in [("gguf", "killed.gguf"), ("hf", "killed-hf")] {
            let process = Process()
            process.executableURL = binary
            process.arguments = ["export", "--model", gguf, "--format", format, "--output", out(name)]
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            // Wait until the temporary sibling holds some bytes, then kill.
            let deadline = Date().addingTimeInterval(60)
            var started = false
            while Date() < deadline && process.isRunning && !started {
                let entries = (try? FileManager.default.contentsOfDirectory(atPath: temporary.path)) ?? []
                if let tmp = entries.first(where: { $0.hasPrefix(".\(name).tmp-") }) {
                    let path = out(tmp)
                    let size = format == "gguf" ? (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
                        : ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).isEmpty ? 0 : 1
                    started = size > 0
                }
                usleep(2_000)
            }
            XCTAssertTrue(started && process.isRunning, "\(format): the export finished before it could be interrupted")
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            XCTAssertFalse(FileManager.default.fileExists(atPath: out(name)), "\(format): a half-written \(name) is visible")
            // The next export succeeds despite the leftover.
            try Exporter.export(ExportOptions(model: parity("llama_tied"), format: format == "gguf" ? .gguf : .hf, output: out(name)))
            XCTAssertNoThrow(try ModelFiles.open(out(name)))
        }
    }
}
