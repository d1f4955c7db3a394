import Foundation
import FinchKernels
import FinchIO
import FinchTokenizers
import FinchModels

/// A model with its tokenizer, ready to answer: prompt building under the chat template,
/// stop rules from the config, `generation_config.json` and stop strings.
public final class ChatSession {
    /// The model that generates (with its adapter, if one was applied).
    public let model: Transformer
    /// Encodes prompts and decodes output; also supplies the chat template and its EOS id.
    public let tokenizer: Tokenizer
    /// Where the model came from: its config (context length, EOS ids) and folder (generation_config.json).
    public let files: ModelFiles
    /// The decoder over `model`; set its `prefillChunk` here.
    public let generator: Generator

    /// A prompt that cannot be generated from: empty, rendered to nothing, longer than the context,
    /// or a chat requested of a model without a chat template.
    public enum Error: Swift.Error, CustomStringConvertible {
        case emptyPrompt
        case emptyTemplateOutput(String)
        case promptTooLong(tokens: Int, limit: Int)
        case noChatTemplate(String)

        public var description: String {
            switch self {
            case .emptyPrompt: return "the prompt is empty: give at least one character to continue"
            case let .emptyTemplateOutput(source): return "\(source): the chat template rendered no tokens for this conversation; expected a prompt to continue"
            case let .promptTooLong(tokens, limit): return "the prompt has \(tokens) tokens; with --max-new-tokens it must fit the model's context of \(limit)"
            case let .noChatTemplate(model): return "\(model) has no chat template; drop --chat to continue plain text"
            }
        }
    }

    /// A session over `model`, which must have been built from `files`.
    public init(model: Transformer, tokenizer: Tokenizer, files: ModelFiles) {
        self.model = model
        self.tokenizer = tokenizer
        self.files = files
        generator = Generator(model: model)
    }

    /// EOS ids from the config, the tokenizer and generation_config.json.
    public var eosTokenIds: Set<Int> {
        var ids = Set(files.config.eosTokenIds)
        if let eos = tokenizer.eosTokenId { ids.insert(eos) }
        let path = (files.source as NSString).appendingPathComponent("generation_config.json")
        if let data = FileManager.default.contents(atPath: path), let json = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] {
            if let one = json["eos_token_id"] as? Int { ids.insert(one) }
            if let many = json["eos_token_id"] as? [Int] { ids.formUnion(many) }
        }
        return ids
    }

    /// The ids of `text` to continue as plain text, special tokens added as the tokenizer does (a BOS,
    /// for most). Throws `Error.emptyPrompt` when that gives no ids.
    public func plainPrompt(_ text: String) throws -> [Int] {
        let ids = try tokenizer.encode(text, addSpecialTokens: true)
        guard !ids.isEmpty else { throw Error.emptyPrompt }
        return ids
    }

    /// The ids of `history` plus a new user turn, rendered with the chat template and the generation
    /// prompt. `system` is inserted first unless the history already starts with a system message;
    /// `tools` (a list of function schemas) is the template's `tools`, as apply_chat_template's.
    public func chatPrompt(history: [ChatMessage], user: String, system: String?, tools: JinjaValue? = nil) throws -> [Int] {
        guard let source = tokenizer.chatTemplate else { throw Error.noChatTemplate(files.source) }
        var messages = history
        if let system, history.first?.role != "system" { messages.insert(ChatMessage(role: "system", content: system), at: 0) }
        messages.append(ChatMessage(role: "user", content: user))
        let text = try ChatTemplate(source).render(messages: messages, addGenerationPrompt: true,
                                                   bosToken: tokenizer.bosToken, eosToken: tokenizer.eosToken,
                                                   extra: tools.map { ["tools": $0] } ?? [:])
        let ids = try tokenizer.encode(text, addSpecialTokens: false)
        // A template can render nothing at all (one that ignores the messages, say).
        guard !ids.isEmpty else { throw Error.emptyTemplateOutput(files.source) }
        return ids
    }

    /// Generates after `promptIDs`; `onToken` sees each token before the stop rules end the output.
    public func generate(promptIDs: [Int], options: GenerationOptions, onToken: (Int) -> Void) throws -> GenerationResult {
        try generate(promptIDs: [promptIDs], options: options) { _, token in onToken(token) }[0]
    }

    /// Generates after each prompt in one batch (left-padded); `onToken(row, token)` sees each
    /// row's tokens before the stop rules end that row.
    public func generate(promptIDs: [[Int]], options: GenerationOptions,
                         onToken: (_ row: Int, _ token: Int) -> Void) throws -> [GenerationResult] {
        let limit = files.config.maxPositionEmbeddings
        for ids in promptIDs where ids.count + options.maxNewTokens > limit {
            throw Error.promptTooLong(tokens: ids.count, limit: limit)
        }
        var texts = [String](repeating: "", count: promptIDs.count)
        var emitted = [[Int]](repeating: [], count: promptIDs.count)
        let stop = StopRules(maxNewTokens: options.maxNewTokens, eosTokenIds: eosTokenIds)
        var results = generator.generate(prompts: promptIDs, sampling: options.sampling, stop: stop) { row, token in
            emitted[row].append(token)
            onToken(row, token)
            guard !options.stops.isEmpty else { return true }
            texts[row] = tokenizer.decode(emitted[row], skipSpecialTokens: true)
            return !options.stops.contains { texts[row].contains($0) }
        }
        for r in results.indices where results[r].finishReason == "stop" {
            guard let stop = options.stops.first(where: { texts[r].contains($0) }) else { continue }
            // Cut the output at the stop string, as OpenAI-style servers do.
            while !results[r].tokens.isEmpty && tokenizer.decode(results[r].tokens, skipSpecialTokens: true).contains(stop) {
                results[r].tokens.removeLast()
            }
        }
        return results
    }
}

/// What a caller sets for one generation.
public protocol GenerationOptions {
    var maxNewTokens: Int { get }
    var sampling: SamplingSettings { get }
    var stops: [String] { get }
}
