import ArgumentParser
import Finch
import Foundation

struct PerplexityCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "perplexity",
        abstract: "Mean negative log-likelihood and perplexity of a model (plus adapter) on data.")

    @Option(help: "An HF model folder, a .gguf file, or a repo id in the Hugging Face cache.") var model: String
    @Option(help: "The branch, tag or commit of a --model given as a repo id (default: main).") var revision: String?
    @Option(help: "A PEFT LoRA adapter folder to apply.") var adapter: String?
    @Flag(name: .customLong("allow-nonfinite"), help: "Load a model whose weights hold NaN or infinity (refused by default).")
    var allowNonFinite = false
    @Option(help: "Text data: .txt (one sequence per non-empty line) or .jsonl with a \"text\" field.") var data: String?
    @Option(name: .customLong("token-ids"), help: "JSONL, one JSON array of token ids per line (expert option, skips tokenization).")
    var tokenIDs: String?
    @Option(name: .customLong("max-length"), help: "Longest window scored at once; longer sequences are cut into windows.")
    var maxLength: Int = 2048
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        try runReportingErrors {
            guard maxLength >= 2 else { throw ValidationError("--max-length must be at least 2") }
            let model = try HubCache.resolve(self.model, revision: revision)
            let files = try ModelFiles.open(model, allowNonFinite: allowNonFinite)
            let sequences: [[Int]]
            if let tokenIDs {
                sequences = try Perplexity.readTokenIDs(path: tokenIDs, vocabSize: files.config.vocabSize)
            } else if let data {
                let tokenizer = try Tokenizer.load(from: model)
                try tokenizer.checkIDs(below: files.config.vocabSize, model: files.source)
                sequences = try Perplexity.readTexts(path: data).map { try tokenizer.encode($0, addSpecialTokens: true) }
            } else {
                throw ValidationError("give the data to score with --data FILE or --token-ids FILE")
            }
            let transformer = try Transformer(files: files, adapter: adapter)
            let result = Perplexity.evaluate(model: transformer, sequences: sequences, maxLength: maxLength)
            if json {
                let object: [String: Any] = ["tokens": result.tokens, "nll": result.nll, "perplexity": result.perplexity]
                let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } else {
                print(String(format: "tokens %d  nll %.6f  perplexity %.4f", result.tokens, result.nll, result.perplexity))
            }
        }
    }
}
