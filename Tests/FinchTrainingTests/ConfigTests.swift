import XCTest
import FinchTestSupport
@testable import FinchKernels
@testable import FinchIO
@testable import FinchTokenizers
@testable import FinchModels
@testable import FinchGeneration
@testable import FinchDistributed
@testable import FinchTraining

final class ConfigTests: XCTestCase {
    func testHuggingFaceJSONRoundTrips() throws {
        for config in [ModelConfig.smolLM2_135M, ModelConfig.llama32_1B,
                       ModelConfig(modelType: "qwen2", hiddenSize: 64, intermediateSize: 96, layerCount: 2, headCount: 8, kvHeadCount: 2,
                                   vocabSize: 128, attentionBias: true, eosTokenIds: [3, 4])] {
            let json = config.huggingFaceJSON()
            let data = try JSONSerialization.data(withJSONObject: json)
            let parsed = try ModelConfig(json: JSONSerialization.jsonObject(with: data) as! [String: Any], path: "config.json")
            XCTAssertEqual(parsed, config)
        }
    }

    func testTrainConfigNamesWhatIsMissingOrWrong() {
        XCTAssertThrowsError(try TrainConfig(values: ["model": "m", "data": "d"])) {
            XCTAssertEqual("\($0)", "missing required option --output (or `output:` in the YAML config)")
        }
        XCTAssertThrowsError(try TrainConfig(values: ["model": "m", "data": "d", "output": "o", "lr": "fast"], sources: ["lr": "train.yaml"])) {
            XCTAssertEqual("\($0)", "train.yaml: lr: found 'fast', expected a number")
        }
        XCTAssertThrowsError(try TrainConfig(values: ["model": "m", "data": "d", "output": "o", "method": "ppo"])) {
            XCTAssertTrue("\($0)".contains("one of sft, orpo, dpo, simpo, cpo"), "\($0)")
        }
        XCTAssertThrowsError(try TrainConfig(values: ["model": "m", "data": "d", "output": "o", "lora_targets": "q_proj,fc1"])) {
            XCTAssertTrue("\($0)".contains("fc1"), "\($0)")
        }
        // Sizes that would overflow or exhaust memory later, and a learning rate past float range
        // (issue 18: SIGSEGV in microBatches, an allocation fatal error, an internal EncodingError).
        let base = ["model": "m", "data": "d", "output": "o"]
        for (key, value, expected) in [("grad_accum", "4611686018427387904", "at most 65536"), ("lora_r", "1000000000", "at most 16384"),
                                       ("lr", "1.0e39", "a finite number >= 0"), ("batch_size", "0", "a positive number")] {
            XCTAssertThrowsError(try TrainConfig(values: base.merging([key: value]) { $1 }, sources: [key: "train.yaml"])) {
                XCTAssertTrue("\($0)".hasPrefix("train.yaml: \(key): found '") && "\($0)".contains(expected), "\($0)")
            }
        }
    }

    func testTrainConfigParsesEveryKind() throws {
        let c = try TrainConfig(values: ["model": "m", "data": "d", "output": "o", "method": "orpo", "beta": "0.2", "lr": "1e-4",
                                         "lora_targets": "q_proj, v_proj", "full": "false", "max_grad_norm": "0", "seed": "7",
                                         "optimizer": "sgd", "lr_scheduler": "cosine"])
        let objective = try ObjectiveRegistry.method(named: c.method).objective(for: c, context: ObjectiveContext(padId: 0, frozenModel: { throw CancellationError() }))
        XCTAssertEqual((objective as? PreferenceObjective)?.loss, .orpo(beta: 0.2))
        XCTAssertThrowsError(try ObjectiveRegistry.method(named: "rloo")) {
            XCTAssertEqual("\($0)".contains("sft, orpo, dpo, simpo, cpo, kto, grpo"), true, "\($0)")
        }
        XCTAssertEqual(c.trainer.learningRate, 1e-4)
        XCTAssertEqual(c.loraTargets, ["q_proj", "v_proj"])
        XCTAssertEqual(c.trainer.maxGradNorm, 0)
        XCTAssertEqual(c.trainer.seed, 7)
        XCTAssertEqual(c.trainer.optimizer, .sgd)
        XCTAssertEqual(c.trainer.scheduler, .cosine)
    }
}
