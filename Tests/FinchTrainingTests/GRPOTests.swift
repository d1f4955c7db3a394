import XCTest
import FinchTestSupport
@testable import FinchKernels
@testable import FinchIO
@testable import FinchModels
@testable import FinchTokenizers
@testable import FinchTraining

/// GRPO's exact accumulation, its reward functions (built in and external commands, with their
/// failures) and its settings. Parity with TRL's GRPOTrainer is in FinchParityTests.
final class GRPOTests: XCTestCase {
    var directory = TestSupport.fixtures.appendingPathComponent("parity/llama_tied").path

    /// Four prompts of different lengths.
    static func examples() -> [Example] {
        var rng = FinchRandom(seed: 21)
        return (0..<4).map { i in
            let prompt = [1] + (0..<[3, 6, 2, 4][i]).map { _ in Int32(3 + rng.next() % 120) }
            return Example(id: i, fields: ["prompt_ids": prompt], columns: ["prompt": "\"prompt \(i)\"", "answer": "\"\(i)\""])
        }
    }

    /// Fixed completions of an example: lengths differ, some end with EOS (2), and one of each
    /// group is cut at the max length of 8 (no EOS).
    static func completions(_ e: Example, _ count: Int) -> [[Int32]] {
        var rng = FinchRandom(seed: UInt64(100 + e.id))
        return (0..<count).map { g in
            let truncated = g == (e.id % count)
            let length = truncated ? 8 : 1 + Int(rng.next() % 6)
            return (0..<length).map { _ in Int32(3 + rng.next() % 120) } + (truncated ? [] : [2])
        }
    }

    /// A reward from the completion's tokens, so that groups have a spread.
    struct TokenSumReward: RewardFunction {
        var name: String { "token_sum" }
        func rewards(for inputs: [RewardInput]) throws -> [Double?] {
            inputs.map { Double($0.completionIds.reduce(0) { $0 + Int($1) } % 11) / 5 }
        }
    }

    /// A second reward that abstains on some completions (TRL's None).
    struct ParityReward: RewardFunction {
        var name: String { "parity" }
        func rewards(for inputs: [RewardInput]) throws -> [Double?] {
            inputs.map { $0.completionIds.count % 3 == 0 ? nil : Double($0.completionIds.count % 2) }
        }
    }

    func objective(_ settings: GRPOSettings) throws -> GRPOObjective {
        let objective = try GRPOObjective(settings: settings, rewardFunctions: [TokenSumReward(), ParityReward()], tokenizer: nil,
                                          eosTokenIds: [2], padId: 0, reference: .adaptersOff)
        objective.sampleCompletions = { Self.completions($0, $1) }
        return objective
    }

    /// The parameter change after `steps` SGD steps (lr 1, no clipping) split `batch` x `accum`, and the last step's metrics.
    func run(_ settings: GRPOSettings, batch: Int, accum: Int, steps: Int) throws -> (update: [Float], metrics: [String: Double]) {
        let model = try Transformer(files: ModelFiles.open(directory), fineTuning: .lora(try PEFTAdapter.config(directory: directory + "/adapter")))
        try PEFTAdapter.load(directory: directory + "/adapter", into: model)
        let p = model.parameters!
        let before = Array(UnsafeBufferPointer(start: p.values, count: p.count))
        var trainer = TrainerSettings()
        trainer.batchSize = batch; trainer.gradAccum = accum; trainer.learningRate = 1
        trainer.optimizer = .sgd; trainer.maxGradNorm = 0; trainer.scheduler = .constant; trainer.maxSteps = steps
        let t = try Trainer(model: model, objective: try objective(settings), train: Self.examples(), settings: trainer)
        var metrics: [String: Double] = [:]
        for _ in 0..<steps { metrics = try t.step().metrics }
        let after = Array(UnsafeBufferPointer(start: p.values, count: p.count))
        return (zip(after, before).map { $0 - $1 }, metrics)
    }

    /// Every loss type, with and without the KL term, over one and two iterations: the window's
    /// completions are counted before the first backward, so 2 x 2 and 1 x 4 give 4 x 1's update
    /// and metrics.
    func testAccumulationIsExactForEveryLossType() throws {
        for loss in GRPOObjective.Loss.allCases {
            for (beta, iterations) in [(0.0, 1), (0.04, 2)] {
                var s = GRPOSettings()
                s.numGenerations = 3; s.maxCompletionLength = 8; s.loss = loss; s.beta = beta; s.numIterations = iterations
                s.epsilon = 0.05; s.epsilonHigh = 0.08; s.temperature = 0.9; s.rewardWeights = [1, 0.5]
                s.scaleRewards = loss == .drGRPO ? .none : loss == .bnpo ? .batch : .group
                s.maskTruncatedCompletions = loss == .bnpo
                let label = "\(loss.rawValue) beta \(beta) x\(iterations)"
                let full = try run(s, batch: 4, accum: 1, steps: iterations)
                XCTAssertGreaterThan(full.update.map(abs).max()!, 0, "\(label): the step changed nothing")
                XCTAssertNotNil(full.metrics["clip_ratio/region_mean"], label)
                if iterations == 1 {
                    XCTAssertEqual(full.metrics["completions/clipped_ratio"] ?? 0, 1.0 / 3, accuracy: 1e-12, label)
                    XCTAssertNotNil(full.metrics["rewards/parity/mean"], label)
                } else {
                    // The second step reuses the completions and generates nothing: no reward metrics (as TRL).
                    XCTAssertNil(full.metrics["reward"], label)
                    XCTAssertNotNil(full.metrics["kl"], label)
                }
                for (batch, accum) in [(2, 2), (1, 4)] {
                    let split = try run(s, batch: batch, accum: accum, steps: iterations)
                    let gap = TestSupport.relativeL2(split.update, full.update)
                    XCTAssertLessThan(gap, 1e-5, "\(label) \(batch)x\(accum): update differs from 4x1 by \(gap)")
                    for (key, value) in full.metrics where !["tokens_per_second", "grad_norm"].contains(key) && !key.hasPrefix("time/") {
                        XCTAssertEqual(split.metrics[key] ?? .nan, value, accuracy: 1e-5 * max(abs(value), 1e-3), "\(label) \(batch)x\(accum) \(key)")
                    }
                }
            }
        }
    }

    /// A mixture of experts (Qwen3-MoE's fixture, its load-balancing loss at 0.1, LoRA on the
    /// experts): the trainer counts the router's choices on the window's sampled completions
    /// before the first backward, so 2 x 2 and 1 x 4 give 4 x 1's update, loss and aux_loss.
    func testAccumulationIsExactWithALoadBalancingLoss() throws {
        directory = TestSupport.fixtures.appendingPathComponent("parity/qwen3_moe").path
        var s = GRPOSettings()
        s.numGenerations = 3; s.maxCompletionLength = 8; s.beta = 0.04; s.rewardWeights = [1, 0.5]
        let full = try run(s, batch: 4, accum: 1, steps: 1)
        XCTAssertGreaterThan(try XCTUnwrap(full.metrics["aux_loss"]), 1)
        for (batch, accum) in [(2, 2), (1, 4)] {
            let split = try run(s, batch: batch, accum: accum, steps: 1)
            XCTAssertLessThan(TestSupport.relativeL2(split.update, full.update), 1e-5, "\(batch)x\(accum)")
            for key in ["loss", "aux_loss", "kl"] {
                XCTAssertEqual(split.metrics[key] ?? .nan, full.metrics[key]!, accuracy: 1e-5 * max(abs(full.metrics[key]!), 1e-3), "\(batch)x\(accum) \(key)")
            }
        }
    }

    /// With num_iterations 2 the second step's ratios are taken against the generation-time
    /// log-probs, so small clip ranges clip some tokens there (and none on the first step).
    func testSecondIterationClipsAgainstTheSamplingPolicy() throws {
        var s = GRPOSettings()
        s.numGenerations = 3; s.maxCompletionLength = 8; s.numIterations = 2; s.epsilon = 0.01; s.epsilonHigh = 0.01
        let first = try run(s, batch: 4, accum: 1, steps: 1).metrics
        XCTAssertEqual(first["clip_ratio/region_mean"], 0)
        let second = try run(s, batch: 4, accum: 1, steps: 2).metrics
        XCTAssertGreaterThan(second["clip_ratio/region_mean"] ?? 0, 0)
        XCTAssertLessThan(second["clip_ratio/region_mean"] ?? 1, 1)
    }

    func testAGroupOfOneCompletionIsRefused() {
        var s = GRPOSettings()
        s.numGenerations = 1
        XCTAssertThrowsError(try objective(s)) { XCTAssertTrue("\($0)".contains("num_generations is 1, expected at least 2"), "\($0)") }
        XCTAssertThrowsError(try TrainConfig(values: ["model": "m", "data": "d", "output": "o", "method": "grpo", "num_generations": "1",
                                                      "reward_function": "exact_match"])) {
            XCTAssertTrue("\($0)".contains("num_generations: found '1'"), "\($0)")
        }
        XCTAssertThrowsError(try TrainConfig(values: ["model": "m", "data": "d", "output": "o", "method": "grpo"])) {
            XCTAssertTrue("\($0)".contains("reward_function: found 'none'"), "\($0)")
        }
        XCTAssertThrowsError(try TrainConfig(values: ["model": "m", "data": "d", "output": "o", "method": "grpo",
                                                      "reward_function": "exact_match\nformat:[unclosed"])) {
            XCTAssertTrue("\($0)".contains("not a valid regular expression"), "\($0)")
        }
        XCTAssertThrowsError(try TrainConfig(values: ["model": "m", "data": "d", "output": "o", "method": "grpo",
                                                      "reward_function": "exact_match", "reward_weights": "1,2"])) {
            XCTAssertTrue("\($0)".contains("reward_weights: found '2 weights'"), "\($0)")
        }
    }

    func testGRPODefaultsAreTRLs() throws {
        let c = try TrainConfig(values: ["model": "m", "data": "d", "output": "o", "method": "grpo", "reward_function": "exact_match\nformat"])
        let s = c.grpoSettings
        XCTAssertEqual(c.beta, 0)
        XCTAssertEqual(s.loss, .dapo)
        XCTAssertEqual(s.scaleRewards, .group)
        XCTAssertEqual(s.numGenerations, 8)
        XCTAssertEqual(s.epsilon, 0.2)
        XCTAssertNil(s.epsilonHigh)
        XCTAssertEqual(c.rewardFunctions, ["exact_match", "format"])
        let kl = try TrainConfig(values: ["model": "m", "data": "d", "output": "o", "method": "grpo", "reward_function": "format", "beta": "0.04",
                                          "loss_type": "bnpo"])
        XCTAssertEqual(kl.grpoSettings.beta, 0.04)
        XCTAssertEqual(kl.grpoSettings.loss, .bnpo)
    }

    // MARK: Rewards

    func testFinalAnswerExtraction() {
        let cases: [(String, String?)] = [
            ("so the total is \\boxed{1,250} apples", "1,250"),
            ("<think>3+4</think><answer> 7 </answer>", " 7 "),
            ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
            ("The answer is 12 eggs.\nThanks", "12 eggs."),
            ("Answer: -3", "-3"),
            ("First 3 then 4, finally 19.5 and done", "19.5"),
            ("no numbers here", nil),
        ]
        for (text, expected) in cases { XCTAssertEqual(ExactMatchReward.finalAnswer(in: text), expected, text) }
    }

    func testExactMatch() throws {
        let reward = ExactMatchReward(column: "answer")
        let inputs = [("The answer is 1,000.", "\"1000\""), ("\\boxed{42}", "42"), ("Answer: 41", "42"), ("#### seven", "\"Seven\""),
                      ("it is 5", "\"Natalia sold 2 + 3 = 5\\n#### 5\""), ("nothing", "\"3\"")]
            .map { RewardInput(prompt: "\"q\"", completion: $0.0, columns: ["answer": $0.1]) }
        XCTAssertEqual(try reward.rewards(for: inputs), [1, 1, 0, 1, 1, 0])
        XCTAssertEqual(try reward.rewards(for: [RewardInput(prompt: "\"q\"", completion: "5")]), [nil], "a row without the column is not scored")
    }

    func testFormatAndLengthPenalty() throws {
        let format = try FormatReward(pattern: "^<think>.*?</think>\\s*<answer>.*?</answer>$")
        let texts = ["<think>a\nb</think>\n<answer>4</answer>", "<answer>4</answer>", "<think>x</think><answer>4</answer> extra"]
        XCTAssertEqual(try format.rewards(for: texts.map { RewardInput(prompt: "\"q\"", completion: $0) }), [1, 0, 0])
        XCTAssertThrowsError(try FormatReward(pattern: "(")) { XCTAssertTrue("\($0)".contains("not a valid regular expression"), "\($0)") }
        let penalty = LengthPenaltyReward(maxLength: 10, cache: 4)
        let lengths = [3, 6, 7, 9, 10]
        let values = try penalty.rewards(for: lengths.map { RewardInput(prompt: "\"q\"", completion: "", completionIds: [Int32](repeating: 5, count: $0)) })
        XCTAssertEqual(values.map { $0! }, [0, 0, -0.25, -0.75, -1])
        XCTAssertThrowsError(try BuiltInRewards.named("length_penalty:0", maxCompletionLength: 10))
        XCTAssertThrowsError(try BuiltInRewards.named("accuracy", maxCompletionLength: 10)) {
            XCTAssertTrue("\($0)".contains("unknown reward function 'accuracy'; built in: exact_match, format, length_penalty"), "\($0)")
        }
    }

    let inputs = [RewardInput(prompt: "\"What is 2+2?\"", completion: "4", completionIds: [7, 2], columns: ["answer": "\"4\"", "prompt": "\"What is 2+2?\""]),
                  RewardInput(prompt: "[{\"content\":\"Hi\",\"role\":\"user\"}]", completion: "Hello \"you\"", columns: ["level": "3"], conversational: true)]

    /// The command reads one JSON object per completion, with the row's fields, and prints a number per line.
    func testRewardCommandReadsJSONLinesAndPrintsNumbers() throws {
        let seen = FileManager.default.temporaryDirectory.appendingPathComponent("finch-reward-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: seen) }
        let reward = CommandReward(command: "tee \(seen) | awk '{ print NR * 0.5 }'")
        XCTAssertEqual(try reward.rewards(for: inputs), [0.5, 1.0])
        XCTAssertEqual(reward.name, "tee")
        let lines = try String(contentsOfFile: seen, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 2)
        let first = try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as! [String: Any]
        XCTAssertEqual(first["prompt"] as? String, "What is 2+2?")
        XCTAssertEqual(first["completion"] as? String, "4")
        XCTAssertEqual(first["answer"] as? String, "4")
        let second = try JSONSerialization.jsonObject(with: Data(lines[1].utf8)) as! [String: Any]
        XCTAssertEqual((second["completion"] as? [[String: String]])?.first?["content"], "Hello \"you\"")
        XCTAssertEqual(second["level"] as? Int, 3)
        XCTAssertEqual(try CommandReward(command: "cat > /dev/null; printf 'null\\n2\\n'").rewards(for: inputs), [nil, 2])
    }

    func testRewardCommandFailuresAreClearErrors() {
        XCTAssertThrowsError(try CommandReward(command: "cat > /dev/null; echo 'no reward model here' >&2; exit 3").rewards(for: inputs)) {
            XCTAssertEqual($0 as? RewardError, .commandFailed(command: "cat > /dev/null; echo 'no reward model here' >&2; exit 3",
                                                              status: "exited with status 3", stderr: "no reward model here"))
        }
        XCTAssertThrowsError(try CommandReward(command: "cat > /dev/null; echo 1; echo oops").rewards(for: inputs)) {
            XCTAssertTrue("\($0)".contains("output line 2 is 'oops', expected a number"), "\($0)")
        }
        XCTAssertThrowsError(try CommandReward(command: "cat > /dev/null; echo 1").rewards(for: inputs)) {
            XCTAssertTrue("\($0)".contains("printed 1 rewards for 2 completions"), "\($0)")
        }
        let start = Date()
        XCTAssertThrowsError(try CommandReward(command: "echo started >&2; sleep 30; echo 1; echo 1", timeout: 0.5).rewards(for: inputs)) {
            XCTAssertTrue("\($0)".contains("did not finish within 0.5 s"), "\($0)")
            XCTAssertTrue("\($0)".contains("started"), "\($0)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 5, "the timed-out command (and its sleep) was not stopped")
        // A command that ignores its input entirely still works (the unread input is dropped).
        XCTAssertEqual(try CommandReward(command: "echo 1; echo 0").rewards(for: inputs), [1, 0])
    }

    // MARK: Data

    func testPromptOnlyRows() throws {
        let tokenizer = try Tokenizer.load(from: TestSupport.fixtures.appendingPathComponent("trainers/tokenizer").path)
        let rows = [DataFile.Row(location: "d.jsonl:1", fields: ["prompt": "Q: 2+2?\nA:", "answer": 4]),
                    DataFile.Row(location: "d.jsonl:2", fields: ["prompt": [["role": "user", "content": "Hi"]], "answer": "x"])]
        let (examples, _) = try TrainingData.examples(rows: rows, method: "grpo", format: nil, tokenizer: tokenizer, maxLength: 64)
        XCTAssertEqual(examples[0]["prompt_ids"].map(Int.init), try tokenizer.encode("Q: 2+2?\nA:", addSpecialTokens: true))
        XCTAssertEqual(examples[0].columns["answer"], "4")
        XCTAssertEqual(examples[1].columns["prompt"], "[{\"content\":\"Hi\",\"role\":\"user\"}]")
        let rendered = try tokenizer.encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", addSpecialTokens: false)
        XCTAssertEqual(examples[1]["prompt_ids"].map(Int.init), rendered)
        XCTAssertThrowsError(try TrainingData.examples(rows: [DataFile.Row(location: "d.jsonl:3", fields: ["question": "2+2?"])], method: "grpo",
                                                       format: nil, tokenizer: tokenizer, maxLength: 64)) {
            XCTAssertTrue("\($0)".hasPrefix("d.jsonl:3: field 'prompt': found nothing (fields: question)"), "\($0)")
        }
    }
}
