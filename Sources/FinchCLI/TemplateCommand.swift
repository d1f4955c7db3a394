import ArgumentParser
import Finch
import Foundation

struct TemplateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "template",
        abstract: "Render a conversation through a chat template, as training and generation render it (or print its token ids).",
        discussion: """
            --messages is a JSON file: a list of messages ({"role", "content"}, and tool calls as transformers
            takes them: "tool_calls", "tool_call_id", "name"), or an object with "messages" and optionally "tools".
            Like transformers' apply_chat_template: tools and documents are none unless given, bos_token and
            eos_token come from the model's tokenizer, and --var sets any other variable (enable_thinking=false,
            date_string="26 Jul 2024").
            """)

    @Option(help: "An HF model folder, a .gguf file, or a repo id in the Hugging Face cache: its tokenizer and chat template.")
    var model: String?
    @Option(help: "The branch, tag or commit of a --model given as a repo id (default: main).") var revision: String?
    @Option(help: "A Jinja chat template file to use instead of the model's.") var template: String?
    @Option(help: "A JSON file: the conversation (see above).") var messages: String
    @Option(help: "A JSON file: the list of tool (function) schemas.") var tools: String?
    @Flag(name: .customLong("add-generation-prompt"), help: "End with the assistant's turn opening, as for generation.")
    var addGenerationPrompt = false
    @Option(name: .customLong("var"), help: "A template variable as KEY=JSON (repeatable).") var variables: [String] = []
    @Flag(help: "Print the token ids (a JSON array) instead of the text.") var ids = false
    @Option(help: "The local date and time strftime_now gives the template, as YYYY-MM-DDTHH:MM:SS (default: now).") var date: String?

    func run() throws {
        try runReportingErrors {
            guard model != nil || template != nil else { throw ValidationError("give --model (its chat template) or --template FILE") }
            var tokenizer: Tokenizer?
            if let model { tokenizer = try Tokenizer.load(from: try HubCache.resolve(model, revision: revision)) }
            if ids && tokenizer == nil { throw ValidationError("--ids needs --model for its tokenizer") }
            let source: String
            if let template {
                source = try Self.text(template)
            } else if let own = tokenizer?.chatTemplate {
                source = own
            } else {
                throw LoadError.malformed(path: model ?? "", field: "chat_template", found: "nothing", expected: "a chat template (or give --template FILE)")
            }
            let chat = try ChatTemplate(source, name: template ?? "the chat template of \(model ?? "")")
            if let date {
                let parser = DateFormatter()
                parser.locale = Locale(identifier: "en_US_POSIX")
                parser.dateFormat = "yyyy-MM-dd'T'HH:mm:ss"
                guard let fixed = parser.date(from: date) else { throw ValidationError("--date \(date): expected YYYY-MM-DDTHH:MM:SS") }
                chat.now = { fixed }
            }
            var context: [String: JinjaValue] = ["add_generation_prompt": .bool(addGenerationPrompt)]
            let conversation = try Self.json(messages)
            switch conversation {
            case .array: context["messages"] = conversation
            case let .object(object):
                guard let list = object["messages"] else {
                    throw LoadError.malformed(path: messages, field: "messages", found: "an object without it", expected: "a list of messages")
                }
                context["messages"] = list
                if let t = object["tools"] { context["tools"] = t }
            default:
                throw LoadError.malformed(path: messages, field: "top level", found: "a single value", expected: "a list of messages or an object with \"messages\"")
            }
            if let tools { context["tools"] = try Self.json(tools) }
            if let bos = tokenizer?.bosToken { context["bos_token"] = .string(bos) }
            if let eos = tokenizer?.eosToken { context["eos_token"] = .string(eos) }
            for variable in variables {
                let parts = variable.split(separator: "=", maxSplits: 1).map(String.init)
                guard parts.count == 2, !parts[0].isEmpty else { throw ValidationError("--var \(variable): expected KEY=JSON") }
                do { context[parts[0]] = try JinjaValue(jsonText: parts[1]) } catch {
                    throw ValidationError("--var \(parts[0]): '\(parts[1])' is not JSON (\(error)); quote strings: \(parts[0])='\"text\"'")
                }
            }
            let text = try chat.render(context: context)
            if ids, let tokenizer {
                let tokens = try tokenizer.encode(text, addSpecialTokens: false)
                print("[" + tokens.map(String.init).joined(separator: ", ") + "]")
            } else {
                FileHandle.standardOutput.write(Data(text.utf8))
            }
        }
    }

    static func text(_ path: String) throws -> String {
        guard FileManager.default.fileExists(atPath: path) else { throw LoadError.fileNotFound(path: path) }
        guard let data = FileManager.default.contents(atPath: path), data.count <= 64 << 20 else {
            throw LoadError.unreadable(path: path, reason: "cannot read it, or it is over 64 MiB")
        }
        return try UTF8Validation.string(from: data, source: path)
    }

    static func json(_ path: String) throws -> JinjaValue {
        do { return try JinjaValue(jsonText: try text(path)) } catch let error as JinjaJSONError {
            throw LoadError.malformed(path: path, field: "JSON", found: "\(error)", expected: "valid JSON")
        }
    }
}
