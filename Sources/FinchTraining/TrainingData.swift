import Foundation
import FinchKernels
import FinchIO
import FinchTokenizers
import FinchModels
import FinchGeneration
import FinchDistributed

/// Dataset rows turned into `Example`s the way TRL's trainers tokenize them
/// (reference/TRL_SEMANTICS.md): formats detected from the fields, chat templates applied to
/// message lists, truncation to `maxLength` with counts of what was cut or dropped.
public enum TrainingData {
    /// The dataset formats Finch reads, under TRL's names; raw values are the `--format` values.
    public enum Format: String, Sendable, CaseIterable {
        case text, promptCompletion = "prompt_completion", messages, preference
        /// `instruction`, `input` (optional) and `output` (Stanford Alpaca): a user turn and the
        /// answer through the chat template, or without one the Alpaca prompt as text.
        case alpaca
        /// `conversations` of `from` / `value` turns (human, gpt, system): read as messages.
        case sharegpt
    }

    /// What tokenizing a dataset did, printed before training.
    public struct Report: Sendable, Equatable {
        /// Rows read.
        public var rows = 0
        /// Kept rows with at least one sequence cut at `maxLength`.
        public var truncated = 0
        /// Rows left out: after truncation, no label remained to learn from.
        public var dropped = 0
        /// Tokens of the kept examples' input_ids fields (chosen and rejected both count), after truncation.
        public var tokens = 0
        /// Rows left out as unreadable with `--skip-bad-rows`, and the first few reasons.
        public var skipped = 0
        /// The first reasons rows were skipped (file:line: what).
        public var skippedReasons: [String] = []

        /// Counts one skipped row and keeps its reason while there are few.
        mutating func skip(_ reason: String) {
            skipped += 1
            if skippedReasons.count < 5 { skippedReasons.append(reason) }
        }
    }

    /// A row that cannot become an example: unknown format, bad field, wrong format for the method,
    /// or messages without a chat template; the location names the row (`file:line`).
    public enum Error: Swift.Error, CustomStringConvertible {
        case undetectable(location: String, fields: [String])
        case field(location: String, name: String, found: String, expected: String)
        case wrongFormat(location: String, method: String, format: Format, expected: String)
        case noTemplate(location: String)

        public var description: String {
            switch self {
            case let .undetectable(location, fields):
                return "\(location): cannot tell the dataset format from the fields \(fields.sorted()); expected text, prompt+completion, messages, or chosen+rejected (with or without prompt)"
            case let .field(location, name, found, expected):
                return "\(location): field '\(name)': found \(found), expected \(expected)"
            case let .wrongFormat(location, method, format, expected):
                return "\(location): method \(method) cannot train on \(format.rawValue) rows; it needs \(expected)"
            case let .noTemplate(location):
                return "\(location): the row holds messages but the tokenizer has no chat template"
            }
        }
    }

    /// The format of a row, from its fields.
    public static func detect(_ row: DataFile.Row) throws -> Format {
        let f = row.fields
        if f["chosen"] != nil && f["rejected"] != nil { return .preference }
        if f["messages"] != nil || f["conversations"] != nil { return .messages }
        if f["prompt"] != nil && f["completion"] != nil { return .promptCompletion }
        if f["instruction"] != nil && f["output"] != nil { return .alpaca }
        if f["text"] != nil { return .text }
        throw Error.undetectable(location: row.location, fields: Array(f.keys))
    }

    /// The Stanford Alpaca prompt, with or without an input, for models without a chat template.
    static func alpacaPrompt(instruction: String, input: String) -> String {
        if input.isEmpty {
            return "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
                + "### Instruction:\n\(instruction)\n\n### Response:\n"
        }
        return "Below is an instruction that describes a task, paired with an input that provides further context. "
            + "Write a response that appropriately completes the request.\n\n"
            + "### Instruction:\n\(instruction)\n\n### Input:\n\(input)\n\n### Response:\n"
    }

    /// Rows with fields renamed by `mapping` ("name=source" pairs, `--field`): each row gets the
    /// value of its `source` field under `name` as well. A row without a mapped source is an
    /// error naming its line and the field.
    /// With `skipBadRows` a row without a source is left as it is (its format then fails to be
    /// detected and it is skipped with that reason).
    public static func mapFields(_ rows: [DataFile.Row], _ mapping: [String], skipBadRows: Bool = false) throws -> [DataFile.Row] {
        guard !mapping.isEmpty else { return rows }
        let pairs = try mapping.map { pair -> (String, String) in
            let parts = pair.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                throw Error.field(location: "--field", name: pair, found: "'\(pair)'", expected: "name=source, such as prompt=question")
            }
            return (parts[0], parts[1])
        }
        return try rows.map { row in
            var fields = row.fields
            for (name, source) in pairs {
                guard let value = row.fields[source] else {
                    if skipBadRows { return row }
                    throw Error.field(location: row.location, name: source, found: "nothing", expected: "a field to read as \(name) (--field \(name)=\(source))")
                }
                fields[name] = value
            }
            return DataFile.Row(location: row.location, fields: fields)
        }
    }

    /// KTO's `label`: true (desirable, 1) or false (0); 1 and 0 are taken too.
    static func desirability(_ row: DataFile.Row) throws -> Int32 {
        guard let value = row.fields["label"] else {
            throw Error.field(location: row.location, name: "label", found: "nothing", expected: "true (desirable) or false (undesirable)")
        }
        if let n = value as? NSNumber, n.doubleValue == 0 || n.doubleValue == 1 { return n.doubleValue == 1 ? 1 : 0 }
        if let text = value as? String, ["true", "false"].contains(text.lowercased()) { return text.lowercased() == "true" ? 1 : 0 }
        throw Error.field(location: row.location, name: "label", found: jsonKind(value), expected: "true (desirable) or false (undesirable)")
    }

    static func text(_ row: DataFile.Row, _ name: String) throws -> String {
        guard let value = row.fields[name] else { throw Error.field(location: row.location, name: name, found: "nothing", expected: "a string") }
        guard let s = value as? String else { throw Error.field(location: row.location, name: name, found: jsonKind(value), expected: "a string") }
        return s
    }

    static func messages(_ row: DataFile.Row, _ name: String) throws -> [ChatMessage] {
        guard let list = row.fields[name] as? [Any] else {
            throw Error.field(location: row.location, name: name, found: row.fields[name].map(jsonKind) ?? "nothing",
                              expected: "a list of {role, content} objects")
        }
        return try list.enumerated().map { i, item in
            guard let m = item as? [String: Any], let role = (m["role"] ?? m["from"]) as? String,
                  let content = (m["content"] ?? m["value"]) as? String else {
                throw Error.field(location: row.location, name: "\(name)[\(i)]", found: "\(item)", expected: "an object with string role and content")
            }
            return ChatMessage(role: role == "human" ? "user" : role == "gpt" ? "assistant" : role, content: content)
        }
    }

    /// A prompt or answer given as a string or as a message list.
    enum Turns { case text(String), messages([ChatMessage]) }

    static func turns(_ row: DataFile.Row, _ name: String) throws -> Turns {
        if row.fields[name] is String { return .text(try text(row, name)) }
        return .messages(try messages(row, name))
    }

    /// Tokenizes every row for `method` and returns the examples and what truncation did.
    /// With `chatPrompts`, plain-text prompts are rendered as a user turn with the chat template
    /// (TRL leaves them as they are; an instruct model answers better in its own format).
    /// With `skipBadRows`, a row the format cannot read is counted in the report and left out.
    /// `tools` (tool schemas, from `--tools`) render through the chat template of every
    /// conversation whose row has no `tools` field of its own.
    public static func examples(rows: [DataFile.Row], method: String, format forced: Format?, tokenizer: Tokenizer,
                                maxLength: Int, chatPrompts: Bool = false, skipBadRows: Bool = false,
                                tools: JinjaValue? = nil) throws -> ([Example], Report) {
        var examples: [Example] = []
        var report = Report()
        for row in rows {
            report.rows += 1
            do {
                if let example = try example(row, id: examples.count, method: method, format: forced, tokenizer: tokenizer, maxLength: maxLength,
                                             chatPrompts: chatPrompts, tools: tools, report: &report) {
                    examples.append(example)
                }
            } catch let error as Error where skipBadRows {
                report.skip("\(error)")
            }
        }
        return (examples, report)
    }

    /// One row's example, or nil when truncation left nothing to learn (counted in `report`).
    static func example(_ row: DataFile.Row, id: Int, method: String, format forced: Format?, tokenizer: Tokenizer, maxLength: Int,
                        chatPrompts: Bool, tools: JinjaValue? = nil, report: inout Report) throws -> Example? {
        if method == "grpo" {
            return try promptOnly(row, tokenizer: tokenizer, maxLength: maxLength, chatPrompts: chatPrompts, tools: tools, id: id, report: &report)
        }
        let preference = !["sft", "kto"].contains(method)
        let format = try forced ?? detect(row)
        var fields: [String: [Int32]]
        if preference {
            guard format == .preference else { throw Error.wrongFormat(location: row.location, method: method, format: format, expected: "chosen and rejected fields") }
            fields = try preferenceFields(row, tokenizer: tokenizer, chatPrompts: chatPrompts, method: method)
        } else if method == "kto" {
            // TRL's unpaired format: prompt, completion and a boolean label, tokenized as a
            // prompt-completion row (EOS after plain text) with the loss on the completion.
            guard format == .promptCompletion else {
                throw Error.wrongFormat(location: row.location, method: method, format: format, expected: "prompt, completion and label fields")
            }
            fields = try sftFields(row, format: format, tokenizer: tokenizer, chatPrompts: chatPrompts)
            fields["label"] = [try desirability(row)]
        } else {
            guard format != .preference else { throw Error.wrongFormat(location: row.location, method: method, format: format, expected: "text, prompt+completion or messages") }
            if format == .messages, row.fields["messages"] != nil, tools != nil || row.fields["tools"] != nil || usesTools(row.fields["messages"]) {
                fields = try toolConversationFields(row, tools: tools, tokenizer: tokenizer)
            } else {
                fields = try sftFields(row, format: format, tokenizer: tokenizer, chatPrompts: chatPrompts)
            }
        }
        // Truncation: sequences are cut at maxLength; a row with nothing left to learn is dropped.
        var truncated = false
        for key in fields.keys where fields[key]!.count > maxLength {
            fields[key] = Array(fields[key]!.prefix(maxLength))
            truncated = true
        }
        let labelKeys = preference ? ["chosen_labels", "rejected_labels"] : ["labels"]
        if labelKeys.contains(where: { key in !(fields[key] ?? []).dropFirst().contains { $0 >= 0 } }) {
            report.dropped += 1
            return nil
        }
        if truncated { report.truncated += 1 }
        report.tokens += fields.filter { $0.key.hasSuffix("input_ids") }.reduce(0) { $0 + $1.value.count }
        return Example(id: id, fields: fields)
    }

    /// TRL's prompt-only rows (GRPO): `prompt` as text or messages becomes `prompt_ids` as
    /// TRL tokenizes it (text with the tokenizer's own special tokens; messages rendered with the
    /// chat template and a generation prompt), and every field of the row is kept as JSON text
    /// for the reward functions. A prompt longer than `maxLength` keeps its last tokens.
    static func promptOnly(_ row: DataFile.Row, tokenizer: Tokenizer, maxLength: Int, chatPrompts: Bool, tools: JinjaValue? = nil, id: Int,
                           report: inout Report) throws -> Example {
        guard row.fields["prompt"] != nil else {
            throw Error.field(location: row.location, name: "prompt", found: "nothing (fields: \(row.fields.keys.sorted().joined(separator: ", ")))",
                              expected: "a prompt: text or a list of {role, content} messages (GRPO reads prompt-only rows)")
        }
        var ids: [Int32]
        // Tool schemas (the row's `tools`, else --tools) render with a conversational prompt, as
        // TRL renders its tools into the prompt; the messages in the file's key order.
        let schemas = templateValue(row, "tools") ?? tools
        switch try turns(row, "prompt") {
        case .messages where schemas != nil:
            guard let source = tokenizer.chatTemplate else { throw Error.noTemplate(location: row.location) }
            var context: [String: JinjaValue] = ["messages": templateValue(row, "prompt")!, "add_generation_prompt": .bool(true), "tools": schemas!]
            if let bos = tokenizer.bosToken { context["bos_token"] = .string(bos) }
            if let eos = tokenizer.eosToken { context["eos_token"] = .string(eos) }
            ids = try Self.ids(tokenizer, try ChatTemplate(source, name: "chat template").render(context: context))
        case let .messages(messages):
            ids = try Self.ids(tokenizer, try render(tokenizer, messages, generationPrompt: true, location: row.location))
        case let .text(text) where chatPrompts:
            ids = try Self.ids(tokenizer, try render(tokenizer, [ChatMessage(role: "user", content: text)], generationPrompt: true,
                                                     location: row.location))
        case let .text(text):
            ids = try Self.ids(tokenizer, text, special: true)
        }
        guard !ids.isEmpty else { throw Error.field(location: row.location, name: "prompt", found: "an empty prompt", expected: "at least one token") }
        if ids.count > maxLength {
            ids = Array(ids.suffix(maxLength))
            report.truncated += 1
        }
        var columns: [String: String] = [:]
        for (name, value) in row.fields {
            let data = try JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed, .sortedKeys, .withoutEscapingSlashes])
            columns[name] = String(decoding: data, as: UTF8.self)
        }
        if chatPrompts, case .text = try turns(row, "prompt") { columns["prompt"] = "[{\"content\":\(columns["prompt"]!),\"role\":\"user\"}]" }
        report.tokens += ids.count
        return Example(id: id, fields: ["prompt_ids": ids], columns: columns)
    }

    /// The files of a `--data` value and their weights: comma-separated paths, each with an
    /// optional `:weight` (a positive number; 1 when left out).
    public static func dataFiles(_ spec: String) throws -> [(path: String, weight: Double)] {
        let parts = spec.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !parts.isEmpty else { throw Error.field(location: "--data", name: "data", found: "'\(spec)'", expected: "a data file, or files separated by commas") }
        return try parts.map { part in
            guard let colon = part.lastIndex(of: ":"), let weight = Double(part[part.index(after: colon)...]) else { return (part, 1) }
            guard weight > 0, weight.isFinite, weight <= 1000 else {
                throw Error.field(location: "--data", name: String(part[..<colon]), found: "weight \(part[part.index(after: colon)...])",
                                  expected: "a positive weight up to 1000 (2 repeats each row twice, 0.5 keeps a seeded half)")
            }
            return (String(part[..<colon]), weight)
        }
    }

    /// Several files' examples in one epoch: each file's `weight` times, the whole part by
    /// repetition and the fraction a seeded choice of its rows (weight 2.5: every row twice and
    /// a seeded half once more), numbered anew in order. The same on every rank and on resume.
    public static func mix(_ parts: [(examples: [Example], weight: Double)], seed: UInt64) -> [Example] {
        var out: [Example] = []
        for (index, part) in parts.enumerated() {
            let whole = Int(part.weight.rounded(.down))
            for _ in 0..<whole { out += part.examples }
            let extra = Int((Double(part.examples.count) * (part.weight - Double(whole))).rounded())
            if extra > 0 {
                var random = FinchRandom(seed: seed ^ 0x00D1_5EED ^ UInt64(index) &* 0x9E37_79B9)
                var order = Array(part.examples.indices)
                order.shuffle(using: &random)
                out += order.prefix(extra).sorted().map { part.examples[$0] }
            }
        }
        return out.enumerated().map { Example(id: $0.offset, fields: $0.element.fields, columns: $0.element.columns) }
    }

    /// SFT packing: examples laid end to end into rows of at most `maxLength` tokens (first fit,
    /// in order), each row remembering its sequences' lengths so that attention, positions and
    /// targets stay within each sequence (`TokenBatch.packed`). Fewer, fuller rows: no padding.
    public static func pack(_ examples: [Example], maxLength: Int) -> [Example] {
        var rows: [(ids: [Int32], labels: [Int32], lengths: [Int32])] = []
        for e in examples {
            let ids = e["input_ids"], labels = e["labels"]
            if let i = rows.firstIndex(where: { $0.ids.count + ids.count <= maxLength }) {
                rows[i].ids += ids; rows[i].labels += labels; rows[i].lengths.append(Int32(ids.count))
            } else {
                rows.append((ids, labels, [Int32(ids.count)]))
            }
        }
        return rows.enumerated().map { Example(id: $0, fields: ["input_ids": $1.ids, "labels": $1.labels, "segment_lengths": $1.lengths]) }
    }

    static func ids(_ tokenizer: Tokenizer, _ text: String, special: Bool = false) throws -> [Int32] {
        try tokenizer.encode(text, addSpecialTokens: special).map { Int32($0) }
    }

    static func render(_ tokenizer: Tokenizer, _ messages: [ChatMessage], generationPrompt: Bool, location: String) throws -> String {
        guard let source = tokenizer.chatTemplate else { throw Error.noTemplate(location: location) }
        let template = try ChatTemplate(source, name: "chat template")
        return try template.render(messages: messages, addGenerationPrompt: generationPrompt,
                                   bosToken: tokenizer.bosToken, eosToken: tokenizer.eosToken)
    }

    /// SFT rows: input_ids and labels (-100 where no loss is taken).
    static func sftFields(_ row: DataFile.Row, format: Format, tokenizer: Tokenizer, chatPrompts: Bool) throws -> [String: [Int32]] {
        let eos = tokenizer.eosTokenId.map { [Int32($0)] } ?? []
        switch format {
        case .text:
            // The whole text is learned; EOS closes it.
            var input = try ids(tokenizer, try text(row, "text"), special: true)
            if input.last != eos.first { input += eos }
            return ["input_ids": input, "labels": input]
        case .promptCompletion:
            let prompt = try turns(row, "prompt"), completion = try turns(row, "completion")
            let promptText: String, fullText: String
            var conversational = true
            switch (prompt, completion) {
            case let (.messages(p), .messages(c)):
                promptText = try render(tokenizer, p, generationPrompt: true, location: row.location)
                fullText = try render(tokenizer, p + c, generationPrompt: false, location: row.location)
            case let (.text(p), .text(c)) where chatPrompts:
                let user = [ChatMessage(role: "user", content: p)]
                promptText = try render(tokenizer, user, generationPrompt: true, location: row.location)
                fullText = try render(tokenizer, user + [ChatMessage(role: "assistant", content: c)], generationPrompt: false, location: row.location)
            case let (.text(p), .text(c)):
                promptText = p
                fullText = p + c
                conversational = false
            default:
                throw Error.field(location: row.location, name: "completion", found: "a mix of text and messages", expected: "both text or both messages")
            }
            // Plain text goes through the tokenizer's own special tokens and gets EOS; a rendered
            // conversation is tokenized as it is (its template ends the turn).
            let promptIDs = try ids(tokenizer, promptText, special: !conversational)
            var input = try ids(tokenizer, fullText, special: !conversational)
            if !conversational, input.last != eos.first { input += eos }
            let boundary = commonPrefixLength(promptIDs, input)
            return ["input_ids": input, "labels": [Int32](repeating: -100, count: boundary) + input[boundary...]]
        case .messages, .sharegpt:
            return try conversationFields(try messages(row, row.fields["messages"] != nil ? "messages" : "conversations"),
                                          tokenizer: tokenizer, location: row.location)
        case .alpaca:
            let instruction = try text(row, "instruction"), output = try text(row, "output")
            let input = row.fields["input"] == nil || row.fields["input"] is NSNull ? "" : try text(row, "input")
            if tokenizer.chatTemplate != nil {
                let user = input.isEmpty ? instruction : instruction + "\n\n" + input
                return try conversationFields([ChatMessage(role: "user", content: user), ChatMessage(role: "assistant", content: output)],
                                              tokenizer: tokenizer, location: row.location)
            }
            let prompt = alpacaPrompt(instruction: instruction, input: input)
            return try sftFields(DataFile.Row(location: row.location, fields: ["prompt": prompt, "completion": output]),
                                 format: .promptCompletion, tokenizer: tokenizer, chatPrompts: false)
        case .preference:
            throw Error.wrongFormat(location: row.location, method: "sft", format: format, expected: "text, prompt+completion or messages")
        }
    }

    /// Whether a `messages` list holds tool calls or tool results (assistant turns with
    /// `tool_calls` and maybe no content, `tool` / `ipython` turns).
    static func usesTools(_ messages: Any?) -> Bool {
        guard let list = messages as? [Any] else { return false }
        return list.contains { item in
            guard let m = item as? [String: Any] else { return false }
            return m["tool_calls"] != nil || m["content"] == nil || m["content"] is NSNull || ["tool", "ipython"].contains(m["role"] as? String ?? "")
        }
    }

    /// The row's field `name` as a template value: from the row's JSON text in its own key order
    /// (JSONL), else from the decoded fields (object keys sorted).
    static func templateValue(_ row: DataFile.Row, _ name: String) -> JinjaValue? {
        if let text = row.text, case .object(let object)? = try? JinjaValue(jsonText: text) { return object[name] }
        return row.fields[name].map { JinjaValue(json: $0) }
    }

    /// A conversation with tool calls, as agent data holds it (transformers' format: assistant
    /// turns with `tool_calls` of `{"type": "function", "function": {"name", "arguments"}}` and
    /// content that may be null, `tool` turns with the results), rendered with the row's `tools`
    /// or `tools`: loss on every assistant turn, tool calls included, and on nothing else.
    static func toolConversationFields(_ row: DataFile.Row, tools: JinjaValue?, tokenizer: Tokenizer) throws -> [String: [Int32]] {
        guard let source = tokenizer.chatTemplate else { throw Error.noTemplate(location: row.location) }
        let template = try ChatTemplate(source, name: "chat template")
        guard case .array(let messages)? = templateValue(row, "messages") else {
            throw Error.field(location: row.location, name: "messages", found: row.fields["messages"].map(jsonKind) ?? "nothing",
                              expected: "a list of messages")
        }
        for (i, message) in messages.enumerated() {
            guard case .object(let m) = message, case .string? = m["role"] else {
                throw Error.field(location: row.location, name: "messages[\(i)]", found: "\(message)", expected: "an object with a string role")
            }
            switch m["content"] {
            case .string?, .array?: break
            case .none?, nil:
                guard m["tool_calls"] != nil else {
                    throw Error.field(location: row.location, name: "messages[\(i)].content", found: "nothing",
                                      expected: "text, or tool_calls in its place")
                }
            default:
                throw Error.field(location: row.location, name: "messages[\(i)].content", found: "\(m["content"]!)", expected: "text or null")
            }
            switch m["tool_calls"] {
            case nil, .none?, .array?: break
            case let calls?:
                throw Error.field(location: row.location, name: "messages[\(i)].tool_calls", found: "\(calls)", expected: "a list of tool calls")
            }
        }
        let schemas = templateValue(row, "tools") ?? tools ?? JinjaValue.none
        func context(_ prefix: ArraySlice<JinjaValue>, generationPrompt: Bool) -> [String: JinjaValue] {
            var c: [String: JinjaValue] = ["messages": .array(Array(prefix)), "add_generation_prompt": .bool(generationPrompt), "tools": schemas]
            if let bos = tokenizer.bosToken { c["bos_token"] = .string(bos) }
            if let eos = tokenizer.eosToken { c["eos_token"] = .string(eos) }
            return c
        }
        func role(_ i: Int) -> String { if case .object(let m) = messages[i], case .string(let r)? = m["role"] { return r }; return "" }
        // The assistant text: the generation blocks of a template that marks them, else what
        // rendering each assistant turn adds to the turns before it with the generation prompt
        // (only prefixes that end at an assistant turn are rendered: Llama 3.1 refuses tools
        // before the first user turn).
        let whole = try template.renderWithGenerationSpans(context: context(messages[...], generationPrompt: false))
        let text = whole.text
        var spans = whole.spans
        if !template.marksGeneration {
            spans = []
            for i in messages.indices where role(i) == "assistant" {
                let before = try template.render(context: context(messages[..<i], generationPrompt: true))
                let after = try template.render(context: context(messages[...i], generationPrompt: false))
                guard text.hasPrefix(after), after.hasPrefix(before) else {
                    throw Error.field(location: row.location, name: "messages[\(i)]", found: "a template whose output for fewer turns is not a prefix",
                                      expected: "a chat template that renders conversations incrementally")
                }
                spans.append(before.utf8.count..<after.utf8.count)
            }
        }
        return try labelledSpans(text, spans, tokenizer: tokenizer)
    }

    /// `text` tokenized piece by piece, with labels on the UTF-8 byte ranges `spans` (the
    /// assistant text) and -100 elsewhere.
    static func labelledSpans(_ text: String, _ spans: [Range<Int>], tokenizer: Tokenizer) throws -> [String: [Int32]] {
        let bytes = Array(text.utf8)
        var input: [Int32] = [], labels: [Int32] = []
        var cursor = 0
        for span in spans + [bytes.count..<bytes.count] {
            let before = try ids(tokenizer, String(decoding: bytes[cursor..<span.lowerBound], as: UTF8.self))
            input += before; labels += [Int32](repeating: -100, count: before.count)
            let inside = try ids(tokenizer, String(decoding: bytes[span], as: UTF8.self))
            input += inside; labels += inside
            cursor = span.upperBound
        }
        return ["input_ids": input, "labels": labels]
    }

    /// A conversation with loss on every assistant turn and nothing else. A template with
    /// `{% generation %}` blocks marks the assistant text itself (as transformers' assistant
    /// masks do); otherwise the template is rendered turn by turn and the text each assistant
    /// turn adds is labelled.
    static func conversationFields(_ messages: [ChatMessage], tokenizer: Tokenizer, location: String) throws -> [String: [Int32]] {
        guard let source = tokenizer.chatTemplate else { throw Error.noTemplate(location: location) }
        let template = try ChatTemplate(source, name: "chat template")
        if template.marksGeneration {
            let (text, spans) = try template.renderWithGenerationSpans(messages: messages, bosToken: tokenizer.bosToken,
                                                                       eosToken: tokenizer.eosToken)
            return try labelledSpans(text, spans, tokenizer: tokenizer)
        }
        var input: [Int32] = [], labels: [Int32] = []
        var rendered = ""
        for (i, message) in messages.enumerated() {
            let before = message.role == "assistant"
                ? try render(tokenizer, Array(messages[..<i]), generationPrompt: true, location: location)
                : rendered
            let after = try render(tokenizer, Array(messages[...i]), generationPrompt: false, location: location)
            guard before.count >= rendered.count, after.hasPrefix(before), before.hasPrefix(rendered) else {
                throw Error.field(location: location, name: "messages[\(i)]", found: "a template whose output for fewer turns is not a prefix",
                                  expected: "a chat template that renders conversations incrementally")
            }
            let context = try ids(tokenizer, String(before.dropFirst(rendered.count)))
            input += context; labels += [Int32](repeating: -100, count: context.count)
            let added = try ids(tokenizer, String(after.dropFirst(before.count)))
            input += added
            labels += message.role == "assistant" ? added : [Int32](repeating: -100, count: added.count)
            rendered = after
        }
        return ["input_ids": input, "labels": labels]
    }

    /// Preference rows tokenized as TRL builds them: ORPO and CPO tokenize the prompt on its own
    /// and each answer after it, prepend BOS and append EOS; DPO tokenizes prompt + answer whole
    /// with the tokenizer's own special tokens and splits at the shared prefix (TRL_SEMANTICS.md).
    static func preferenceFields(_ row: DataFile.Row, tokenizer: Tokenizer, chatPrompts: Bool, method: String) throws -> [String: [Int32]] {
        var promptText: String, chosenText: String, rejectedText: String
        var conversational = false
        if row.fields["prompt"] == nil {
            // Implicit prompt: the longest shared prefix of chosen and rejected.
            switch (try turns(row, "chosen"), try turns(row, "rejected")) {
            case let (.messages(c), .messages(r)):
                var shared = 0
                while shared < min(c.count, r.count) - 1 && c[shared] == r[shared] { shared += 1 }
                promptText = try render(tokenizer, Array(c[..<shared]), generationPrompt: true, location: row.location)
                chosenText = String(try render(tokenizer, c, generationPrompt: false, location: row.location).dropFirst(promptText.count))
                rejectedText = String(try render(tokenizer, r, generationPrompt: false, location: row.location).dropFirst(promptText.count))
                conversational = true
            case let (.text(c), .text(r)):
                let common = c.commonPrefix(with: r)
                promptText = common; chosenText = String(c.dropFirst(common.count)); rejectedText = String(r.dropFirst(common.count))
            default:
                throw Error.field(location: row.location, name: "rejected", found: "a mix of text and messages", expected: "the same kind as chosen")
            }
        } else {
            switch try turns(row, "prompt") {
            case let .messages(p):
                promptText = try render(tokenizer, p, generationPrompt: true, location: row.location)
                func answer(_ name: String) throws -> String {
                    switch try turns(row, name) {
                    case let .messages(a): return String(try render(tokenizer, p + a, generationPrompt: false, location: row.location).dropFirst(promptText.count))
                    case let .text(a): return a
                    }
                }
                chosenText = try answer("chosen"); rejectedText = try answer("rejected")
                conversational = true
            case let .text(p):
                if chatPrompts {
                    promptText = try render(tokenizer, [ChatMessage(role: "user", content: p)], generationPrompt: true, location: row.location)
                    conversational = true
                } else {
                    promptText = p
                }
                chosenText = try text(row, "chosen"); rejectedText = try text(row, "rejected")
            }
        }
        let eos = tokenizer.eosTokenId.map { Int32($0) }
        if method == "dpo" {
            // tok(prompt) and tok(prompt + answer) with the tokenizer's own special tokens; EOS
            // closes plain-text answers (a chat template ends its turns itself).
            let special = !conversational
            let prompt = try ids(tokenizer, promptText, special: special)
            func sequence(_ answer: String) throws -> [Int32] {
                var full = try ids(tokenizer, promptText + answer, special: special)
                if !conversational, let eos, full.last != eos { full.append(eos) }
                return full
            }
            let chosen = try sequence(chosenText), rejected = try sequence(rejectedText)
            let promptLength = min(commonPrefixLength(prompt, chosen), commonPrefixLength(prompt, rejected))
            func labels(_ s: [Int32]) -> [Int32] { [Int32](repeating: -100, count: promptLength) + s[promptLength...] }
            return ["prompt_input_ids": Array(prompt.prefix(promptLength)),
                    "chosen_input_ids": chosen, "chosen_labels": labels(chosen),
                    "rejected_input_ids": rejected, "rejected_labels": labels(rejected)]
        }
        // ORPO / CPO: the prompt alone, then each answer as the rest of tok(prompt + answer).
        let promptIDs = try ids(tokenizer, promptText)
        func split(_ answer: String) throws -> (prompt: [Int32], answer: [Int32]) {
            let full = try ids(tokenizer, promptText + answer)
            var boundary = min(promptIDs.count, full.count)
            if Array(full.prefix(boundary)) != promptIDs { boundary = max(boundary - 1, 0) }   // a merge across the boundary
            var prompt = Array(full.prefix(boundary)), completion = Array(full[boundary...])
            if let bos = tokenizer.bosTokenId, prompt.first != Int32(bos) { prompt.insert(Int32(bos), at: 0) }
            if let eos, completion.last != eos { completion.append(eos) }
            return (prompt, completion)
        }
        let chosen = try split(chosenText), rejected = try split(rejectedText)
        func labels(_ part: (prompt: [Int32], answer: [Int32])) -> [Int32] { [Int32](repeating: -100, count: part.prompt.count) + part.answer }
        return ["prompt_input_ids": chosen.prompt,
                "chosen_input_ids": chosen.prompt + chosen.answer, "chosen_labels": labels(chosen),
                "rejected_input_ids": rejected.prompt + rejected.answer, "rejected_labels": labels(rejected)]
    }

    static func commonPrefixLength(_ a: [Int32], _ b: [Int32]) -> Int {
        var n = 0
        while n < min(a.count, b.count) && a[n] == b[n] { n += 1 }
        return n
    }
}
