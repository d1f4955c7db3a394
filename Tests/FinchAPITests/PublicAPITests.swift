import Finch   // not @testable: this file sees only what a package depending on Finch sees
import XCTest
import FinchTestSupport

/// Fine-tuning and generating from Swift with the public API alone, as README's "From Swift"
/// shows it: if a name it needs stops being public, this file stops compiling.
final class PublicAPITests: TemporaryDirectoryTestCase {
    struct Greedy: GenerationOptions {
        var maxNewTokens = 8
        var sampling = SamplingSettings()
        var stops: [String] = []
    }

    func testFineTuneThenGenerateThroughThePublicAPI() throws {
        let data = try write("train.jsonl", (0..<8).map { #"{"prompt": "Say hi \#($0)", "completion": " hi there"}"# }.joined(separator: "\n"))
        // From Swift (README): ten lines.
        var config = TrainConfig()
        config.method = "sft"
        config.model = try tinyChatModel()
        config.data = data
        config.output = temporary.appendingPathComponent("run").path
        config.trainer.maxSteps = 3
        try TrainingRun(config: config).run { _ in }
        let files = try ModelFiles.open(config.model)
        let session = ChatSession(model: try Transformer(files: files, adapter: config.output),
                                  tokenizer: try Tokenizer.load(from: config.model), files: files)
        let reply = try session.generate(promptIDs: session.plainPrompt("Say hi 3"), options: Greedy()) { _ in }

        XCTAssertEqual(reply.tokens.count, 8, "greedy generation with no EOS in 8 tokens makes 8")
        XCTAssertTrue(FileManager.default.fileExists(atPath: config.output + "/adapter_model.safetensors"))
    }

    /// The code of Finch.docc/FineTuningFromSwift.md, line for line but the `given` ones
    /// (`ArticleCodeTests` checks that it stays so).
    func testFineTuningFromSwiftArticle() throws {
        let rows = (0..<8).map { #"{"prompt": "Capital \#($0)?", "chosen": " Paris.", "rejected": " I am not sure, maybe Lyon."}"# }
        let pairs = try write("pairs.jsonl", rows.joined(separator: "\n"))
        var config = TrainConfig()
        config.method = "orpo"                        // sft, orpo, dpo, simpo or cpo
        config.model = try tinyChatModel()
        config.data = pairs
        config.output = temporary.appendingPathComponent("orpo").path
        config.loraR = 16
        config.loraAlpha = 32
        config.trainer.batchSize = 4
        config.trainer.gradAccum = 2                  // exact: the same update as a batch of 8
        try TrainingRun(config: config).run { event in
            if case let .step(log) = event { print(log.step, log.metrics["loss"] ?? .nan) }
        }
        let files = try ModelFiles.open(config.model)
        let tokenizer = try Tokenizer.load(from: config.model)
        let session = ChatSession(model: try Transformer(files: files, adapter: config.output),
                                  tokenizer: tokenizer, files: files)
        let prompt = try session.chatPrompt(history: [], user: "What is the capital of France?", system: nil)

        let logged = try String(contentsOfFile: config.output + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(logged.filter { $0.contains("\"step\":1") && $0.contains("\"loss\"") }.count, 1, "one step: 8 pairs, micro-batches of 4 accumulated 2 at a time")
        XCTAssertFalse(prompt.isEmpty)
        XCTAssertTrue(FileManager.default.fileExists(atPath: config.output + "/adapter_config.json"))
    }

    /// The code of Finch.docc/GeneratingFromSwift.md, line for line but the `given` one.
    func testGeneratingFromSwiftArticle() throws {
        let model = try tinyChatModel()
        let files = try ModelFiles.open(model)
        let session = ChatSession(model: try Transformer(files: files), tokenizer: try Tokenizer.load(from: model), files: files)

        struct Sampled: GenerationOptions {
            var maxNewTokens = 24
            var sampling = SamplingSettings(temperature: 0.7, topP: 0.9, seed: 1)
            var stops = ["\n\n"]
        }
        let prompt = try session.chatPrompt(history: [], user: "Name three birds.", system: nil)
        var streamed: [Int] = []
        let result = try session.generate(promptIDs: prompt, options: Sampled()) { token in streamed.append(token) }
        let answer = session.tokenizer.decode(result.tokens, skipSpecialTokens: true)
        print(answer, result.finishReason)   // "eos", "length" or "stop"

        let prompts = try ["Name a bird.", "Name a fish."].map { try session.chatPrompt(history: [], user: $0, system: nil) }
        let answers = try session.generate(promptIDs: prompts, options: Sampled()) { row, token in }
        print(answers.map { session.tokenizer.decode($0.tokens, skipSpecialTokens: true) })

        XCTAssertTrue(streamed.starts(with: result.tokens), "the kept tokens are a prefix of those streamed")
        XCTAssertTrue(["eos", "length", "stop"].contains(result.finishReason))
        XCTAssertEqual(try session.generate(promptIDs: prompt, options: Sampled()) { _ in }.tokens, result.tokens, "the same seed, the same answer")
        XCTAssertEqual(answers.count, 2)
    }
}
