import Finch   // not @testable: this file sees only what a package depending on Finch sees
import XCTest

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
}
