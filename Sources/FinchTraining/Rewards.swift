import Foundation

/// One completion as a reward function sees it: the prompt and the row's other fields as the
/// dataset gave them (JSON text), and the completion decoded without special tokens.
public struct RewardInput: Sendable, Equatable {
    /// The row's `prompt` as JSON text: a string, or a list of messages.
    public var prompt: String
    /// The completion's text (special tokens skipped, as TRL decodes it).
    public var completion: String
    /// The completion's token ids, EOS included where it stopped there.
    public var completionIds: [Int32]
    /// Every field of the dataset row as JSON text (`answer`, `solution`, ...; `prompt` too).
    public var columns: [String: String]
    /// The prompt is a conversation: TRL hands such completions over as one assistant message.
    public var conversational: Bool

    /// A completion of `prompt` with the row's `columns`.
    public init(prompt: String, completion: String, completionIds: [Int32] = [], columns: [String: String] = [:], conversational: Bool = false) {
        self.prompt = prompt; self.completion = completion; self.completionIds = completionIds
        self.columns = columns; self.conversational = conversational
    }
}

/// A reward for each completion of a batch; nil where the function has no opinion (TRL's None:
/// a completion every function leaves unscored gets no advantage). GRPO sums the rewards of
/// its functions with their weights. Library users write their own; `finch train` offers the
/// built-in ones (`--reward-function`) and external commands (`--reward-command`).
public protocol RewardFunction {
    /// The name in metrics (`rewards/<name>/mean`).
    var name: String { get }
    /// One reward per input, in order.
    func rewards(for inputs: [RewardInput]) throws -> [Double?]
}

/// Why a reward could not be computed: a bad `--reward-function`, or a reward command that
/// failed, printed something other than numbers, gave the wrong count, or ran too long.
public enum RewardError: Error, CustomStringConvertible, Equatable {
    case unknownFunction(String, known: [String])
    case badArgument(function: String, argument: String, reason: String)
    case commandFailed(command: String, status: String, stderr: String)
    case commandOutput(command: String, line: Int, found: String)
    case commandCount(command: String, found: Int, expected: Int)
    case commandTimeout(command: String, seconds: Double, stderr: String)

    public var description: String {
        func tail(_ stderr: String) -> String { stderr.isEmpty ? "" : "; its stderr ends:\n" + stderr }
        switch self {
        case let .unknownFunction(name, known):
            return "unknown reward function '\(name)'; built in: \(known.joined(separator: ", ")) (or give a --reward-command)"
        case let .badArgument(function, argument, reason):
            return "reward function \(function): argument '\(argument)': \(reason)"
        case let .commandFailed(command, status, stderr):
            return "reward command '\(command)' \(status)\(tail(stderr)); no step was taken with its rewards"
        case let .commandOutput(command, line, found):
            return "reward command '\(command)': output line \(line) is '\(found)', expected a number (or null) per completion"
        case let .commandCount(command, found, expected):
            return "reward command '\(command)' printed \(found) rewards for \(expected) completions; expected one line per completion"
        case let .commandTimeout(command, seconds, stderr):
            return "reward command '\(command)' did not finish within \(seconds) s (--reward-timeout) and was stopped\(tail(stderr))"
        }
    }
}

/// The reward functions `--reward-function NAME[:ARGUMENT]` names.
public enum BuiltInRewards {
    /// The names, with what their argument means.
    public static let names = ["exact_match", "format", "length_penalty"]

    /// The function `spec` names: `exact_match[:column]` (1 when the completion's final answer
    /// equals the row's `column`, default `answer`), `format[:regex]` (1 when the regex matches
    /// somewhere in the completion, `.` matching newlines; default `<answer>.*?</answer>`), or
    /// `length_penalty[:tokens]` (DAPO's soft overlong penalty over the last `tokens` before
    /// `maxCompletionLength`, default a quarter of it).
    public static func named(_ spec: String, maxCompletionLength: Int) throws -> RewardFunction {
        let parts = spec.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        let argument = parts.count > 1 ? parts[1] : nil
        switch parts[0] {
        case "exact_match": return ExactMatchReward(column: argument ?? "answer")
        case "format": return try FormatReward(pattern: argument ?? "<answer>.*?</answer>")
        case "length_penalty":
            let cache = try argument.map { a -> Int in
                guard let n = Int(a), n > 0, n <= maxCompletionLength else {
                    throw RewardError.badArgument(function: "length_penalty", argument: a,
                                                  reason: "expected a number of tokens in 1...\(maxCompletionLength) (the max completion length)")
                }
                return n
            } ?? max(1, maxCompletionLength / 4)
            return LengthPenaltyReward(maxLength: maxCompletionLength, cache: cache)
        default: throw RewardError.unknownFunction(parts[0], known: names)
        }
    }
}

/// 1 when the completion's final answer equals the row's answer column, else 0 (nil for a row
/// without that column). The final answer is the last `\boxed{...}`, else the last
/// `<answer>...</answer>`, else what follows the last `####` or "answer is" / "answer:", else
/// the last number. Numbers compare as numbers ("1,000" = "1000.0"); text compares trimmed and
/// case-blind. A GSM8K-style expected answer ("... #### 42") counts by what follows `####`.
public struct ExactMatchReward: RewardFunction {
    /// The column holding the expected answer.
    public let column: String
    /// "exact_match".
    public var name: String { "exact_match" }

    /// Compares with `column`.
    public init(column: String = "answer") { self.column = column }

    /// One reward per input, in order.
    public func rewards(for inputs: [RewardInput]) throws -> [Double?] {
        inputs.map { input in
            guard let json = input.columns[column], let expected = Self.expectedAnswer(json) else { return nil }
            guard let answer = Self.finalAnswer(in: input.completion) else { return 0 }
            return Self.same(answer, expected) ? 1 : 0
        }
    }

    /// The expected answer from a column's JSON: a string (after `####` if it holds one) or a number.
    static func expectedAnswer(_ json: String) -> String? {
        guard let value = try? JSONSerialization.jsonObject(with: Data(json.utf8), options: [.fragmentsAllowed]) else { return nil }
        if let text = value as? String {
            if let marker = text.range(of: "####", options: .backwards) { return String(text[marker.upperBound...]).trimmingCharacters(in: .whitespacesAndNewlines) }
            return text
        }
        if let number = value as? NSNumber { return number.stringValue }
        return nil
    }

    /// The final answer a completion states, by the rules above; nil when it states none.
    public static func finalAnswer(in text: String) -> String? {
        if let start = text.range(of: "\\boxed{", options: .backwards) {
            var depth = 1, end = start.upperBound
            while end < text.endIndex {
                if text[end] == "{" { depth += 1 } else if text[end] == "}" { depth -= 1; if depth == 0 { break } }
                end = text.index(after: end)
            }
            if depth == 0 { return String(text[start.upperBound..<end]) }
        }
        if let close = text.range(of: "</answer>", options: .backwards),
           let open = text.range(of: "<answer>", options: .backwards, range: text.startIndex..<close.lowerBound) {
            return String(text[open.upperBound..<close.lowerBound])
        }
        for marker in ["####", "answer is", "answer:"] {
            if let r = text.range(of: marker, options: [.backwards, .caseInsensitive]) {
                let rest = text[r.upperBound...].split(separator: "\n", omittingEmptySubsequences: false).first ?? ""
                let trimmed = rest.trimmingCharacters(in: .whitespaces)
                if !trimmed.isEmpty { return trimmed }
            }
        }
        return numbers(in: text).last
    }

    /// The numbers written in `text` ("-3", "1,250", "2.5"), in order.
    static func numbers(in text: String) -> [String] {
        guard let pattern = try? Regex(#"-?\d(?:[\d,]*\d)?(?:\.\d+)?"#) else { return [] }
        return text.matches(of: pattern).map { String(text[$0.range]) }
    }

    static func normalised(_ s: String) -> String {
        var t = s.lowercased().trimmingCharacters(in: .whitespacesAndNewlines)
        for wrapper in ["**", "$", "\\(", "\\)"] { t = t.replacingOccurrences(of: wrapper, with: "") }
        while let last = t.last, last == "." || last == " " { t.removeLast() }
        return t.trimmingCharacters(in: .whitespaces)
    }

    /// Same text, or, where the expected answer is a number, the answer's first number equal to it.
    static func same(_ answer: String, _ expected: String) -> Bool {
        let a = normalised(answer), e = normalised(expected)
        if a == e { return true }
        func value(_ s: String) -> Double? { Double(s.replacingOccurrences(of: ",", with: "")) }
        guard let target = value(e), let first = numbers(in: a).first, let got = value(first) else { return false }
        return abs(got - target) <= 1e-9 * max(1, abs(target))
    }
}

/// 1 when `pattern` matches somewhere in the completion (`.` matches newlines; anchor it with
/// `^` and `$` to match the whole text), else 0.
public struct FormatReward: RewardFunction {
    /// The regular expression, as given.
    public let pattern: String
    private let regex: Regex<AnyRegexOutput>
    /// "format".
    public var name: String { "format" }

    /// Throws, naming the pattern, when it is not a valid regular expression.
    public init(pattern: String) throws {
        self.pattern = pattern
        do { regex = try Regex(pattern).dotMatchesNewlines() } catch {
            throw RewardError.badArgument(function: "format", argument: pattern, reason: "not a valid regular expression (\(error))")
        }
    }

    /// One reward per input, in order.
    public func rewards(for inputs: [RewardInput]) throws -> [Double?] {
        inputs.map { (try? regex.firstMatch(in: $0.completion)) != nil ? 1 : 0 }
    }
}

/// DAPO's soft overlong punishment: 0 up to `maxLength - cache` tokens, then falling linearly
/// to -1 at `maxLength` (a completion cut at the limit gets -1).
public struct LengthPenaltyReward: RewardFunction {
    /// The max completion length, and the tokens before it over which the penalty grows.
    public let maxLength: Int, cache: Int
    /// "length_penalty".
    public var name: String { "length_penalty" }

    /// The penalty over the last `cache` tokens before `maxLength`.
    public init(maxLength: Int, cache: Int) { self.maxLength = maxLength; self.cache = max(cache, 1) }

    /// One reward per input, in order.
    public func rewards(for inputs: [RewardInput]) throws -> [Double?] {
        inputs.map { input in
            let length = input.completionIds.count, free = maxLength - cache
            if length <= free { return 0 }
            if length >= maxLength { return -1 }
            return Double(free - length) / Double(cache)
        }
    }
}

/// A reward computed by an external command (`sh -c COMMAND`), in any language: it reads one
/// JSON object per completion on stdin (`prompt`, `completion` and the row's other fields;
/// `completion` is `[{"role": "assistant", "content": ...}]` where the prompt is a conversation,
/// as TRL passes it) and prints one number per line (`null` for no opinion). A non-zero exit,
/// a line that is not a number, the wrong count or more than `timeout` seconds is an error
/// that quotes the end of its stderr.
public struct CommandReward: RewardFunction {
    /// The shell command.
    public let command: String
    /// Seconds one batch may take.
    public let timeout: Double
    /// The metric name: the command's first word without its folder and extension.
    public let name: String

    /// Runs `command` through `/bin/sh -c`; `name` defaults to its program's base name.
    public init(command: String, timeout: Double = 60, name: String? = nil) {
        self.command = command
        self.timeout = timeout
        let program = command.split(separator: " ").first.map { ($0 as NSString).lastPathComponent } ?? "command"
        self.name = name ?? (program as NSString).deletingPathExtension
    }

    /// The JSON line the command reads for `input`.
    static func line(_ input: RewardInput) -> String {
        func quoted(_ s: String) -> String {
            String(decoding: (try? JSONSerialization.data(withJSONObject: s, options: [.fragmentsAllowed, .withoutEscapingSlashes])) ?? Data("\"\"".utf8),
                   as: UTF8.self)
        }
        var fields = input.columns
        fields["prompt"] = input.prompt
        fields["completion"] = input.conversational ? "[{\"role\":\"assistant\",\"content\":\(quoted(input.completion))}]" : quoted(input.completion)
        return "{" + fields.keys.sorted().map { "\(quoted($0)):\(fields[$0]!)" }.joined(separator: ",") + "}\n"
    }

    /// One reward per input, in order.
    public func rewards(for inputs: [RewardInput]) throws -> [Double?] {
        let result = try Subprocess.run(["/bin/sh", "-c", command], input: Data(inputs.map(Self.line).joined().utf8), timeout: timeout)
        let stderr = Self.tail(result.stderr)
        switch result.status {
        case .timedOut: throw RewardError.commandTimeout(command: command, seconds: timeout, stderr: stderr)
        case let .exited(code) where code != 0: throw RewardError.commandFailed(command: command, status: "exited with status \(code)", stderr: stderr)
        case let .signalled(signal): throw RewardError.commandFailed(command: command, status: "was killed by signal \(signal)", stderr: stderr)
        default: break
        }
        let lines = String(decoding: result.stdout, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: .whitespaces) }
        let values = lines.last == "" ? Array(lines.dropLast()) : lines
        guard values.count == inputs.count else { throw RewardError.commandCount(command: command, found: values.count, expected: inputs.count) }
        return try values.enumerated().map { i, text in
            if ["null", "none", "nan"].contains(text.lowercased()) { return nil }
            guard let value = Double(text), value.isFinite else { throw RewardError.commandOutput(command: command, line: i + 1, found: String(text.prefix(80))) }
            return value
        }
    }

    /// The last lines of a command's stderr, for an error message.
    static func tail(_ data: Data) -> String {
        let lines = String(decoding: data, as: UTF8.self).split(separator: "\n")
        return lines.suffix(10).joined(separator: "\n")
    }
}
