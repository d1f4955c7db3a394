import XCTest
import FinchTestSupport
@testable import Finch
@testable import FinchKernels
@testable import FinchIO
@testable import FinchTokenizers
@testable import FinchModels
@testable import FinchGeneration
@testable import FinchDistributed
@testable import FinchTraining
@testable import FinchExport

/// Finch against transformers + peft on tiny random models (fixtures written by
/// reference/make_parity_fixtures.py): logits, loss, and every gradient, LoRA and full.
final class ParityTests: XCTestCase {
    typealias S = TestSupport
    static let models = ["llama_tied", "qwen2_bias", "llama_scaled", "qwen3_qknorm", "smollm3_norope", "gemma2_softcap", "gemma3_sliding",
                          "phi3_longrope", "phi3_short"]

    struct Fixture {
        let directory: String
        let expected: [String: TensorData]
        let batch: TokenBatch
        let targets: [Int32]

        init(_ name: String) throws {
            directory = S.fixtures.appendingPathComponent("parity/\(name)").path
            expected = try SafeTensors.read(path: directory + "/expected.safetensors")
            let ids = dequantize(expected["input_ids"]!), mask = dequantize(expected["attention_mask"]!)
            let labels = dequantize(expected["labels"]!).map { Int32($0) }
            let shape = expected["input_ids"]!.shape
            batch = TokenBatch(batch: shape[0], seq: shape[1], ids: ids.map { Int32($0) }, mask: mask)
            targets = TokenBatch.shiftedTargets(labels: labels, batch: shape[0], seq: shape[1])
        }

        func tensor(_ name: String) -> [Float] { dequantize(expected[name]!) }
    }

    func testBaseLogitsAndLossMatchTransformers() throws {
        for name in Self.models {
            let f = try Fixture(name)
            let model = try Transformer(files: ModelFiles.open(f.directory))
            let logits = model.logits(f.batch)
            XCTAssertLessThan(S.maxRelativeError(logits, f.tensor("logits")), 1e-4, name)
            let nll = model.negativeLogLikelihood(f.batch, targets: f.targets)
            XCTAssertEqual(Float(nll.sum / Double(nll.count)), f.tensor("loss")[0], accuracy: 1e-5 * f.tensor("loss")[0], name)
        }
    }

    /// Finch's generator (KV cache, chunked prefill) picks the fixture's 32 greedy tokens, the
    /// cached logits of each step equal transformers' within 1e-4, and a row of another length
    /// decoded beside it (left padding) changes nothing. Returns the worst step's max rel. error.
    @discardableResult
    static func assertGreedyMatchesTransformers(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws -> Float {
        let f = try Fixture(name)
        let model = try Transformer(files: ModelFiles.open(f.directory))
        let prompt = f.tensor("greedy_prompt").map { Int($0) }, tokens = f.tensor("greedy_tokens").map { Int($0) }
        let expected = f.tensor("greedy_logits"), V = model.config.vocabSize
        let generator = Generator(model: model)
        generator.prefillChunk = 3
        let result = generator.generate(prompt: prompt, sampling: SamplingSettings(), stop: StopRules(maxNewTokens: 32, eosTokenIds: []))
        XCTAssertEqual(result.tokens, tokens, name, file: file, line: line)
        // The same steps through the cache by hand, to compare each step's logits.
        let cache = KVCache(config: model.config, batch: 1, capacity: 40)
        var logits = model.decode(TokenBatch(batch: 1, seq: 4, ids: prompt.map { Int32($0) }, positions: [0, 1, 2, 3]), cache: cache)
        var worst: Float = 0
        for step in 0..<32 {
            worst = max(worst, S.maxRelativeError(logits, Array(expected[step * V..<(step + 1) * V])))
            logits = model.decode(TokenBatch(batch: 1, seq: 1, ids: [Int32(tokens[step])], positions: [Int32(4 + step)]), cache: cache)
        }
        XCTAssertLessThan(worst, 1e-4, name, file: file, line: line)
        let batched = generator.generate(prompts: [[5, 9, 2, 7, 11, 3, 8], prompt], sampling: SamplingSettings(),
                                         stop: StopRules(maxNewTokens: 32, eosTokenIds: []))
        XCTAssertEqual(batched[1].tokens, tokens, "\(name), left-padded beside a longer prompt", file: file, line: line)
        return worst
    }

    /// Every fixture with greedy keys (written since they were added), Phi-3 within LongRoPE's
    /// original context among them (`phi3_short`).
    func testGreedyGenerationMatchesTransformers() throws {
        let checked = try Self.models.filter { try Fixture($0).expected["greedy_tokens"] != nil }
        for name in checked { try Self.assertGreedyMatchesTransformers(name) }
        XCTAssertTrue(checked.contains("phi3_short"), "\(checked)")
    }

    func testLoRALogitsAndGradientsMatchPEFT() throws {
        for name in Self.models {
            let f = try Fixture(name)
            let adapter = f.directory + "/adapter"
            let model = try Transformer(files: ModelFiles.open(f.directory), fineTuning: .lora(PEFTAdapter.config(directory: adapter)))
            try PEFTAdapter.load(directory: adapter, into: model)
            XCTAssertLessThan(S.maxRelativeError(model.logits(f.batch), f.tensor("lora_logits")), 1e-4, name)

            let count = f.targets.filter { $0 >= 0 }.count
            let r = model.crossEntropyStep(f.batch, targets: f.targets, weight: 1 / Float(count))
            XCTAssertEqual(Float(r.sum / Double(r.count)), f.tensor("lora_loss")[0], accuracy: 1e-5 * f.tensor("lora_loss")[0], name)
            let parameters = model.parameters!
            XCTAssertEqual(parameters.entries.count, f.expected.keys.filter { $0.hasPrefix("grad.lora.") }.count, name)
            for entry in parameters.entries {
                let expected = f.tensor("grad.lora." + entry.name)
                XCTAssertLessThan(S.relativeL2(parameters.array(entry.name, gradient: true)!, expected), 1e-3, "\(name) \(entry.name)")
            }
        }
    }

    func testFullFineTuningGradientsMatchTransformers() throws {
        for name in Self.models {
            let f = try Fixture(name)
            let model = try Transformer(files: ModelFiles.open(f.directory), fineTuning: .full)
            let count = f.targets.filter { $0 >= 0 }.count
            let r = model.crossEntropyStep(f.batch, targets: f.targets, weight: 1 / Float(count))
            XCTAssertEqual(Float(r.sum / Double(r.count)), f.tensor("loss")[0], accuracy: 1e-5 * f.tensor("loss")[0], name)
            // Under the files' names: Phi-3's q, k, v gradients joined as qkv_proj's, as saving joins them.
            let gradients = model.weightsForSaving(gradients: true)
            XCTAssertEqual(gradients.count, f.expected.keys.filter { $0.hasPrefix("grad.full.") }.count, name)
            for (tensor, shape, values) in gradients {
                XCTAssertEqual(shape, f.expected["grad.full." + tensor]?.shape, "\(name) \(tensor)")
                XCTAssertLessThan(S.relativeL2(values, f.tensor("grad.full." + tensor)), 1e-3, "\(name) \(tensor)")
            }
        }
    }

    /// gate and up joined into one GEMM (as for quantized or bf16 weights, which are copied at
    /// load) against the same references: the f32 fixtures are joined on request.
    func testJoinedGateAndUpMatchTransformersAndPEFT() throws {
        Transformer.joinsInPlaceWeights = true
        defer { Transformer.joinsInPlaceWeights = false }
        for tuning in ["none", "lora", "full"] {
            let f = try Fixture("qwen2_bias")
            let adapter = f.directory + "/adapter"
            let model = try Transformer(files: ModelFiles.open(f.directory), fineTuning: tuning == "lora"
                                        ? .lora(PEFTAdapter.config(directory: adapter)) : tuning == "full" ? .full : .none)
            XCTAssertTrue(model.layers.allSatisfy { $0.gate.weight.isFollowed(by: $0.up.weight) }, tuning)
            if tuning == "lora" { try PEFTAdapter.load(directory: adapter, into: model) }
            let prefix = tuning == "lora" ? "lora_" : ""
            XCTAssertLessThan(S.maxRelativeError(model.logits(f.batch), f.tensor(prefix + "logits")), 1e-4, tuning)
            guard let parameters = model.parameters else { continue }
            let count = f.targets.filter { $0 >= 0 }.count
            let r = model.crossEntropyStep(f.batch, targets: f.targets, weight: 1 / Float(count))
            XCTAssertEqual(Float(r.sum / Double(r.count)), f.tensor(prefix + "loss")[0], accuracy: 1e-5 * f.tensor(prefix + "loss")[0], tuning)
            for entry in parameters.entries {
                let expected = f.tensor("grad.\(tuning)." + entry.name)
                XCTAssertLessThan(S.relativeL2(parameters.array(entry.name, gradient: true)!, expected), 1e-3, "\(tuning) \(entry.name)")
            }
        }
    }

    func testAdapterRoundTripsThroughPEFTFormat() throws {
        let f = try Fixture("qwen2_bias")
        let adapter = f.directory + "/adapter"
        let config = try PEFTAdapter.config(directory: adapter)
        XCTAssertTrue(config.useRSLoRA)
        XCTAssertEqual(config.scale, 8 / 2, "rsLoRA scales by alpha / sqrt(r)")
        let model = try Transformer(files: ModelFiles.open(f.directory), fineTuning: .lora(config))
        try PEFTAdapter.load(directory: adapter, into: model)
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("finch-adapter-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: out) }
        try PEFTAdapter.save(model, to: out)
        let again = try Transformer(files: ModelFiles.open(f.directory), fineTuning: .lora(PEFTAdapter.config(directory: out)))
        try PEFTAdapter.load(directory: out, into: again)
        XCTAssertEqual(model.logits(f.batch), again.logits(f.batch))
    }

    /// Phi-3 keeps its joined modules on the way out: an adapter names qkv_proj and gate_up_proj
    /// (as PEFT's does, so peft loads it), a full fine-tune saves the files' own tensors, and
    /// both read back to the same logits.
    func testPhi3SavesItsJoinedModules() throws {
        let f = try Fixture("phi3_longrope")
        let adapter = f.directory + "/adapter"
        let model = try Transformer(files: ModelFiles.open(f.directory), fineTuning: .lora(PEFTAdapter.config(directory: adapter)))
        try PEFTAdapter.load(directory: adapter, into: model)
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("finch-phi3-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: out) }
        try PEFTAdapter.save(model, to: out)
        XCTAssertEqual(try PEFTAdapter.config(directory: out).targets.sorted(), ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"])
        let again = try Transformer(files: ModelFiles.open(f.directory), adapter: out)
        XCTAssertEqual(model.logits(f.batch), again.logits(f.batch))

        let files = try ModelFiles.open(f.directory)
        let full = try Transformer(files: files, fineTuning: .full)
        let saved = full.weightsForSaving()
        XCTAssertEqual(Set(saved.map(\.name)), Set(files.tensors.keys))
        for (name, shape, values) in saved {
            XCTAssertEqual(shape, files.tensors[name]!.shape, name)
            XCTAssertEqual(values, dequantize(files.tensors[name]!), name)
        }
        // The default targets (all seven projections) cover the joined modules; q_proj alone does not.
        XCTAssertTrue(LoRAConfig().targets(module: "model.layers.0.self_attn.qkv_proj"))
        XCTAssertFalse(LoRAConfig(targets: ["q_proj"]).targets(module: "model.layers.0.self_attn.qkv_proj"))
    }

    func testAdapterForAnotherModelIsRejectedWithTheTensorName() throws {
        let llama = try Fixture("llama_tied"), qwen = try Fixture("qwen2_bias")
        let adapter = qwen.directory + "/adapter"
        let model = try Transformer(files: ModelFiles.open(llama.directory), fineTuning: .lora(PEFTAdapter.config(directory: adapter)))
        XCTAssertThrowsError(try PEFTAdapter.load(directory: adapter, into: model)) { error in
            XCTAssertTrue("\(error)".contains("_proj.lora_B.weight"), "\(error)")
            XCTAssertTrue("\(error)".contains("expected"), "\(error)")
        }
    }
}
