import ArgumentParser
import Finch
import Foundation

struct ImatrixCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "imatrix",
        abstract: "Compute an importance matrix (llama.cpp's format) for quantized exports.",
        discussion: """
        As llama.cpp's llama-imatrix: the text is cut into chunks of --chunk-size tokens, and for \
        every projection of the decoder layers the squares of its inputs are summed per column. \
        The file (GGUF, as llama-imatrix writes it) goes to `finch export --format gguf --quant \
        TYPE --imatrix FILE` or to llama-quantize --imatrix.
        """)

    @Option(help: "An HF model folder, a .gguf file, or a repo id in the Hugging Face cache.") var model: String
    @Option(help: "The branch, tag or commit of a --model given as a repo id (default: main).") var revision: String?
    @Option(help: "A PEFT LoRA adapter folder to apply (the matrix of the fine-tuned model).") var adapter: String?
    @Option(help: "A UTF-8 text file to evaluate (llama-imatrix's -f), e.g. text like the model's use.") var data: String
    @Option(help: "The GGUF file to write.") var output: String
    @Option(name: .customLong("chunk-size"), help: "Tokens per chunk (llama-imatrix's -c).") var chunkSize: Int = 512
    @Option(help: "At most this many chunks (default: all the text gives).") var chunks: Int?
    @Flag(help: "Replace an existing output.") var overwrite = false
    @Flag(name: .customLong("allow-nonfinite"), help: "Load a model whose weights hold NaN or infinity (refused by default).")
    var allowNonFinite = false

    func run() throws {
        try runReportingErrors {
            guard chunkSize >= 2 else { throw ValidationError("--chunk-size must be at least 2") }
            if let chunks, chunks < 1 { throw ValidationError("--chunks must be at least 1") }
            if FileManager.default.fileExists(atPath: output) && !overwrite {
                throw ValidationError("\(output) exists; give --overwrite to replace it")
            }
            let model = try HubCache.resolve(self.model, revision: revision)
            let files = try ModelFiles.open(model, allowNonFinite: allowNonFinite)
            let tokenizer = try Tokenizer.load(from: model)
            try tokenizer.checkIDs(below: files.config.vocabSize, model: files.source)
            guard let bytes = FileManager.default.contents(atPath: data) else { throw LoadError.fileNotFound(path: data) }
            guard let text = String(data: bytes, encoding: .utf8) else {
                throw LoadError.malformed(path: data, field: "contents", found: "bytes that are not UTF-8", expected: "UTF-8 text")
            }
            let tokens = try tokenizer.encode(text, addSpecialTokens: true)
            // llama-imatrix starts every chunk with BOS where the tokenizer adds one.
            let withSpecial = try tokenizer.encode("a", addSpecialTokens: true), without = try tokenizer.encode("a", addSpecialTokens: false)
            let addsBOS = tokenizer.bosTokenId != nil && withSpecial.first == tokenizer.bosTokenId && withSpecial.count > without.count
            let transformer = try Transformer(files: files, adapter: adapter)
            let start = Date()
            let result = try ImatrixComputation.compute(model: transformer, tokens: tokens, bos: addsBOS ? tokenizer.bosTokenId : nil,
                                                        chunkSize: chunkSize, maxChunks: chunks,
                                                        dataset: (data as NSString).lastPathComponent, output: output)
            print(String(format: "wrote %@: %d entries from %d chunks of %d tokens (of %d in the text); NLL %.4f, perplexity %.3f; %.1f s",
                         output, result.entries, result.chunks, chunkSize, tokens.count, result.nll, exp(result.nll),
                         Date().timeIntervalSince(start)))
        }
    }
}
