import Foundation
import XCTest
import FinchTestSupport
@testable import FinchKernels
@testable import FinchIO
@testable import FinchModels

final class GGUFTests: XCTestCase {
    var folder = ""

    override func setUp() { folder = IOTestSupport.temporaryFolder() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: folder) }

    private func path(_ name: String) -> String { (folder as NSString).appendingPathComponent(name) }

    private func write(_ builder: GGUFBuilder, _ name: String = "test.gguf") -> String {
        let file = path(name)
        IOTestSupport.writeBytes(builder.build(), to: file)
        return file
    }

    // MARK: - Fixtures written by gguf-py

    func testTinyLlamaFixture() throws {
        let gguf = try GGUFFile(path: IOTestSupport.fixture("gguf/tiny_llama.gguf"))
        XCTAssertEqual(gguf.version, 3)
        XCTAssertEqual(gguf.architecture, "llama")
        XCTAssertEqual(gguf.metadata["general.name"]?.string, "finch tiny llama")
        XCTAssertEqual(gguf.metadata["llama.block_count"]?.int, 2)
        XCTAssertEqual(gguf.tensors.count, 20)
        XCTAssertEqual(gguf.tensors["blk.0.ffn_down.weight"]?.shape, [64, 96])
        XCTAssertEqual(gguf.tensors["blk.0.ffn_down.weight"]?.dtype, .f16)
        XCTAssertEqual(gguf.tensors["blk.1.attn_k.weight"]?.shape, [32, 64])
        XCTAssertEqual(gguf.tensors["blk.1.attn_k.weight"]?.dtype, .q8_0)
        XCTAssertEqual(gguf.tensors["blk.1.attn_k.weight"]?.byteCount, 32 * 2 * 34)

        let config = try gguf.modelConfig()
        XCTAssertEqual(config, ModelConfig(modelType: "llama", hiddenSize: 64, intermediateSize: 96, layerCount: 2,
                                           headCount: 4, kvHeadCount: 2, headDim: 16, vocabSize: 128,
                                           rmsNormEps: Float(9.999999747378752e-06), ropeTheta: 10000,
                                           tieWordEmbeddings: true, maxPositionEmbeddings: 512))
        try assertMatchesExpected(gguf.hfTensors(), prefix: "tiny_llama.")
    }

    func testTinyQwen2Fixture() throws {
        let gguf = try GGUFFile(path: IOTestSupport.fixture("gguf/tiny_qwen2.gguf"))
        let config = try gguf.modelConfig()
        XCTAssertEqual(config, ModelConfig(modelType: "qwen2", hiddenSize: 64, intermediateSize: 96, layerCount: 2,
                                           headCount: 8, kvHeadCount: 2, headDim: 8, vocabSize: 128,
                                           rmsNormEps: Float(9.999999974752427e-07), ropeTheta: 1_000_000,
                                           tieWordEmbeddings: false, maxPositionEmbeddings: 512, attentionBias: true))
        try assertMatchesExpected(gguf.hfTensors(), prefix: "tiny_qwen2.")
    }

    /// The HF-named, dequantized, unpermuted weights must come out exactly (F16 and Q8_0
    /// dequantize exactly; the permutation only moves rows).
    private func assertMatchesExpected(_ tensors: [String: TensorData], prefix: String, line: UInt = #line) throws {
        let expected = try SafeTensors.read(path: IOTestSupport.fixture("gguf/expected_tiny.safetensors"))
            .filter { $0.key.hasPrefix(prefix) }
        XCTAssertEqual(Set(tensors.keys), Set(expected.keys.map { String($0.dropFirst(prefix.count)) }), line: line)
        for (name, reference) in expected {
            let hfName = String(name.dropFirst(prefix.count))
            let tensor = try XCTUnwrap(tensors[hfName], hfName, line: line)
            XCTAssertEqual(tensor.name, hfName, line: line)
            XCTAssertEqual(tensor.shape, reference.shape, hfName, line: line)
            let got = dequantize(tensor), want = dequantize(reference)
            if got != want {
                let worst = zip(got, want).map { abs($0 - $1) }.max() ?? 0
                XCTFail("\(hfName) (\(tensor.dtype.rawValue)) differs from expected_tiny: max |diff| \(worst)", line: line)
            }
        }
    }

    func testUnknownTensorTypeFixture() {
        let file = IOTestSupport.fixture("gguf/bad_tensor_type.gguf")
        IOTestSupport.assertLoadError(try GGUFFile(path: file), mentions: [file, "'bad.weight'", "99", "F32 (0)", "Q8_0 (8)", "Q6_K (14)"])
    }

    // MARK: - Structure and validation

    func testMetadataValuesOfEveryType() throws {
        var b = GGUFBuilder()
        b.add("u8", .u8(200)); b.add("i8", .i8(-5)); b.add("u16", .u16(60000)); b.add("i16", .i16(-300))
        b.add("u32", .u32(4_000_000_000)); b.add("i32", .i32(-7)); b.add("f32", .f32(0.5)); b.add("yes", .bool(true))
        b.add("s", .string("héllo")); b.add("u64", .u64(1 << 40)); b.add("i64", .i64(-(1 << 40))); b.add("f64", .f64(0.25))
        b.add("tokens", .array(8, [.string("a"), .string(""), .string("<s>")]))
        b.add("scores", .array(6, [.f32(1), .f32(-2)]))
        b.add("nested", .array(9, [.array(5, [.i32(1), .i32(2)]), .array(5, [])]))
        let gguf = try GGUFFile(path: write(b))
        let m = gguf.metadata
        XCTAssertEqual(m["u8"], .uint8(200)); XCTAssertEqual(m["i8"]?.int, -5); XCTAssertEqual(m["u16"]?.int, 60000)
        XCTAssertEqual(m["i16"]?.int, -300); XCTAssertEqual(m["u32"]?.int, 4_000_000_000); XCTAssertEqual(m["i32"]?.int, -7)
        XCTAssertEqual(m["f32"]?.float, 0.5); XCTAssertEqual(m["yes"]?.bool, true); XCTAssertEqual(m["s"]?.string, "héllo")
        XCTAssertEqual(m["u64"]?.int, 1 << 40); XCTAssertEqual(m["i64"]?.int, -(1 << 40)); XCTAssertEqual(m["f64"]?.double, 0.25)
        XCTAssertEqual(m["tokens"]?.strings, ["a", "", "<s>"])
        XCTAssertEqual(m["scores"]?.floats, [1, -2])
        XCTAssertEqual(m["nested"]?.array?.first?.ints, [1, 2])
        XCTAssertNil(m["s"]?.int)
        XCTAssertTrue(gguf.tensors.isEmpty)
    }

    func testVersion2AndCustomAlignment() throws {
        var b = GGUFBuilder()
        b.version = 2
        b.alignment = 64
        b.add("general.alignment", .u32(64))
        b.addTensor("a", dims: [3], type: 0, data: floats([1, 2, 3]))
        b.addTensor("b", dims: [2, 2], type: 0, data: floats([4, 5, 6, 7]))
        let gguf = try GGUFFile(path: write(b))
        XCTAssertEqual(gguf.version, 2)
        XCTAssertEqual(gguf.alignment, 64)
        XCTAssertEqual(gguf.dataOffset % 64, 0)
        XCTAssertEqual(gguf.tensorNames, ["a", "b"])
        XCTAssertEqual(dequantize(try XCTUnwrap(gguf.tensors["b"])), [4, 5, 6, 7])
        XCTAssertEqual(dequantize(try XCTUnwrap(gguf.tensors["a"])), [1, 2, 3])
    }

    func testBadMagicAndVersion() {
        var b = GGUFBuilder()
        b.magic = Array("GGML".utf8)
        var file = write(b)
        IOTestSupport.assertLoadError(try GGUFFile(path: file), mentions: [file, "magic", "47 47 4d 4c", "GGUF"])
        b = GGUFBuilder()
        b.version = 1
        file = write(b)
        IOTestSupport.assertLoadError(try GGUFFile(path: file), mentions: [file, "GGUF version", "'1'", "2, 3"])
        b.version = UInt32(3).byteSwapped
        file = write(b)
        IOTestSupport.assertLoadError(try GGUFFile(path: file), mentions: [file, "GGUF version", "big-endian"])
        file = path("empty.gguf")
        IOTestSupport.writeBytes([], to: file)
        IOTestSupport.assertLoadError(try GGUFFile(path: file), mentions: [file, "magic", "truncated"])
        IOTestSupport.assertLoadError(try GGUFFile(path: path("absent.gguf")), mentions: [path("absent.gguf"), "no such file"])
    }

    func testCountsThatOverrunTheFile() {
        var b = GGUFBuilder()
        b.tensorCountOverride = 1 << 40
        var file = write(b)
        IOTestSupport.assertLoadError(try GGUFFile(path: file), mentions: [file, "tensor count", "\(1 << 40)"])
        b = GGUFBuilder()
        b.metadataCountOverride = UInt64.max
        file = write(b)
        IOTestSupport.assertLoadError(try GGUFFile(path: file), mentions: [file, "metadata count", "\(UInt64.max)"])
        b = GGUFBuilder()
        b.add("general.architecture", .string("llama"))
        b.metadataCountOverride = 1000
        file = write(b)
        IOTestSupport.assertLoadError(try GGUFFile(path: file), mentions: [file, "metadata count", "1000"])
        b = GGUFBuilder()
        b.add("tokens", .rawArray(elementType: 8, count: 1 << 50))
        file = write(b)
        IOTestSupport.assertLoadError(try GGUFFile(path: file), mentions: [file, "element count of metadata 'tokens'", "\(1 << 50)"])
        b = GGUFBuilder()
        b.add("name", .rawString(length: UInt64.max - 3))
        file = write(b)
        IOTestSupport.assertLoadError(try GGUFFile(path: file), mentions: [file, "metadata 'name'"])
    }

    func testUnknownMetadataValueType() {
        var b = GGUFBuilder()
        b.add("general.architecture", .string("llama"))
        b.add("strange", .raw(type: 13, payload: [0, 0, 0, 0]))
        var file = write(b)
        IOTestSupport.assertLoadError(try GGUFFile(path: file), mentions: [file, "'strange'", "type id 13", "float64 (12)"])
        b = GGUFBuilder()
        b.add("strange", .rawArray(elementType: 77, count: 1))
        file = write(b)
        IOTestSupport.assertLoadError(try GGUFFile(path: file), mentions: [file, "'strange'", "type id 77"])
    }

    func testTruncatedHeaderAndData() throws {
        let original = try XCTUnwrap(FileManager.default.contents(atPath: IOTestSupport.fixture("gguf/tiny_llama.gguf")))
        let file = path("cut.gguf")
        try original.prefix(900).write(to: URL(fileURLWithPath: file))
        IOTestSupport.assertLoadError(try GGUFFile(path: file), mentions: [file, "truncated"])
        try original.dropLast(10).write(to: URL(fileURLWithPath: file))
        IOTestSupport.assertLoadError(try GGUFFile(path: file), mentions: [file, "'output_norm.weight'", "truncated", "\(original.count - 10)-byte"])
    }

    func testTensorValidation() throws {
        var b = GGUFBuilder()
        b.addTensor("w", dims: [33, 2], type: 8, data: [UInt8](repeating: 0, count: 136))
        var file = write(b)
        IOTestSupport.assertLoadError(try GGUFFile(path: file), mentions: [file, "'w'", "33", "multiple of the Q8_0 block size 32"])

        b = GGUFBuilder()
        b.addTensor("w", dims: [2, 2, 2, 2, 2], type: 0, data: floats(Array(repeating: 0, count: 32)))
        file = write(b)
        IOTestSupport.assertLoadError(try GGUFFile(path: file), mentions: [file, "dimension count of tensor 'w'", "5", "1 to 4"])

        b = GGUFBuilder()
        b.addTensor("w", dims: [1 << 62, 1 << 62], type: 0, data: [])
        file = write(b)
        IOTestSupport.assertLoadError(try GGUFFile(path: file), mentions: [file, "'w'"])

        b = GGUFBuilder()
        b.addTensor("w", dims: [4], type: 0, data: floats([1, 2, 3, 4]))
        b.tensorOffsetOverride = 4
        file = write(b)
        IOTestSupport.assertLoadError(try GGUFFile(path: file), mentions: [file, "data offset of tensor 'w'", "multiple of the alignment 32"])

        b = GGUFBuilder()
        b.addTensor("w", dims: [4], type: 0, data: floats([1, 2, 3, 4]))
        b.tensorOffsetOverride = 1 << 20
        file = write(b)
        IOTestSupport.assertLoadError(try GGUFFile(path: file), mentions: [file, "data offset of tensor 'w'", "1048576", "expected 0"])

        // Overlapping tensors: the second claims the first one's bytes (offset 0, not 32).
        b = GGUFBuilder()
        b.addTensor("a", dims: [4], type: 0, data: floats([1, 2, 3, 4]))
        b.addTensor("b", dims: [4], type: 0, data: floats([5, 6, 7, 8]))
        b.tensorOffsetOverride = 0
        file = write(b)
        IOTestSupport.assertLoadError(try GGUFFile(path: file), mentions: [file, "data offset of tensor 'b'", "found 0", "expected 32"])

        // A truncated file: the last tensor's data runs past the end.
        b = GGUFBuilder()
        b.addTensor("w", dims: [8], type: 0, data: floats(Array(repeating: 1, count: 8)))
        file = write(b)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: file))
        try bytes.prefix(bytes.count - 20).write(to: URL(fileURLWithPath: file))
        IOTestSupport.assertLoadError(try GGUFFile(path: file), mentions: [file, "data of tensor 'w'", "32 bytes", "truncated"])

        b = GGUFBuilder()
        b.addTensor("w", dims: [4], type: 0, data: floats([1, 2, 3, 4]))
        b.addTensor("w", dims: [4], type: 0, data: floats([1, 2, 3, 4]))
        file = write(b)
        IOTestSupport.assertLoadError(try GGUFFile(path: file), mentions: [file, "'w'", "second"])

        b = GGUFBuilder()
        b.add("general.alignment", .u32(48))
        file = write(b)
        IOTestSupport.assertLoadError(try GGUFFile(path: file), mentions: [file, "general.alignment", "power of two"])
    }

    /// Every truncation and every single-byte corruption of a small file must give an error or a
    /// file, never a trap.
    func testCorruptionNeverTraps() throws {
        var b = llamaBuilder(qType: 8)
        b.add("tokenizer.ggml.tokens", .array(8, (0..<4).map { .string("t\($0)") }))
        let bytes = b.build()
        var outcomes = (ok: 0, failed: 0)
        func attempt(_ data: [UInt8]) {
            do {
                let gguf = try GGUFFile(file: MappedFile(copying: data, path: "fuzz.gguf"))
                _ = try? gguf.hfTensors()
                outcomes.ok += 1
            } catch is LoadError {
                outcomes.failed += 1
            } catch {
                XCTFail("unexpected error type: \(error)")
            }
        }
        let headerEnd = try GGUFFile(file: MappedFile(copying: bytes, path: "fuzz.gguf")).dataOffset
        for length in stride(from: 0, to: bytes.count, by: 7) { attempt(Array(bytes.prefix(length))) }
        for index in 0..<headerEnd {
            for value: UInt8 in [0x00, 0xFF, 0x7F, bytes[index] ^ 0x01] where value != bytes[index] {
                var data = bytes
                data[index] = value
                attempt(data)
            }
        }
        XCTAssertGreaterThan(outcomes.failed, 100)
        XCTAssertGreaterThan(outcomes.ok, 10)
    }

    // MARK: - Model configuration

    func testModelConfigErrors() throws {
        var b = llamaBuilder(qType: 0)
        b.metadata.removeAll { $0.key == "llama.embedding_length" }
        var file = write(b)
        IOTestSupport.assertLoadError(try GGUFFile(path: file).modelConfig(), mentions: [file, "llama.embedding_length", "nothing", "integer"])

        b = llamaBuilder(qType: 0)
        b.metadata.removeAll { $0.key == "general.architecture" }
        b.add("general.architecture", .string("gpt2"))
        file = write(b)
        IOTestSupport.assertLoadError(try GGUFFile(path: file).modelConfig(), mentions: [file, "architecture", "gpt2", "llama, qwen2"])

        b = llamaBuilder(qType: 0)
        b.addTensor("rope_freqs.weight", dims: [4], type: 0, data: floats([1, 1, 1, 1]))
        file = write(b)
        IOTestSupport.assertLoadError(try GGUFFile(path: file).modelConfig(), mentions: [file, "rope_freqs.weight"])

        b = llamaBuilder(qType: 0)
        b.add("llama.rope.scaling.type", .string("yarn"))
        file = write(b)
        IOTestSupport.assertLoadError(try GGUFFile(path: file).modelConfig(), mentions: [file, "llama.rope.scaling.type", "yarn", "linear"])

        b = llamaBuilder(qType: 0)
        b.add("llama.rope.dimension_count", .u32(4))
        file = write(b)
        // More rotated dimensions than a head has (partial rotary, fewer, is Phi's and reads).
        IOTestSupport.assertLoadError(try GGUFFile(path: file).modelConfig(), mentions: [file, "llama.rope.dimension_count", "4 rotated dimensions"])
    }

    func testModelConfigOptionalFields() throws {
        var b = llamaBuilder(qType: 0)
        b.add("llama.rope.scaling.type", .string("linear"))
        b.add("llama.rope.scaling.factor", .f32(4))
        b.add("tokenizer.ggml.bos_token_id", .u32(1))
        b.add("tokenizer.ggml.eos_token_id", .u32(2))
        b.add("tokenizer.ggml.tokens", .array(8, (0..<100).map { .string("t\($0)") }))
        b.metadata.removeAll { $0.key == "llama.vocab_size" }
        b.addTensor("output.weight", dims: [8, 32], type: 0, data: floats(Array(repeating: 0, count: 256)))
        let config = try GGUFFile(path: write(b)).modelConfig()
        XCTAssertEqual(config.ropeScaling, .linear(factor: 4))
        XCTAssertEqual(config.bosTokenId, 1)
        XCTAssertEqual(config.eosTokenIds, [2])
        XCTAssertEqual(config.vocabSize, 100, "from the tokenizer's token list")
        XCTAssertFalse(config.tieWordEmbeddings)
        XCTAssertEqual(config.headDim, 2)

        var c = llamaBuilder(qType: 0)
        c.add("llama.attention.key_length", .u32(4))
        c.add("llama.rope.scaling.type", .string("llama3"))
        c.add("llama.rope.scaling.factor", .f32(8))
        c.add("llama.rope.scaling.low_freq_factor", .f32(1))
        c.add("llama.rope.scaling.high_freq_factor", .f32(4))
        c.add("llama.rope.scaling.original_context_length", .u32(8192))
        c.metadata.removeAll { $0.key == "llama.vocab_size" }
        let config2 = try GGUFFile(path: write(c)).modelConfig()
        XCTAssertEqual(config2.headDim, 4)
        XCTAssertEqual(config2.ropeScaling, .llama3(factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192))
        XCTAssertEqual(config2.vocabSize, 32, "from token_embd rows")
    }

    // MARK: - HF view

    /// convert_hf_to_gguf permuted HF rows with reshape(n_head, 2, hd/2, cols).swapaxes(1, 2);
    /// hfTensors must undo it on the quantized bytes.
    func testUnpermutesLlamaQueryAndKeyRows() throws {
        for qType: UInt32 in [0, 1, 8] {
            let gguf = try GGUFFile(path: write(llamaBuilder(qType: qType), "perm\(qType).gguf"))
            let hf = try gguf.hfTensors()
            let config = try gguf.modelConfig()
            for (ggufName, hfName, heads) in [("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", config.headCount),
                                              ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", config.kvHeadCount),
                                              ("blk.0.attn_q.bias", "model.layers.0.self_attn.q_proj.bias", config.headCount)] {
                let stored = dequantize(try XCTUnwrap(gguf.tensors[ggufName]))
                let tensor = try XCTUnwrap(hf[hfName])
                let restored = dequantize(tensor)
                let rows = tensor.rows, cols = tensor.columns
                XCTAssertEqual(restored.count, stored.count)
                // Apply the forward permutation (as convert does) to the restored rows: it must give the stored ones.
                let hd = rows / heads
                for h in 0..<heads {
                    for i in 0..<2 {
                        for j in 0..<(hd / 2) {
                            let hfRow = h * hd + i * (hd / 2) + j
                            let ggufRow = h * hd + j * 2 + i
                            XCTAssertEqual(Array(restored[(hfRow * cols)..<((hfRow + 1) * cols)]),
                                           Array(stored[(ggufRow * cols)..<((ggufRow + 1) * cols)]), "\(hfName) type \(qType) row \(hfRow)")
                        }
                    }
                }
                XCTAssertFalse(tensor.owner === gguf.file, "permuted tensors own their bytes")
            }
            let v = try XCTUnwrap(hf["model.layers.0.self_attn.v_proj.weight"])
            XCTAssertTrue(v.owner === gguf.file, "other tensors stay in the mapping")
            XCTAssertEqual(dequantize(v), dequantize(try XCTUnwrap(gguf.tensors["blk.0.attn_v.weight"])))
        }
    }

    func testHFNames() {
        let cases = [
            "token_embd.weight": "model.embed_tokens.weight",
            "output_norm.weight": "model.norm.weight",
            "output.weight": "lm_head.weight",
            "blk.12.attn_norm.weight": "model.layers.12.input_layernorm.weight",
            "blk.0.attn_q.bias": "model.layers.0.self_attn.q_proj.bias",
            "blk.0.attn_k.weight": "model.layers.0.self_attn.k_proj.weight",
            "blk.0.attn_v.weight": "model.layers.0.self_attn.v_proj.weight",
            "blk.0.attn_output.weight": "model.layers.0.self_attn.o_proj.weight",
            "blk.3.attn_q_norm.weight": "model.layers.3.self_attn.q_norm.weight",
            "blk.3.attn_k_norm.weight": "model.layers.3.self_attn.k_norm.weight",
            "blk.1.ffn_norm.weight": "model.layers.1.post_attention_layernorm.weight",
            "blk.1.ffn_gate.weight": "model.layers.1.mlp.gate_proj.weight",
            "blk.1.ffn_up.weight": "model.layers.1.mlp.up_proj.weight",
            "blk.1.ffn_down.weight": "model.layers.1.mlp.down_proj.weight",
        ]
        for (gguf, hf) in cases { XCTAssertEqual(GGUFFile.hfName(gguf), hf, gguf) }
        XCTAssertNil(GGUFFile.hfName("rope_freqs.weight"))
        XCTAssertNil(GGUFFile.hfName("blk.x.attn_q.weight"))
        XCTAssertNil(GGUFFile.hfName("blk.0.attn_q.scale"))
    }

    // MARK: - ModelFiles

    func testModelFilesOpensGGUFAndFolders() throws {
        let gguf = try ModelFiles.open(IOTestSupport.fixture("gguf/tiny_llama.gguf"))
        XCTAssertEqual(gguf.config.modelType, "llama")
        XCTAssertNotNil(gguf.tensors["model.layers.1.self_attn.q_proj.weight"])
        XCTAssertNotNil(gguf.gguf)

        let folderPath = IOTestSupport.fixture("parity/llama_tied")
        let hf = try ModelFiles.open(folderPath)
        XCTAssertEqual(hf.source, folderPath)
        XCTAssertEqual(hf.tensors["model.embed_tokens.weight"]?.shape, [hf.config.vocabSize, hf.config.hiddenSize])
        XCTAssertNil(hf.gguf)

        let text = path("weights.bin")
        IOTestSupport.writeBytes([1, 2, 3], to: text)
        IOTestSupport.assertLoadError(try ModelFiles.open(text), mentions: [text, ".bin", ".gguf"])
        IOTestSupport.assertLoadError(try ModelFiles.open(path("missing")), mentions: [path("missing"), "no such file"])
        IOTestSupport.assertLoadError(try ModelFiles.open(folder), mentions: ["config.json", "no such file"])

        // A folder whose weights lack the embedding.
        try FileManager.default.copyItem(atPath: (folderPath as NSString).appendingPathComponent("config.json"), toPath: path("config.json"))
        try SafeTensors.write(path: path("model.safetensors"), tensors: [("model.norm.weight", [2], [1, 1])])
        IOTestSupport.assertLoadError(try ModelFiles.open(folder), mentions: [folder, "model.embed_tokens.weight", "missing"])
    }

    // MARK: - Helpers

    private func floats(_ values: [Float]) -> [UInt8] {
        var bytes: [UInt8] = []
        for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes += $0 } }
        return bytes
    }

    /// A one-layer llama (hidden 8, 4 heads of 2, 2 KV heads, vocab 32) with 32-column q/k/v in `qType`.
    /// Linear weights are [rows, 32] so that Q8_0 and Q4 blocks fit; values are distinct per row.
    private func llamaBuilder(qType: UInt32) -> GGUFBuilder {
        var b = GGUFBuilder()
        b.add("general.architecture", .string("llama"))
        b.add("llama.embedding_length", .u32(8))
        b.add("llama.feed_forward_length", .u32(16))
        b.add("llama.block_count", .u32(1))
        b.add("llama.attention.head_count", .u32(4))
        b.add("llama.attention.head_count_kv", .u32(2))
        b.add("llama.attention.layer_norm_rms_epsilon", .f32(1e-5))
        b.add("llama.context_length", .u32(64))
        b.add("llama.vocab_size", .u32(32))
        func matrix(rows: Int, seed: Int) -> [Float] {
            (0..<(rows * 32)).map { Float(($0 / 32) * 3 + seed) + Float($0 % 32) / 64 }
        }
        func encode(_ values: [Float], type: UInt32) -> [UInt8] {
            switch type {
            case 0: return floats(values)
            case 1: return values.flatMap { v -> [UInt8] in let h = Float16(v).bitPattern; return [UInt8(h & 0xFF), UInt8(h >> 8)] }
            default:  // Q8_0 with scale 1: the integer part only
                return stride(from: 0, to: values.count, by: 32).flatMap { start -> [UInt8] in
                    [0x00, 0x3C] + values[start..<(start + 32)].map { UInt8(bitPattern: Int8(clamping: Int($0) % 100)) }
                }
            }
        }
        b.addTensor("token_embd.weight", dims: [8, 32], type: 0, data: floats(Array(repeating: 0.5, count: 256)))
        b.addTensor("blk.0.attn_q.weight", dims: [32, 8], type: qType, data: encode(matrix(rows: 8, seed: 1), type: qType))
        b.addTensor("blk.0.attn_k.weight", dims: [32, 4], type: qType, data: encode(matrix(rows: 4, seed: 2), type: qType))
        b.addTensor("blk.0.attn_v.weight", dims: [32, 4], type: qType, data: encode(matrix(rows: 4, seed: 5), type: qType))
        b.addTensor("blk.0.attn_q.bias", dims: [8], type: 0, data: floats((0..<8).map(Float.init)))
        return b
    }
}

/// Writes GGUF files for tests, with hooks to break them.
struct GGUFBuilder {
    enum Value {
        case u8(UInt8), i8(Int8), u16(UInt16), i16(Int16), u32(UInt32), i32(Int32), f32(Float), bool(Bool)
        case string(String), u64(UInt64), i64(Int64), f64(Double)
        case array(UInt32, [Value])
        case raw(type: UInt32, payload: [UInt8])
        case rawArray(elementType: UInt32, count: UInt64)
        case rawString(length: UInt64)

        var type: UInt32 {
            switch self {
            case .u8: return 0
            case .i8: return 1
            case .u16: return 2
            case .i16: return 3
            case .u32: return 4
            case .i32: return 5
            case .f32: return 6
            case .bool: return 7
            case .string, .rawString: return 8
            case .array, .rawArray: return 9
            case .u64: return 10
            case .i64: return 11
            case .f64: return 12
            case let .raw(type, _): return type
            }
        }

        func payload(into out: inout [UInt8]) {
            func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
            switch self {
            case let .u8(v): put(v)
            case let .i8(v): put(v)
            case let .u16(v): put(v)
            case let .i16(v): put(v)
            case let .u32(v): put(v)
            case let .i32(v): put(v)
            case let .f32(v): put(v.bitPattern)
            case let .bool(v): put(UInt8(v ? 1 : 0))
            case let .string(s): put(UInt64(s.utf8.count)); out += Array(s.utf8)
            case let .u64(v): put(v)
            case let .i64(v): put(v)
            case let .f64(v): put(v.bitPattern)
            case let .array(type, items): put(type); put(UInt64(items.count)); for item in items { item.payload(into: &out) }
            case let .raw(_, payload): out += payload
            case let .rawArray(type, count): put(type); put(count)
            case let .rawString(length): put(length); out += [0x41, 0x42]
            }
        }
    }

    var magic = Array("GGUF".utf8)
    var version: UInt32 = 3
    var alignment = 32
    var metadata: [(key: String, value: Value)] = []
    var tensors: [(name: String, dims: [UInt64], type: UInt32, data: [UInt8])] = []
    var tensorCountOverride: UInt64?
    var metadataCountOverride: UInt64?
    var tensorOffsetOverride: UInt64?

    mutating func add(_ key: String, _ value: Value) { metadata.append((key, value)) }
    mutating func addTensor(_ name: String, dims: [UInt64], type: UInt32, data: [UInt8]) { tensors.append((name, dims, type, data)) }

    func build() -> [UInt8] {
        var out = magic
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func pad() { while out.count % alignment != 0 { out.append(0) } }
        put(version)
        put(tensorCountOverride ?? UInt64(tensors.count))
        put(metadataCountOverride ?? UInt64(metadata.count))
        for (key, value) in metadata {
            Value.string(key).payload(into: &out)
            put(value.type)
            value.payload(into: &out)
        }
        var offset: UInt64 = 0
        for tensor in tensors {
            Value.string(tensor.name).payload(into: &out)
            put(UInt32(tensor.dims.count))
            for d in tensor.dims { put(d) }
            put(tensor.type)
            put(tensorOffsetOverride ?? offset)
            offset += UInt64((tensor.data.count + alignment - 1) / alignment * alignment)
        }
        pad()
        for tensor in tensors {
            out += tensor.data
            pad()
        }
        return out
    }
}
