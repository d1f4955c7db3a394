import Foundation
import FinchKernels
import FinchIO

/// One message of a conversation.
public struct ChatMessage: Sendable, Equatable {
    /// "system", "user", "assistant" or "tool" as templates expect (ShareGPT's human/gpt are mapped on reading data).
    public var role: String
    /// The message text, passed to the template unchanged.
    public var content: String

    /// A message as `{"role": ..., "content": ...}` is written in HF datasets.
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// Where in a template something happened: 1-based line and column (in Unicode scalars).
public struct ChatTemplateLocation: Sendable, Equatable, CustomStringConvertible {
    /// The template's name as given to `ChatTemplate(_:name:)`, e.g. "chat template".
    public let template: String
    /// 1-based line in the template source.
    public let line: Int
    /// 1-based column, counted in Unicode scalars.
    public let column: Int

    /// A position in the named template.
    public init(template: String, line: Int, column: Int) {
        self.template = template
        self.line = line
        self.column = column
    }

    public var description: String { "\(template), line \(line), column \(column)" }
}

/// Why a chat template failed to parse or render, with where in the template.
public enum ChatTemplateError: Error, CustomStringConvertible, Equatable {
    /// The template does not parse; the message says what was found and what was expected.
    case syntax(message: String, location: ChatTemplateLocation)
    /// The template uses a filter Finch does not implement (or jinja2 does not have).
    case unknownFilter(name: String, location: ChatTemplateLocation)
    /// The template uses an `is` test Finch does not implement (or jinja2 does not have).
    case unknownTest(name: String, location: ChatTemplateLocation)
    /// The template called `raise_exception(message)` (e.g. roles that do not alternate).
    case raised(message: String, location: ChatTemplateLocation)
    /// Rendering failed: an undefined value used, a type error, ... (what jinja2 raises as an exception).
    case runtime(message: String, location: ChatTemplateLocation)

    /// The message without location; for `raised`, exactly the template's text.
    public var message: String {
        switch self {
        case .syntax(let m, _), .raised(let m, _), .runtime(let m, _): return m
        case .unknownFilter(let name, _): return "no filter named '\(name)'"
        case .unknownTest(let name, _): return "no test named '\(name)'"
        }
    }

    /// Where the error happened in the template.
    public var location: ChatTemplateLocation {
        switch self {
        case .syntax(_, let l), .unknownFilter(_, let l), .unknownTest(_, let l), .raised(_, let l), .runtime(_, let l): return l
        }
    }

    public var description: String {
        switch self {
        case .syntax: return "syntax error in \(location): \(message)"
        case .unknownFilter, .unknownTest: return "\(location): \(message)"
        case .raised: return "\(location.template) raised an exception (line \(location.line)): \(message)"
        case .runtime: return "error rendering \(location): \(message)"
        }
    }
}

/// An HF chat template (Jinja), parsed once and rendered as transformers' `apply_chat_template`
/// renders it: jinja2's ImmutableSandboxedEnvironment with `trim_blocks`, `lstrip_blocks`,
/// loop controls, the `generation` tag, and the globals `raise_exception`, `strftime_now`,
/// `namespace`, `dict` and `range` (transformers/utils/chat_template_utils.py).
public final class ChatTemplate: @unchecked Sendable {
    /// How errors name the template ("chat template" unless given).
    public let name: String
    private let source: JinjaSource
    private let body: [JinjaStmt]
    private let clockLock = NSLock()
    private var clock: @Sendable () -> Date = { Date() }

    /// The clock behind `strftime_now` (Llama 3.2 prints today's date); replace it for stable output.
    public var now: @Sendable () -> Date {
        get { clockLock.lock(); defer { clockLock.unlock() }; return clock }
        set { clockLock.lock(); defer { clockLock.unlock() }; clock = newValue }
    }

    /// Parses `source`; a syntax error throws `ChatTemplateError` naming `name`, the line and column.
    public init(_ source: String, name: String = "chat template") throws {
        self.name = name
        self.source = JinjaSource(source, name: name)
        self.body = try JinjaParser.parse(self.source)
    }

    /// Renders a plain conversation. Like `apply_chat_template`, `tools` and `documents` are
    /// defined as none, and `bos_token` / `eos_token` are defined only when given; `extra` adds
    /// or overrides variables (`date_string`, `enable_thinking`, `tools`, ...).
    public func render(
        messages: [ChatMessage], addGenerationPrompt: Bool, bosToken: String? = nil, eosToken: String? = nil,
        extra: [String: JinjaValue] = [:]
    ) throws -> String {
        var context: [String: JinjaValue] = [
            "messages": .array(messages.map { .object(["role": .string($0.role), "content": .string($0.content)]) }),
            "add_generation_prompt": .bool(addGenerationPrompt),
        ]
        if let bosToken { context["bos_token"] = .string(bosToken) }
        if let eosToken { context["eos_token"] = .string(eosToken) }
        context.merge(extra) { _, new in new }
        return try render(context: context)
    }

    /// Renders with any variables: `messages` with tool calls, `tools`, `date_string`, ...
    /// Prepares them as `apply_chat_template` does: `tools` and `documents` default to none and
    /// `add_generation_prompt` to false; message keys whose value is none are dropped; a message's
    /// reasoning (`reasoning_content`, `thinking` or `reasoning`) is copied to `thinking` and
    /// `reasoning_content` (transformers/utils/chat_template_utils.py, `_alias_reasoning_fields`).
    public func render(context: [String: JinjaValue]) throws -> String {
        try renderWithGenerationSpans(context: context).text
    }

    /// Whether the template marks assistant output with `{% generation %}` blocks.
    public var marksGeneration: Bool { body.contains(where: Self.containsGeneration) }

    private static func containsGeneration(_ stmt: JinjaStmt) -> Bool {
        if case .generation = stmt.kind { return true }
        return stmt.children.contains(where: containsGeneration)
    }

    /// Renders and reports the UTF-8 ranges written inside `{% generation %}` blocks: the
    /// assistant text that transformers' `return_assistant_tokens_mask` marks for the loss.
    public func renderWithGenerationSpans(messages: [ChatMessage], addGenerationPrompt: Bool = false,
                                          bosToken: String? = nil, eosToken: String? = nil) throws -> (text: String, spans: [Range<Int>]) {
        var context: [String: JinjaValue] = [
            "messages": .array(messages.map { .object(["role": .string($0.role), "content": .string($0.content)]) }),
            "add_generation_prompt": .bool(addGenerationPrompt),
        ]
        if let bosToken { context["bos_token"] = .string(bosToken) }
        if let eosToken { context["eos_token"] = .string(eosToken) }
        return try renderWithGenerationSpans(context: context)
    }

    /// `renderWithGenerationSpans` with any variables, prepared as `render(context:)` prepares them.
    public func renderWithGenerationSpans(context: [String: JinjaValue]) throws -> (text: String, spans: [Range<Int>]) {
        var context = context
        for name in ["tools", "documents"] where context[name] == nil { context[name] = JinjaValue.none }
        if context["add_generation_prompt"] == nil { context["add_generation_prompt"] = .bool(false) }
        if case .array(let messages)? = context["messages"] {
            context["messages"] = .array(messages.map(Self.prepareMessage))
        }
        let interpreter = JinjaInterpreter(source: source, now: now)
        let text = try interpreter.render(body, context: context)
        return (text, interpreter.generationSpans)
    }

    private static let reasoningFields = ["reasoning_content", "thinking", "reasoning"]

    private static func prepareMessage(_ message: JinjaValue) -> JinjaValue {
        guard case .object(let object) = message else { return message }
        if !object.values.contains(where: { $0 == .none }) && !reasoningFields.contains(where: { object[$0] != nil }) {
            return message
        }
        let kept = JinjaObject(keyed: object.pairs.filter { $0.value != .none })
        guard let reasoning = reasoningFields.lazy.compactMap({ kept[$0] }).first else { return .object(kept) }
        // Python: {"thinking": reasoning, **message, "reasoning_content": reasoning}
        var aliased = JinjaObject(keyed: [("thinking", reasoning)])
        for (key, value) in kept.pairs { aliased[key] = value }
        aliased["reasoning_content"] = reasoning
        return .object(aliased)
    }
}
