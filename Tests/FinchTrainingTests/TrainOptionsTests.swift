@testable import FinchTraining
import Foundation
import XCTest
import FinchTestSupport

/// `finch train`'s options are declared once (`TrainConfig.options`): flags, YAML keys, help
/// and README's table come from that list.
final class TrainOptionsTests: XCTestCase {
    func testEveryOptionSetsItsPropertyFromText() throws {
        let base = ["model": "m", "data": "d", "output": "o"]
        let samples: [String: String] = ["method": "dpo", "max_length": "77", "beta": "0.25", "loss_type": "robust", "label_smoothing": "0.1",
                                         "simpo_gamma": "0.7", "cpo_alpha": "0.5", "lora_r": "4", "lora_alpha": "8", "lora_dropout": "0.1",
                                         "lora_targets": "q_proj,v_proj", "format": "preference", "eval_data": "e", "adapter": "a",
                                         "nan_policy": "skip-step", "precision": "fp32", "generate_during_eval": "2", "batch_size": "3",
                                         "grad_accum": "5", "epochs": "2", "max_steps": "9", "lr": "0.001", "optimizer": "sgd",
                                         "weight_decay": "0.01", "lr_scheduler": "cosine", "warmup_steps": "4", "max_grad_norm": "0.5",
                                         "seed": "7", "logging_steps": "3", "eval_steps": "6", "save_steps": "8", "collective_timeout": "60",
                                         "desirable_weight": "1.33", "undesirable_weight": "0.8", "revision": "v2",
                                         "field": "prompt=question,completion=answer", "validation_split": "0.1",
                                         "num_generations": "4", "max_completion_length": "64", "temperature": "0.7", "top_p": "0.9",
                                         "top_k": "20", "epsilon": "0.1", "epsilon_high": "0.28", "router_aux_loss_coef": "0.01", "num_iterations": "2",
                                         "scale_rewards": "batch", "reward_function": "exact_match\nformat", "reward_command": "python3 r.py",
                                         "reward_weights": "1,0.5", "reward_timeout": "5", "report_to": "jsonl,tensorboard", "tools": "tools.json"]
        let defaults = try TrainConfig(values: base)
        for option in TrainConfig.options where !option.required {
            let value = option.kind == .flag ? "\(!(option.defaultValue == "true"))" : try XCTUnwrap(samples[option.key], "no sample value for \(option.key)")
            let config = try TrainConfig(values: base.merging([option.key: value]) { $1 })
            XCTAssertNotEqual(config, defaults, "\(option.flag) \(value) changed nothing")
        }
        XCTAssertEqual(Set(TrainConfig.keys).count, TrainConfig.options.count, "a key declared twice")
    }

    func testDefaultsInHelpAreTheConfigsDefaults() throws {
        let option = try XCTUnwrap(TrainConfig.options.first { $0.key == "lr" })
        XCTAssertEqual(option.defaultValue, "\(Double(TrainerSettings().learningRate))")
        XCTAssertTrue(TrainConfig.optionsHelp.contains("--max-length <int> (default: 1024)"), TrainConfig.optionsHelp)
        XCTAssertTrue(TrainConfig.optionsHelp.contains("--loss-type sigmoid|ipo|hinge|robust|kto|apo_zero_unpaired|grpo|bnpo|dr_grpo|dapo (default: sigmoid)"))
    }

    func testReadmeTableIsCurrent() throws {
        let readme = try String(contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("README.md"), encoding: .utf8)
        let begin = "<!-- train-options: begin -->\n", end = "<!-- train-options: end -->"
        let start = try XCTUnwrap(readme.range(of: begin)), stop = try XCTUnwrap(readme.range(of: end))
        let table = String(readme[start.upperBound..<stop.lowerBound]).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(table, TrainConfig.optionsMarkdown, "README's train options table is out of date; replace it with:\n\(TrainConfig.optionsMarkdown)")
    }
}
