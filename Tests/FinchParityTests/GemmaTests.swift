import XCTest
import FinchTestSupport
@testable import Finch
@testable import FinchKernels
@testable import FinchIO
@testable import FinchModels
@testable import FinchGeneration
@testable import FinchTraining
@testable import FinchExport

/// Gemma 2 and Gemma 3 (text) against transformers' fixtures `gemma2_softcap` and
/// `gemma3_sliding` (reference/GEMMA_SEMANTICS.md): the configs, the kernels Gemma adds (soft-capped
/// sliding-window attention, GeGLU, zero-centred norms, capped cross-entropy) against naive
/// versions, logits / loss / gradients (also in ParityTests), greedy decoding with the KV cache,
/// GGUF export and reload, training steps, bf16.
final class GemmaTests: TemporaryDirectoryTestCase {
    typealias S = TestSupport
    typealias Fixture = ParityTests.Fixture
    static let models = ["gemma2_softcap", "gemma3_sliding"]

    func out(_ name: String) -> String { temporary.appendingPathComponent(name).path }

    // MARK: - Configs

    func testConfigsReadAsTransformersReadsThem() throws {
        let g2 = try ModelFiles.open(Fixture("gemma2_softcap").directory).config
        XCTAssertEqual(g2.family.modelType, "gemma2")
        XCTAssertEqual(g2.normWeightOffset, 1)
        XCTAssertEqual(g2.embeddingMultiplier, 8)
        XCTAssertEqual(g2.hiddenActivation, .geluTanh)
        XCTAssertTrue(g2.branchOutputNorms)
        XCTAssertEqual(g2.attentionLogitSoftcap, 0.75)
        XCTAssertEqual(g2.finalLogitSoftcap, 2)
        XCTAssertEqual(g2.queryPreAttentionScalar, 24)
        XCTAssertEqual(g2.attentionScale, Float(pow(24.0, -0.5)))
        XCTAssertEqual(g2.slidingWindow, 4)
        XCTAssertEqual(g2.slidingLayers, [0])
        XCTAssertNil(g2.slidingRopeTheta)
        XCTAssertFalse(g2.qkNorm)
        XCTAssertTrue(g2.tieWordEmbeddings)

        let g3 = try ModelFiles.open(Fixture("gemma3_sliding").directory).config
        XCTAssertEqual(g3.family.modelType, "gemma3_text")
        XCTAssertTrue(g3.qkNorm)
        XCTAssertNil(g3.attentionLogitSoftcap)
        XCTAssertNil(g3.finalLogitSoftcap)
        XCTAssertEqual(g3.ropeTheta, 1e6)
        XCTAssertEqual(g3.ropeScaling, .linear(factor: 2))
        XCTAssertEqual(g3.slidingRopeTheta, 1e4)
        XCTAssertEqual(g3.slidingLayers, [0])

        // Hub configs of transformers 4.x: no layer_types, softcap keys missing (Gemma 2's class
        // defaults 50 / 30), legacy rope keys, sliding_window_pattern; head_dim defaults to 256.
        let base: [String: Any] = ["hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 7, "num_attention_heads": 4,
                                   "num_key_value_heads": 2, "vocab_size": 128]
        var old2 = base; old2["model_type"] = "gemma2"
        let c2 = try ModelConfig(json: old2, path: "old2")
        XCTAssertEqual(c2.slidingLayers, [0, 2, 4, 6])
        XCTAssertEqual(c2.attentionLogitSoftcap, 50)
        XCTAssertEqual(c2.finalLogitSoftcap, 30)
        XCTAssertEqual(c2.headDim, 256)
        XCTAssertEqual(c2.queryPreAttentionScalar, 256)
        XCTAssertEqual(c2.slidingWindow, 4096)
        var nulls = old2; nulls["attn_logit_softcapping"] = NSNull(); nulls["final_logit_softcapping"] = NSNull()
        let c2n = try ModelConfig(json: nulls, path: "nulls")
        XCTAssertNil(c2n.attentionLogitSoftcap)
        XCTAssertNil(c2n.finalLogitSoftcap)
        var old3 = base; old3["model_type"] = "gemma3_text"; old3["sliding_window_pattern"] = 3
        old3["rope_theta"] = 1e6; old3["rope_local_base_freq"] = 1e4; old3["rope_scaling"] = ["rope_type": "linear", "factor": 8.0]
        old3["attn_logit_softcapping"] = 50.0
        let c3 = try ModelConfig(json: old3, path: "old3")
        XCTAssertEqual(c3.slidingLayers, [0, 1, 3, 4, 6])
        XCTAssertEqual(c3.ropeTheta, 1e6)
        XCTAssertEqual(c3.slidingRopeTheta, 1e4)
        XCTAssertEqual(c3.ropeScaling, .linear(factor: 8))
        XCTAssertNil(c3.attentionLogitSoftcap, "transformers ignores attn_logit_softcapping in Gemma 3")
        // The HF config Finch writes reads back as the same config.
        for c in [g2, g3, c2, c3] {
            XCTAssertEqual(try ModelConfig(json: c.huggingFaceJSON(), path: "written"), c, c.modelType)
        }
        var bidirectional = old3; bidirectional["use_bidirectional_attention"] = true
        XCTAssertThrowsError(try ModelConfig(json: bidirectional, path: "embedding")) { XCTAssertTrue("\($0)".contains("use_bidirectional_attention")) }
    }

    func testUnknownModelTypeListsEveryFamily() {
        XCTAssertThrowsError(try ModelConfig(json: ["model_type": "gemma7", "hidden_size": 8], path: "x/config.json")) { error in
            for family in ["llama", "mistral", "qwen2", "qwen3", "smollm3", "gemma2", "gemma3_text"] {
                XCTAssertTrue("\(error)".contains(family), "\(error)")
            }
        }
    }

    // MARK: - Kernels

    /// Naive attention in Double: scores = scale q.k, capped, then masked by causality, padding,
    /// window (i - j < window), sequence starts and shared prefixes (keys before the prefix end
    /// stay visible); softmax; weighted values.
    func naiveAttention(q: [Float], k: [Float], v: [Float], mask: [Float]?, starts: [Int32]?, prefixEnds: [Int32]? = nil,
                        shape s: AttentionShape) -> [Float] {
        let T = s.seq, D = s.headDim
        var out = [Float](repeating: 0, count: s.batch * T * s.qStride)
        for b in 0..<s.batch { for h in 0..<s.heads { for i in 0..<T {
            let kvh = h / s.group
            var scores: [Double] = [], keys: [Int] = []
            for j in 0...i {
                if let mask, mask[b * T + j] == 0 { continue }
                if s.window > 0 && i - j >= s.window { continue }
                if let starts, j < Int(starts[b * T + i]), j >= Int(prefixEnds?[b * T + i] ?? 0) { continue }
                var dot = 0.0
                for d in 0..<D { dot += Double(q[(b * T + i) * s.qStride + h * D + d]) * Double(k[(b * T + j) * s.kvStride + kvh * D + d]) }
                var score = dot * Double(s.scale)
                if s.softcap > 0 { score = Double(s.softcap) * tanh(score / Double(s.softcap)) }
                scores.append(score); keys.append(j)
            }
            guard let m = scores.max() else { continue }
            let e = scores.map { exp($0 - m) }, sum = e.reduce(0, +)
            for d in 0..<D {
                var acc = 0.0
                for (w, j) in zip(e, keys) { acc += w / sum * Double(v[(b * T + j) * s.kvStride + kvh * D + d]) }
                out[(b * T + i) * s.qStride + h * D + d] = Float(acc)
            }
        } } }
        return out
    }

    /// Soft-capped sliding-window attention over several query blocks (with padding and packed
    /// sequences) equals the naive one; its backward equals central differences; the KV-cache
    /// paths (chunked prefill and one-token decoding) equal it too.
    func testSoftcappedSlidingAttentionForwardBackwardAndCache() {
        let saved = attentionQueryBlock
        attentionQueryBlock = 4
        defer { attentionQueryBlock = saved }
        for (softcap, window) in [(Float(0.75), 5), (0, 3), (2, 0)] {
            let shape = AttentionShape(batch: 2, seq: 13, heads: 4, kvHeads: 2, headDim: 8, scale: 0.3, softcap: softcap, window: window)
            let n = shape.batch * shape.seq
            let q = S.randomArray(n * shape.qStride, seed: 1), k = S.randomArray(n * shape.kvStride, seed: 2)
            let v = S.randomArray(n * shape.kvStride, seed: 3)
            var mask = [Float](repeating: 1, count: n); for t in 10..<13 { mask[13 + t] = 0 }
            // Row 1 packs two sequences (6 + 7 tokens). For the shared layout each row is a prompt
            // (0..<4) and two branches after it (4..<8, 8..<13); the second sees the prompt and itself.
            let packedStarts: [Int32] = (0..<n).map { t in t < 13 ? 0 : (t % 13 < 6 ? 0 : 6) }
            let branchStarts: [Int32] = (0..<n).map { t in t % 13 < 8 ? 0 : 8 }
            let prefixEnds: [Int32] = (0..<n).map { t in t % 13 < 8 ? 0 : 4 }
            for layout in ["plain", "packed"] + (window == 0 ? ["shared prompt"] : []) {
                let starts: [Int32]? = layout == "plain" ? nil : layout == "packed" ? packedStarts : branchStarts
                let ends: [Int32]? = layout == "shared prompt" ? prefixEnds : nil
                func run(_ q: [Float], _ k: [Float], _ v: [Float]) -> ([Float], [Float]) {
                    var out = [Float](repeating: 0, count: n * shape.qStride), lse = [Float](repeating: 0, count: shape.batch * shape.heads * shape.seq)
                    starts.withOptionalPointer { st in ends.withOptionalPointer { pe in
                        attentionForward(out: &out, lse: &lse, q: q, k: k, v: v, keyMask: mask,
                                         visibility: KeyVisibility(segmentStarts: st, prefixEnds: pe), shape: shape)
                    } }
                    return (out, lse)
                }
                let label = "softcap \(softcap) window \(window) \(layout)"
                let (out, lse) = run(q, k, v)
                XCTAssertLessThan(S.maxRelativeError(out, naiveAttention(q: q, k: k, v: v, mask: mask, starts: starts, prefixEnds: ends, shape: shape)),
                                  1e-4, label)
                // Backward against central differences of L = sum(out * w).
                let w = S.randomArray(out.count, seed: 4)
                var dq = [Float](repeating: 0, count: q.count), dk = [Float](repeating: 0, count: k.count), dv = dk
                starts.withOptionalPointer { st in ends.withOptionalPointer { pe in
                    attentionBackward(dq: &dq, dk: &dk, dv: &dv, dout: w, q: q, k: k, v: v, out: out, lse: lse, keyMask: mask,
                                      visibility: KeyVisibility(segmentStarts: st, prefixEnds: pe), shape: shape)
                } }
                let loss = { (q: [Float], k: [Float], v: [Float]) in S.dot(run(q, k, v).0, w) }
                let nq = S.numericalGradient(q, eps: 1e-2) { loss($0, k, v) }
                let nk = S.numericalGradient(k, eps: 1e-2) { loss(q, $0, v) }
                let nv = S.numericalGradient(v, eps: 1e-2) { loss(q, k, $0) }
                XCTAssertLessThan(S.relativeL2(dq, nq), 1e-2, "dq \(label)")
                XCTAssertLessThan(S.relativeL2(dk, nk), 1e-2, "dk \(label)")
                XCTAssertLessThan(S.relativeL2(dv, nv), 1e-2, "dv \(label)")
            }
            // KV cache: a prefill of 7 then one token at a time, against the naive result.
            let expected = naiveAttention(q: q, k: k, v: v, mask: mask, starts: nil, shape: shape)
            var got = [Float](repeating: 0, count: n * shape.qStride)
            var start = 0
            for width in [7, 1, 1, 1, 1, 1, 1] {
                var chunkQ = [Float](), chunkOut = [Float](repeating: 0, count: shape.batch * width * shape.qStride)
                for b in 0..<shape.batch { chunkQ += q[(b * 13 + start) * shape.qStride..<(b * 13 + start + width) * shape.qStride] }
                attentionCachedForward(out: &chunkOut, q: chunkQ, keys: k, values: v, keyMask: mask, capacity: 13, start: start,
                                       queries: width, shape: shape)
                for b in 0..<shape.batch {
                    for t in 0..<width * shape.qStride { got[(b * 13 + start) * shape.qStride + t] = chunkOut[b * width * shape.qStride + t] }
                }
                start += width
            }
            XCTAssertLessThan(S.maxRelativeError(got, expected), 1e-4, "cached softcap \(softcap) window \(window)")
        }
    }

    func testGeGLUNormOffsetAndCappedCrossEntropyBackward() {
        // GeGLU: h = gelu_tanh(g) * u, rows 2F apart as in the decoder.
        let rows = 3, F = 10
        let g = S.randomArray(rows * 2 * F, seed: 5, scale: 2), dh = S.randomArray(rows * F, seed: 6)
        func forward(_ gu: [Float]) -> [Float] {
            var h = [Float](repeating: 0, count: rows * F)
            gu.withUnsafeBufferPointer { p in gegluForward(&h, gate: p.baseAddress!, up: p.baseAddress! + F, rows: rows, width: F, stride: 2 * F) }
            return h
        }
        let naive = (0..<rows * F).map { i -> Float in
            let x = Double(g[i / F * 2 * F + i % F]), u = Double(g[i / F * 2 * F + F + i % F])
            return Float(0.5 * x * (1 + tanh((2 / Double.pi).squareRoot() * (x + 0.044715 * x * x * x))) * u)
        }
        XCTAssertLessThan(S.maxRelativeError(forward(g), naive), 1e-5)
        var dgu = [Float](repeating: 0, count: g.count)
        dgu.withUnsafeMutableBufferPointer { d in g.withUnsafeBufferPointer { p in
            gegluBackward(dgate: d.baseAddress!, dup: d.baseAddress! + F, dh: dh, gate: p.baseAddress!, up: p.baseAddress! + F, rows: rows, width: F, stride: 2 * F)
        } }
        XCTAssertLessThan(S.relativeL2(dgu, S.numericalGradient(g, eps: 1e-2) { S.dot(forward($0), dh) }), 1e-3, "GeGLU backward")

        // RMSNorm with weights 1 + w: forward, dx and dw against central differences.
        let dim = 12
        let x = S.randomArray(rows * dim, seed: 7), w = S.randomArray(dim, seed: 8, scale: 0.1), dy = S.randomArray(rows * dim, seed: 9)
        func norm(_ x: [Float], _ w: [Float]) -> [Float] {
            var y = [Float](repeating: 0, count: x.count)
            rmsnormForward(&y, nil, x, w, rows: rows, dim: dim, eps: 1e-6, weightOffset: 1)
            return y
        }
        var rstd = [Float](repeating: 0, count: rows), y = [Float](repeating: 0, count: x.count)
        rmsnormForward(&y, &rstd, x, w, rows: rows, dim: dim, eps: 1e-6, weightOffset: 1)
        var dx = [Float](repeating: 0, count: x.count), dw = [Float](repeating: 0, count: dim)
        rmsnormBackward(&dx, &dw, dy, x, w, rstd, rows: rows, dim: dim, weightOffset: 1)
        XCTAssertLessThan(S.relativeL2(dx, S.numericalGradient(x, eps: 1e-2) { S.dot(norm($0, w), dy) }), 1e-3, "norm dx")
        XCTAssertLessThan(S.relativeL2(dw, S.numericalGradient(w, eps: 1e-2) { S.dot(norm(x, $0), dy) }), 1e-3, "norm dw")

        // Cross-entropy of capped logits: loss against naive, dHidden against central differences.
        let V = 20, C = 6, cap: Float = 1.5
        let hidden = S.randomArray(rows * C, seed: 10), headValues = S.randomArray(V * C, seed: 11)
        let targets: [Int32] = [3, -1, 17]
        func loss(_ hidden: [Float]) -> Double {
            headValues.withUnsafeBufferPointer { hv in
                let head = WeightMatrix(rows: V, columns: C, floats: UnsafeMutablePointer(mutating: hv.baseAddress!), owner: nil)
                return crossEntropy(hidden: hidden, targets: targets, rows: rows, head: head, softcap: cap).loss
            }
        }
        var naiveLoss = 0.0
        for r in [0, 2] {
            let logits = (0..<V).map { j in Double(cap) * tanh((0..<C).reduce(0.0) { $0 + Double(hidden[r * C + $1]) * Double(headValues[j * C + $1]) } / Double(cap)) }
            let m = logits.max()!, lse = m + log(logits.reduce(0) { $0 + exp($1 - m) })
            naiveLoss += lse - logits[Int(targets[r])]
        }
        XCTAssertEqual(loss(hidden), naiveLoss, accuracy: 1e-5 * naiveLoss)
        var dHidden = [Float](repeating: 0, count: hidden.count)
        headValues.withUnsafeBufferPointer { hv in
            let head = WeightMatrix(rows: V, columns: C, floats: UnsafeMutablePointer(mutating: hv.baseAddress!), owner: nil)
            dHidden.withUnsafeMutableBufferPointer { d in
                _ = crossEntropy(hidden: hidden, targets: targets, rows: rows, head: head,
                                 backward: CrossEntropyBackward(dHidden: d.baseAddress!), softcap: cap, chunkRows: 1)   // a chunk per row
            }
        }
        XCTAssertLessThan(S.relativeL2(dHidden, S.numericalGradient(hidden, eps: 1e-2) { loss($0) }), 1e-3, "capped CE dHidden")
    }

    // MARK: - Against transformers

    /// The figures ParityTests asserts for every family, measured and printed for Gemma.
    func testLogitsLossAndGradientsMatchTransformers() throws {
        for name in Self.models {
            let f = try Fixture(name)
            let count = f.targets.filter { $0 >= 0 }.count
            let base = try Transformer(files: ModelFiles.open(f.directory))
            let logitsError = S.maxRelativeError(base.logits(f.batch), f.tensor("logits"))
            let nll = base.negativeLogLikelihood(f.batch, targets: f.targets)
            let lossError = abs(Float(nll.sum / Double(nll.count)) - f.tensor("loss")[0]) / f.tensor("loss")[0]

            let adapter = f.directory + "/adapter"
            let lora = try Transformer(files: ModelFiles.open(f.directory), fineTuning: .lora(PEFTAdapter.config(directory: adapter)))
            try PEFTAdapter.load(directory: adapter, into: lora)
            let loraLogitsError = S.maxRelativeError(lora.logits(f.batch), f.tensor("lora_logits"))
            let r = lora.crossEntropyStep(f.batch, targets: f.targets, weight: 1 / Float(count))
            let loraLossError = abs(Float(r.sum / Double(r.count)) - f.tensor("lora_loss")[0]) / f.tensor("lora_loss")[0]
            let loraGrads = lora.parameters!.entries.map { S.relativeL2(lora.parameters!.array($0.name, gradient: true)!, f.tensor("grad.lora." + $0.name)) }

            let full = try Transformer(files: ModelFiles.open(f.directory), fineTuning: .full)
            full.crossEntropyStep(f.batch, targets: f.targets, weight: 1 / Float(count))
            XCTAssertEqual(full.parameters!.entries.count, f.expected.keys.filter { $0.hasPrefix("grad.full.") }.count, name)
            let fullGrads = full.parameters!.entries.map { (name: $0.name, error: S.relativeL2(full.parameters!.array($0.name, gradient: true)!, f.tensor("grad.full." + $0.name))) }

            XCTAssertLessThan(logitsError, 1e-4, name); XCTAssertLessThan(loraLogitsError, 1e-4, name)
            XCTAssertLessThan(lossError, 1e-5, name); XCTAssertLessThan(loraLossError, 1e-5, name)
            XCTAssertEqual(loraGrads.count, 28, name)
            for e in loraGrads { XCTAssertLessThan(e, 1e-3, name) }
            for e in fullGrads { XCTAssertLessThan(e.error, 1e-3, "\(name) \(e.name)") }
            let worstFull = fullGrads.max { $0.error < $1.error }!
            print(String(format: "GemmaTests %@: logits %.1e, LoRA logits %.1e max rel; loss %.1e, LoRA loss %.1e rel; LoRA grads max %.1e, full grads max %.1e (%@) rel L2",
                         name, logitsError, loraLogitsError, lossError, loraLossError, loraGrads.max()!, worstFull.error, worstFull.name))
        }
    }

    /// The per-position logit sums DPO logs (TRL's logits/chosen) are sums of the capped logits;
    /// a random Gemma model (benchmarks) builds with unit norms.
    func testCappedLogitSumsAndRandomModel() throws {
        let f = try Fixture("gemma2_softcap")
        let model = try Transformer(files: ModelFiles.open(f.directory))
        let logits = model.logits(f.batch), V = model.config.vocabSize
        let sums = model.tokenStatistics(f.batch, targets: f.targets).logitSums
        for t in 0..<f.batch.tokenCount {
            let want = logits[t * V..<(t + 1) * V].reduce(0, +)
            XCTAssertEqual(sums[t], want, accuracy: 1e-4 * max(1, abs(want)), "position \(t)")
        }
        let random = ModelFiles.random(config: model.config, seed: 1)
        XCTAssertEqual(random.tensors["model.layers.0.post_feedforward_layernorm.weight"].map(dequantize)?.first, 0)
        XCTAssertEqual(try Transformer(files: random).logits(f.batch).count, f.batch.tokenCount * V)
    }

    /// Sliding windows matter on these fixtures: without them the logits move far from transformers'.
    func testWindowAndSoftcapsAreExercised() throws {
        for name in Self.models {
            let f = try Fixture(name)
            var files = try ModelFiles.open(f.directory)
            var config = files.config
            config.slidingLayers = []
            files = ModelFiles(config: config, tensors: files.tensors, source: files.source)
            XCTAssertGreaterThan(S.maxRelativeError(try Transformer(files: files).logits(f.batch), f.tensor("logits")), 1e-2, name)
        }
    }

    /// Finch's generator (KV cache, chunked prefill, one token at a time) picks the fixture's 32
    /// greedy tokens, and the cached logits of each step equal transformers' within 1e-4; rows of
    /// other lengths decoded beside it (left padding) do not change it.
    func testGreedyGenerationMatchesTransformers() throws {
        for name in Self.models {
            let worst = try ParityTests.assertGreedyMatchesTransformers(name)
            print(String(format: "GemmaTests %@: greedy tokens equal, cached step logits %.1e max rel", name, worst))
        }
    }

    // MARK: - GGUF

    /// HF folder -> GGUF (arch gemma2 / gemma3, llama.cpp's keys, norms as 1 + w) -> Finch: the
    /// same config, NLL within 1e-5, logits; the LoRA-merged export gives the adapter's logits.
    func testThroughGGUF() throws {
        for (name, arch) in [("gemma2_softcap", "gemma2"), ("gemma3_sliding", "gemma3")] {
            let f = try Fixture(name), path = out("\(name).gguf")
            try Exporter.export(ExportOptions(model: f.directory, format: .gguf, dtype: .f32, output: path))
            let gguf = try GGUFFile(path: path)
            XCTAssertEqual(gguf.metadata["general.architecture"]?.string, arch)
            XCTAssertEqual(gguf.metadata["\(arch).attention.sliding_window"]?.int, 4)
            XCTAssertNil(gguf.tensors["output.weight"])
            for key in ["blk.0.post_attention_norm.weight", "blk.0.ffn_norm.weight", "blk.1.post_ffw_norm.weight", "output_norm.weight"] {
                XCTAssertNotNil(gguf.tensors[key], key)
            }
            if arch == "gemma2" {
                XCTAssertEqual(gguf.metadata["gemma2.attn_logit_softcapping"]?.float, 0.75)
                XCTAssertEqual(gguf.metadata["gemma2.final_logit_softcapping"]?.float, 2)
            } else {
                XCTAssertNotNil(gguf.tensors["blk.0.attn_q_norm.weight"])
                XCTAssertEqual(gguf.metadata["gemma3.rope.freq_base_swa"]?.float, 1e4)
                XCTAssertEqual(gguf.metadata["gemma3.rope.scaling.type"]?.string, "linear")
            }
            // Norms are stored as the multiplier 1 + w.
            let source = try ModelFiles.open(f.directory)
            let stored = dequantize(gguf.tensors["blk.0.ffn_norm.weight"]!), hf = dequantize(source.tensors["model.layers.0.pre_feedforward_layernorm.weight"]!)
            XCTAssertEqual(stored, hf.map { 1 + $0 })
            let back = try ModelFiles.open(path)
            var expectedConfig = source.config   // a GGUF without tokenizer holds no bos / eos ids
            expectedConfig.bosTokenId = nil; expectedConfig.eosTokenIds = []
            XCTAssertEqual(back.config, expectedConfig, name)
            // Weights come back bit for bit; a norm's w as (1 + w) - 1, whose multiplier 1 + w is the stored one exactly.
            for (hfName, t) in source.tensors {
                let got = dequantize(back.tensors[hfName]!), want = dequantize(t)
                if hfName.hasSuffix("norm.weight") { XCTAssertEqual(got.map { 1 + $0 }, want.map { 1 + $0 }, hfName) } else { XCTAssertEqual(got, want, hfName) }
            }

            let ggufModel = try Transformer(files: back), hfModel = try Transformer(files: source)
            let a = ggufModel.negativeLogLikelihood(f.batch, targets: f.targets), b = hfModel.negativeLogLikelihood(f.batch, targets: f.targets)
            let nllGap = abs(a.sum - b.sum) / b.sum
            XCTAssertLessThan(nllGap, 1e-5, name)
            XCTAssertLessThan(S.maxRelativeError(ggufModel.logits(f.batch), f.tensor("logits")), 1e-4, name)

            let merged = out("\(name)-merged.gguf")
            try Exporter.export(ExportOptions(model: f.directory, adapter: f.directory + "/adapter", format: .gguf, dtype: .f32, output: merged))
            let mergedError = S.maxRelativeError(try Transformer(files: ModelFiles.open(merged)).logits(f.batch), f.tensor("lora_logits"))
            XCTAssertLessThan(mergedError, 1e-4, name)
            // GGUF -> HF folder -> Finch: the config.json written reads back alike.
            let folder = out("\(name)-hf")
            try Exporter.export(ExportOptions(model: path, format: .hf, dtype: .f32, output: folder))
            let again = try ModelFiles.open(folder)
            XCTAssertEqual(again.config.slidingLayers, source.config.slidingLayers)
            XCTAssertEqual(try Transformer(files: again).logits(f.batch), hfModel.logits(f.batch), name)
            print(String(format: "GemmaTests %@: GGUF NLL vs HF folder %.1e rel; merged-adapter GGUF logits vs PEFT %.1e max rel", name, nllGap, mergedError))
        }
    }

    // MARK: - Training

    /// SFT through the Trainer with LoRA (AdamW) and full fine-tuning: the loss falls over steps.
    func testTrainingStepsLowerTheLoss() throws {
        for name in Self.models {
            let f = try Fixture(name)
            var rng = FinchRandom(seed: 3)
            let examples = (0..<4).map { i -> Example in
                let ids = (0..<12).map { _ in Int32(1 + rng.next() % 120) }
                return Example(id: i, fields: ["input_ids": ids, "labels": ids.enumerated().map { $0.offset < 3 ? -100 : $0.element }])
            }
            for tuning in [FineTuning.lora(LoRAConfig(rank: 4, alpha: 8)), .full] {
                let model = try Transformer(files: ModelFiles.open(f.directory), fineTuning: tuning, seed: 1)
                var settings = TrainerSettings()
                settings.batchSize = 2; settings.gradAccum = 2; settings.learningRate = tuning == .full ? 3e-3 : 2e-2
                settings.maxSteps = 8; settings.scheduler = .constant; settings.loggingSteps = 0
                let trainer = try Trainer(model: model, objective: SFTObjective(), train: examples, settings: settings)
                var losses: [Double] = []
                for _ in 0..<8 { losses.append(try trainer.step().metrics["loss"]!) }
                XCTAssertLessThan(losses.last!, 0.9 * losses.first!, "\(name) \(tuning): \(losses)")
                print("GemmaTests \(name) \(tuning == .full ? "full" : "lora"): SFT losses \(losses.map { String(format: "%.3f", $0) }.joined(separator: " "))")
            }
        }
    }

    /// `finch train` SFT with LoRA on a Gemma 2 folder (the fixture's shape and settings, random
    /// weights, the vocabulary of the trainer fixtures' tokenizer): the loss falls over the steps.
    func testFinchTrainSFTOnAGemmaFolder() throws {
        let tokenizerModel = try tinyChatModel()
        var config = try ModelFiles.open(Fixture("gemma2_softcap").directory).config
        config.vocabSize = 320; config.bosTokenId = 1; config.eosTokenIds = [2]
        let folder = out("gemma2-chat")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try JSONSerialization.data(withJSONObject: config.huggingFaceJSON()).write(to: URL(fileURLWithPath: folder + "/config.json"))
        let random = ModelFiles.random(config: config, seed: 5)
        try SafeTensors.write(path: folder + "/model.safetensors",
                              tensors: random.tensors.keys.sorted().map { ($0, random.tensors[$0]!.shape, dequantize(random.tensors[$0]!)) })
        for name in ["tokenizer.json", "tokenizer_config.json"] {
            try FileManager.default.copyItem(atPath: tokenizerModel + "/" + name, toPath: folder + "/" + name)
        }
        let animals = ["cat", "dog", "owl", "fox"]
        let data = try write("sft.jsonl", animals.map { #"{"prompt": "What does a \#($0) say?", "completion": "A \#($0) says its own word."}"# }
            .joined(separator: "\n") + "\n")
        let output = out("run")
        let result = try FinchProcess.run(["train", "--method", "sft", "--model", folder, "--data", data, "--output", output,
                                           "--max-steps", "8", "--batch-size", "2", "--lora-r", "4", "--lr", "1e-2", "--seed", "3"])
        XCTAssertEqual(result.status, 0, result.err)
        let losses = try String(contentsOfFile: output + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").map {
            try XCTUnwrap((JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["loss"] as? Double)
        }
        XCTAssertEqual(losses.count, 8)
        XCTAssertLessThan(losses.suffix(2).reduce(0, +), 0.97 * losses.prefix(2).reduce(0, +), "\(losses)")
        print("GemmaTests finch train (gemma2, LoRA SFT): losses \(losses.map { String(format: "%.3f", $0) }.joined(separator: " "))")
    }

    /// bf16 (bf16 products, f32 norms, softmax, softcaps and losses) stays near fp32 for Gemma.
    /// transformers in a bf16 *model* also rounds the embedding scale sqrt(hidden) to bf16 (8 is
    /// exact here); Finch's bf16 keeps f32 weights, as TRL's bf16=True autocast does, and uses the f32 scale.
    func testBF16StepStaysNearFP32() throws {
        for name in Self.models {
            let f = try Fixture(name)
            let count = f.targets.filter { $0 >= 0 }.count
            func step(_ precision: Precision) throws -> (Double, [Float]) {
                let adapter = f.directory + "/adapter"
                let model = try Transformer(files: ModelFiles.open(f.directory), fineTuning: .lora(PEFTAdapter.config(directory: adapter)),
                                            precision: precision)
                try PEFTAdapter.load(directory: adapter, into: model)
                let r = model.crossEntropyStep(f.batch, targets: f.targets, weight: 1 / Float(count))
                let p = model.parameters!
                return (r.sum / Double(r.count), Array(UnsafeBufferPointer(start: p.grads, count: p.count)))
            }
            let fp32 = try step(.fp32), bf16 = try step(.bf16)
            let lossGap = abs(bf16.0 - fp32.0) / fp32.0, gradGap = S.relativeL2(bf16.1, fp32.1)
            XCTAssertLessThan(lossGap, 1e-2, name)
            XCTAssertLessThan(gradGap, 5e-2, name)
            print(String(format: "GemmaTests %@: bf16 vs fp32: loss %.1e, LoRA gradients %.1e rel", name, lossGap, gradGap))
        }
    }
}
