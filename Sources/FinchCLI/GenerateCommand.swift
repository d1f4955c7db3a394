import ArgumentParser
import Finch
import Foundation

/// Options shared by `finch generate` and `finch chat`.
struct ModelOptions: ParsableArguments {
    @Option(help: "An HF model folder, a .gguf file, or a repo id in the Hugging Face cache.") var model: String
    @Option(help: "The branch, tag or commit of a --model given as a repo id (default: main).") var revision: String?
    @Option(help: "A PEFT LoRA adapter folder, applied without merging.") var adapter: String?
    @Flag(name: .customLong("allow-nonfinite"), help: "Load a model whose weights hold NaN or infinity (refused by default).")
    var allowNonFinite = false
    @Option(name: .customLong("max-new-tokens")) var maxNewTokens = 256
    @Option var temperature: Float = 0
    @Option(name: .customLong("top-p")) var topP: Float = 1
    @Option(name: .customLong("top-k")) var topK = 0
    @Option(name: .customLong("min-p")) var minP: Float = 0
    @Option(name: .customLong("repetition-penalty")) var repetitionPenalty: Float = 1
    @Option(name: .customLong("presence-penalty")) var presencePenalty: Float = 0
    @Option(name: .customLong("frequency-penalty")) var frequencyPenalty: Float = 0
    @Option var seed: UInt64 = 0
    @Option(name: .customLong("stop"), help: "Stop when the output contains this text (repeatable).") var stops: [String] = []
    @Option(help: "A system message (with --chat).") var system: String?
    @Option(help: "A JSON file: the list of tool (function) schemas the chat template offers the model (with --chat), as apply_chat_template's tools.")
    var tools: String?
    @Flag(name: .customLong("int8-activations"), help: "Multiply quantized weights by activations rounded to 8 bits (llama.cpp's arithmetic): faster decoding, logits ~1e-2 from exact, so answers can change.")
    var int8Activations = false

    var sampling: SamplingSettings {
        SamplingSettings(temperature: temperature, topK: topK, topP: topP, minP: minP, repetitionPenalty: repetitionPenalty,
                         presencePenalty: presencePenalty, frequencyPenalty: frequencyPenalty, seed: seed)
    }

    func validate() throws {
        guard maxNewTokens >= 0 else { throw ValidationError("--max-new-tokens must be 0 or more") }
        guard temperature >= 0 else { throw ValidationError("--temperature must be 0 (greedy) or more") }
        guard topP > 0 && topP <= 1 else { throw ValidationError("--top-p must be in (0, 1]") }
    }

    /// The tools of `--tools`, read once, as the template's `tools` variable.
    func toolSchemas() throws -> JinjaValue? {
        guard let tools else { return nil }
        let value = try TemplateCommand.json(tools)
        guard case .array = value else {
            throw LoadError.malformed(path: tools, field: "top level", found: "not a list", expected: "a list of tool schemas")
        }
        return value
    }

    func load() throws -> (ChatSession) {
        let path = try HubCache.resolve(model, revision: revision)
        let files = try ModelFiles.open(path, allowNonFinite: allowNonFinite)
        let tokenizer = try Tokenizer.load(from: path)
        try tokenizer.checkIDs(below: files.config.vocabSize, model: files.source)
        let model = try Transformer(files: files, adapter: adapter)
        model.int8Activations = int8Activations
        return ChatSession(model: model, tokenizer: tokenizer, files: files)
    }
}

struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "generate", abstract: "Continue a prompt, or answer it with --chat.")

    @OptionGroup var options: ModelOptions
    @Option(help: "The prompt text.") var prompt: String?
    @Option(help: "JSONL prompts: one {\"prompt\": ...} object (or a JSON string) per line.") var prompts: String?
    @Flag(help: "Apply the model's chat template (the prompt is a user message).") var chat = false
    @Flag(help: "One JSON object per prompt: text, token counts and timings.") var json = false
    @Option(name: .customLong("batch-size"), help: "Prompts decoded together, left-padded (output is printed per prompt when its batch ends).")
    var batchSize = 1

    func validate() throws {
        guard batchSize >= 1 else { throw ValidationError("--batch-size must be 1 or more") }
    }

    func run() throws {
        try runReportingErrors {
            guard (prompt == nil) != (prompts == nil) else { throw ValidationError("give exactly one of --prompt or --prompts") }
            let session = try options.load()
            let inputs = try prompt.map { [$0] } ?? Self.readPrompts(prompts!)
            if options.tools != nil && !chat { throw ValidationError("--tools goes with --chat (the chat template renders them)") }
            let tools = try options.toolSchemas()
            var start = 0
            while start < inputs.count {
                let texts = Array(inputs[start..<min(start + batchSize, inputs.count)])
                start += texts.count
                let ids = try texts.map { text in
                    try chat ? session.chatPrompt(history: [], user: text, system: options.system, tools: tools) : session.plainPrompt(text)
                }
                // One prompt at a time streams its text as it comes; a batch prints each answer at its end.
                let streaming = !json && texts.count == 1
                var stream = StreamingDecoder(tokenizer: session.tokenizer, skipSpecialTokens: true)
                let results = try session.generate(promptIDs: ids, options: options) { _, token in
                    if streaming { print(stream.append(token), terminator: ""); flushOutput() }
                }
                for (r, result) in results.enumerated() {
                    let text = session.tokenizer.decode(result.tokens, skipSpecialTokens: true)
                    if json {
                        let object: [String: Any] = [
                            "prompt": texts[r], "text": text,
                            "prompt_tokens": ids[r].count, "completion_tokens": result.tokens.count, "finish_reason": result.finishReason,
                            "prefill_seconds": result.promptSeconds, "decode_seconds": result.decodeSeconds,
                            "decode_tokens_per_second": result.decodeSeconds > 0 ? Double(max(result.tokens.count - 1, 0)) / result.decodeSeconds : 0,
                        ]
                        print(String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self))
                    } else if streaming {
                        print(stream.finish())
                    } else {
                        print(text)
                    }
                }
            }
        }
    }

    static func readPrompts(_ path: String) throws -> [String] {
        let rows = try DataFile.read(path.hasSuffix(".jsonl") ? path : path)
        return try rows.map { row in
            guard let text = (row.fields["prompt"] ?? row.fields["text"]) as? String else {
                throw LoadError.malformed(path: row.location, field: "prompt", found: "\(row.fields.keys.sorted())", expected: "a \"prompt\" string")
            }
            return text
        }
    }
}

struct ChatCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "chat", abstract: "Talk with a model; the history is kept under its chat template.")

    @OptionGroup var options: ModelOptions

    func run() throws {
        try runReportingErrors {
            let session = try options.load()
            let tools = try options.toolSchemas()
            var history: [ChatMessage] = []
            print("Type a message; an empty line or end of input quits.")
            while true {
                print("> ", terminator: ""); flushOutput()
                guard let line = readLine(), !line.trimmingCharacters(in: .whitespaces).isEmpty else { break }
                let ids = try session.chatPrompt(history: history, user: line, system: options.system, tools: tools)
                var stream = StreamingDecoder(tokenizer: session.tokenizer, skipSpecialTokens: true)
                let result = try session.generate(promptIDs: ids, options: options) { print(stream.append($0), terminator: ""); flushOutput() }
                print(stream.finish())
                history.append(ChatMessage(role: "user", content: line))
                history.append(ChatMessage(role: "assistant", content: session.tokenizer.decode(result.tokens, skipSpecialTokens: true)))
            }
        }
    }
}
extension ModelOptions: GenerationOptions {}
