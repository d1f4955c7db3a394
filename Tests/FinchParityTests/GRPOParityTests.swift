import XCTest
import FinchTestSupport
@testable import FinchKernels
@testable import FinchIO
@testable import FinchTokenizers
@testable import FinchModels
@testable import FinchTraining

/// GRPO against TRL 1.16's GRPOTrainer with the completions fixed (reference/make_grpo_fixtures.py
/// patches TRL's generation step to hand out recorded completions; Finch's `sampleCompletions`
/// hands out the same): for every loss type, with and without the KL term, over one and two
/// iterations, with batch and no reward scaling, masked truncated completions, a sampling
/// temperature and chat prompts. Each completion's advantage, each step's loss and every metric
/// TRL logged within 1e-5 relative, each LoRA parameter's update (SGD, so the gradient) within
/// 1e-4 relative L2.
final class GRPOParityTests: XCTestCase {
    static let root = TestSupport.fixtures.appendingPathComponent("trainers")

    /// The recorded reward of each function for each (prompt index, completion ids).
    struct RecordedReward: RewardFunction {
        let name: String
        let table: [String: Double]
        static func key(_ answer: String?, _ ids: [Int32]) -> String { "\(answer ?? "")|\(ids)" }
        func rewards(for inputs: [RewardInput]) throws -> [Double?] {
            try inputs.map { input in
                let key = Self.key(input.columns["answer"], input.completionIds)
                guard let value = table[key] else { throw RewardError.badArgument(function: name, argument: key, reason: "no recorded reward") }
                return value
            }
        }
    }

    func check(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.root.appendingPathComponent("\(name).json"))) as! [String: Any]
        let tensors = try SafeTensors.read(path: Self.root.appendingPathComponent("\(name).safetensors").path)
        let config = json["config"] as! [String: Any]
        func number(_ key: String) -> Double? { (config[key] as? NSNumber)?.doubleValue }

        let tokenizer = try Tokenizer.load(from: Self.root.appendingPathComponent("tokenizer").path)
        let rows = (json["rows"] as! [[String: Any]]).enumerated().map { DataFile.Row(location: "\(name):\($0.offset + 1)", fields: $0.element) }
        let (examples, _) = try TrainingData.examples(rows: rows, method: "grpo", format: nil, tokenizer: tokenizer, maxLength: 1024)
        let prompts = json["prompts"] as! [[String: Any]]
        var byExample: [Int: [[Int32]]] = [:]
        var tables: [String: [String: Double]] = [:]
        for (i, prompt) in prompts.enumerated() {
            XCTAssertEqual(examples[i]["prompt_ids"].map(Int.init), prompt["prompt_ids"] as? [Int], "\(name): prompt \(i) tokenized as TRL does",
                           file: file, line: line)
            let completions = prompt["completions"] as! [[String: Any]]
            byExample[examples[i].id] = completions.map { ($0["ids"] as! [Int]).map(Int32.init) }
            for c in completions {
                for (function, value) in c["rewards"] as! [String: Any] {
                    tables[function, default: [:]][RecordedReward.key(examples[i].columns["answer"], (c["ids"] as! [Int]).map(Int32.init))] =
                        (value as! NSNumber).doubleValue
                }
            }
        }

        var s = GRPOSettings()
        s.loss = GRPOObjective.Loss(rawValue: config["loss_type"] as! String)!
        s.beta = number("beta")!
        s.epsilon = number("epsilon")!
        s.epsilonHigh = number("epsilon_high")
        s.numIterations = Int(number("num_iterations")!)
        s.scaleRewards = GRPOObjective.RewardScaling(rawValue: config["scale_rewards"] as! String)!
        s.temperature = Float(number("temperature")!)
        s.maskTruncatedCompletions = config["mask_truncated_completions"] as! Bool
        s.maxCompletionLength = Int(number("max_completion_length")!)
        s.numGenerations = Int(number("num_generations")!)
        s.rewardWeights = (config["reward_weights"] as! [NSNumber]).map(\.doubleValue)
        s.biasCorrectedKL = config["use_bias_correction_kl"] as? Bool ?? true
        let functions = json["reward_functions"] as! [String]
        let objective = try GRPOObjective(settings: s, rewardFunctions: functions.map { RecordedReward(name: $0, table: tables[$0] ?? [:]) },
                                          tokenizer: tokenizer, eosTokenIds: Set(json["eos_token_ids_trl"] as! [Int]),
                                          padId: Int32(json["pad_token_id"] as! Int), reference: .adaptersOff)
        objective.sampleCompletions = { example, count in
            let completions = byExample[example.id]!
            XCTAssertEqual(completions.count, count)
            return completions
        }

        let lora = json["lora"] as! [String: Any]
        let model = try Transformer(files: ModelFiles.open(Self.root.appendingPathComponent("model").path),
                                    fineTuning: .lora(LoRAConfig(rank: lora["r"] as! Int, alpha: Float((lora["lora_alpha"] as! NSNumber).doubleValue),
                                                                 dropout: 0, targets: LoRAConfig.allProjections)))
        let p = model.parameters!
        for entry in p.entries {
            let initial = dequantize(try XCTUnwrap(tensors["init." + entry.name], "\(name): no initial value of \(entry.name)"))
            p.value(entry.name)!.update(from: initial, count: entry.count)
        }
        var settings = TrainerSettings()
        settings.batchSize = prompts.count; settings.gradAccum = 1; settings.learningRate = Float(number("learning_rate")!)
        settings.optimizer = .sgd; settings.maxGradNorm = 0; settings.scheduler = .constant
        let steps = json["steps"] as! [[String: Any]]
        settings.maxSteps = steps.count
        let trainer = try Trainer(model: model, objective: objective, train: examples, settings: settings)

        for step in steps {
            let k = step["step"] as! Int
            let before = Array(UnsafeBufferPointer(start: p.values, count: p.count))
            let log = try trainer.step()
            if k == 1 {
                // Each completion's advantage, as TRL computed it (by prompt and completion ids).
                for (i, prompt) in prompts.enumerated() {
                    let rollouts = try XCTUnwrap(objective.training.byExample[examples[i].id])
                    for (c, r) in zip(prompt["completions"] as! [[String: Any]], rollouts) {
                        XCTAssertEqual(r.completion.map(Int.init), c["ids"] as? [Int])
                        let expected = (c["advantage"] as! NSNumber).doubleValue
                        XCTAssertEqual(objective.advantage(r, window: objective.lastWindow), expected, accuracy: max(1e-5 * abs(expected), 1e-6),
                                       "\(name) prompt \(i) advantage", file: file, line: line)
                    }
                }
            }
            let expected = (step["log_history"] as! [String: Any]).compactMapValues { ($0 as? NSNumber)?.doubleValue }
            for (key, value) in expected where key != "step" {
                guard let got = key == "epoch" ? log.epoch : log.metrics[key] else {
                    XCTFail("\(name) step \(k): Finch does not log \(key)", file: file, line: line); continue
                }
                XCTAssertEqual(got, value, accuracy: max(1e-5 * abs(value), 1e-6), "\(name) step \(k) \(key)", file: file, line: line)
            }
            let after = Array(UnsafeBufferPointer(start: p.values, count: p.count))
            for entry in p.entries {
                let update = (entry.offset..<entry.offset + entry.count).map { after[$0] - before[$0] }
                let reference = dequantize(try XCTUnwrap(tensors["step\(k).update.\(entry.name)"], "\(name): no step \(k) update of \(entry.name)"))
                XCTAssertLessThan(TestSupport.relativeL2(update, reference), 1e-4, "\(name) step \(k) update of \(entry.name)", file: file, line: line)
            }
        }
    }

    func cases(_ loss: String) -> [String] {
        ["b0_it1", "b004_it1", "b0_it2", "b004_it2"].map { "grpo_\(loss)_\($0)" }
    }

    func testGRPO() throws { for name in cases("grpo") { try check(name) } }
    func testBNPO() throws { for name in cases("bnpo") { try check(name) } }
    func testDrGRPO() throws { for name in cases("dr_grpo") { try check(name) } }
    func testDAPO() throws { for name in cases("dapo") { try check(name) } }

    /// Batch and no reward scaling, masked truncated completions, a sampling temperature, and
    /// prompts given as conversations (rendered with the chat template and a generation prompt).
    func testVariants() throws {
        for name in ["grpo_scale_batch", "grpo_scale_none", "grpo_mask_truncated", "grpo_temperature", "grpo_chat"] { try check(name) }
    }
}
