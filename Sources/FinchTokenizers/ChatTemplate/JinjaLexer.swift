import FinchKernels
import FinchIO

/// Splits template source into tokens the way jinja2's `Lexer` does with transformers' settings
/// (`trim_blocks=True`, `lstrip_blocks=True`, `keep_trailing_newline=False`), including the
/// `-` / `+` whitespace-control markers and `{% raw %}` blocks.
/// Mirrors jinja2/lexer.py (`Lexer.tokeniter`).
struct JinjaToken {
    enum Kind: Equatable {
        case data(String)
        case variableBegin, variableEnd, blockBegin, blockEnd
        case name(String)
        case string(String)
        case integer(Int)
        case float(Double)
        case op(String)
        case eof
    }

    let kind: Kind
    /// Offset in Unicode scalars into the normalized source.
    let offset: Int
}

/// The template text with jinja2's newline normalization, and a map from offsets to line and column.
struct JinjaSource {
    let name: String
    let scalars: [Unicode.Scalar]
    private let lineStarts: [Int]

    init(_ text: String, name: String) {
        self.name = name
        // jinja2 splits on \r\n, \r and \n, drops one trailing newline, and joins with \n.
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(text.unicodeScalars.count)
        var previousWasCR = false
        for s in text.unicodeScalars {
            if s == "\r" {
                out.append("\n")
                previousWasCR = true
                continue
            }
            if s == "\n" && previousWasCR {
                previousWasCR = false
                continue
            }
            previousWasCR = false
            out.append(s)
        }
        if out.last == "\n" { out.removeLast() }
        scalars = out
        var starts = [0]
        for (i, s) in out.enumerated() where s == "\n" { starts.append(i + 1) }
        lineStarts = starts
    }

    /// 1-based line and column of an offset.
    func location(of offset: Int) -> ChatTemplateLocation {
        var lo = 0, hi = lineStarts.count - 1
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if lineStarts[mid] <= offset { lo = mid } else { hi = mid - 1 }
        }
        return ChatTemplateLocation(template: name, line: lo + 1, column: offset - lineStarts[lo] + 1)
    }
}

struct JinjaLexer {
    private let source: JinjaSource
    private var s: [Unicode.Scalar] { source.scalars }
    private var pos = 0
    private var tokens: [JinjaToken] = []
    /// Whether the last match ended with a newline (jinja2's `line_starting`), for `lstrip_blocks`.
    private var lineStarting = true

    init(source: JinjaSource) { self.source = source }

    static func tokenize(_ source: JinjaSource) throws -> [JinjaToken] {
        var lexer = JinjaLexer(source: source)
        try lexer.run()
        return lexer.tokens
    }

    private func error(_ message: String, at offset: Int) -> ChatTemplateError {
        .syntax(message: message, location: source.location(of: offset))
    }

    private func startsWith(_ text: String, at i: Int) -> Bool {
        var j = i
        for c in text.unicodeScalars {
            guard j < s.count, s[j] == c else { return false }
            j += 1
        }
        return true
    }

    private enum TagKind { case variable, block, comment, raw }

    private mutating func run() throws {
        while pos < s.count {
            guard let (tagStart, kind) = findNextTag(from: pos) else {
                emitData(Array(s[pos...]), at: pos)
                pos = s.count
                break
            }
            var text = Array(s[pos..<tagStart])
            var cursor = tagStart + 2
            var sign: Unicode.Scalar? = nil
            if cursor < s.count, s[cursor] == "-" || s[cursor] == "+" {
                sign = s[cursor]
                cursor += 1
            }
            text = applyLeftStrip(text, sign: sign, stripsLines: kind != .variable)
            emitData(text, at: pos)
            lineStarting = false
            switch kind {
            case .comment:
                pos = try skipComment(from: cursor, openedAt: tagStart)
            case .raw:
                pos = try lexRaw(from: cursor, openedAt: tagStart)
            case .variable:
                tokens.append(JinjaToken(kind: .variableBegin, offset: tagStart))
                pos = try lexTag(from: cursor, isBlock: false)
            case .block:
                tokens.append(JinjaToken(kind: .blockBegin, offset: tagStart))
                pos = try lexTag(from: cursor, isBlock: true)
            }
        }
        tokens.append(JinjaToken(kind: .eof, offset: s.count))
    }

    private mutating func emitData(_ text: [Unicode.Scalar], at offset: Int) {
        guard !text.isEmpty else { return }
        var string = String.UnicodeScalarView()
        string.append(contentsOf: text)
        tokens.append(JinjaToken(kind: .data(String(string)), offset: offset))
    }

    /// `-` strips all whitespace before the tag; otherwise `lstrip_blocks` strips spaces and tabs
    /// between the start of the line and a block or comment tag.
    private func applyLeftStrip(_ text: [Unicode.Scalar], sign: Unicode.Scalar?, stripsLines: Bool) -> [Unicode.Scalar] {
        if sign == "-" {
            var end = text.count
            while end > 0 && isPythonWhitespace(text[end - 1]) { end -= 1 }
            return Array(text[..<end])
        }
        guard sign != "+", stripsLines else { return text }
        let lineStart = (text.lastIndex(of: "\n") ?? -1) + 1
        guard lineStart > 0 || lineStarting, lineStart < text.count,
              text[lineStart...].allSatisfy(isPythonWhitespace) else { return text }
        return Array(text[..<lineStart])
    }

    /// The earliest `{{`, `{%` or `{#` at or after `start`; a `{% raw %}` opener is reported as raw.
    private func findNextTag(from start: Int) -> (Int, TagKind)? {
        var i = start
        while i + 1 < s.count {
            if s[i] == "{" {
                switch s[i + 1] {
                case "{": return (i, .variable)
                case "#": return (i, .comment)
                case "%": return (i, isRawOpener(at: i) ? .raw : .block)
                default: break
                }
            }
            i += 1
        }
        return nil
    }

    /// `{%(-|+|)\s*raw\s*(-%}|%})`
    private func isRawOpener(at i: Int) -> Bool {
        var j = i + 2
        if j < s.count, s[j] == "-" || s[j] == "+" { j += 1 }
        while j < s.count, isPythonWhitespace(s[j]) { j += 1 }
        guard startsWith("raw", at: j) else { return false }
        j += 3
        while j < s.count, isPythonWhitespace(s[j]) { j += 1 }
        return startsWith("-%}", at: j) || startsWith("%}", at: j)
    }

    /// Position after a tag closer: `+%}`, `-%}` plus all following whitespace, or `%}` plus one
    /// newline (`trim_blocks`). Returns nil when no closer starts at `i`.
    private mutating func matchBlockEnd(at i: Int, closer: String) -> Int? {
        if startsWith("+" + closer, at: i) {
            let end = i + 1 + closer.unicodeScalars.count
            lineStarting = false
            return end
        }
        if startsWith("-" + closer, at: i) {
            var end = i + 1 + closer.unicodeScalars.count
            while end < s.count, isPythonWhitespace(s[end]) { end += 1 }
            lineStarting = s[end - 1] == "\n"
            return end
        }
        if startsWith(closer, at: i) {
            var end = i + closer.unicodeScalars.count
            if end < s.count, s[end] == "\n" { end += 1 }
            lineStarting = s[end - 1] == "\n"
            return end
        }
        return nil
    }

    private mutating func skipComment(from start: Int, openedAt open: Int) throws -> Int {
        var i = start
        while i < s.count {
            if let end = matchBlockEnd(at: i, closer: "#}") { return end }
            i += 1
        }
        throw error("missing end of comment tag: found the end of the template, expected '#}'", at: open)
    }

    private mutating func lexRaw(from start: Int, openedAt open: Int) throws -> Int {
        var i = start
        while i < s.count, isPythonWhitespace(s[i]) { i += 1 }
        i += 3  // "raw"
        while i < s.count, isPythonWhitespace(s[i]) { i += 1 }
        if startsWith("-%}", at: i) {
            i += 3
            while i < s.count, isPythonWhitespace(s[i]) { i += 1 }
        } else {
            i += 2  // no trim_blocks newline after the raw opener, as in jinja2
        }
        lineStarting = s[i - 1] == "\n"
        let bodyStart = i
        var j = i
        while j + 1 < s.count {
            if s[j] == "{" && s[j + 1] == "%" {
                var k = j + 2
                var sign: Unicode.Scalar? = nil
                if k < s.count, s[k] == "-" || s[k] == "+" { sign = s[k]; k += 1 }
                while k < s.count, isPythonWhitespace(s[k]) { k += 1 }
                if startsWith("endraw", at: k) {
                    k += 6
                    while k < s.count, isPythonWhitespace(s[k]) { k += 1 }
                    let body = applyLeftStrip(Array(s[bodyStart..<j]), sign: sign, stripsLines: true)
                    if let end = matchBlockEnd(at: k, closer: "%}") {
                        emitData(body, at: bodyStart)
                        return end
                    }
                }
            }
            j += 1
        }
        throw error("missing end of raw directive: found the end of the template, expected '{% endraw %}'", at: open)
    }

    private static let operators: [String] = [
        "//", "**", "==", "!=", ">=", "<=",
        "+", "-", "/", "*", "%", "~", "[", "]", "(", ")", "{", "}", ">", "<", "=", ".", ":", "|", ",", ";",
    ]

    /// Lexes the inside of `{{ }}` or `{% %}` and returns the position after the closer.
    private mutating func lexTag(from start: Int, isBlock: Bool) throws -> Int {
        var i = start
        var brackets: [(closer: Unicode.Scalar, offset: Int)] = []
        let closer = isBlock ? "%}" : "}}"
        while i < s.count {
            if brackets.isEmpty {
                if isBlock, let end = matchBlockEnd(at: i, closer: closer) {
                    tokens.append(JinjaToken(kind: .blockEnd, offset: i))
                    return end
                }
                if !isBlock {
                    if startsWith("-}}", at: i) {
                        var end = i + 3
                        while end < s.count, isPythonWhitespace(s[end]) { end += 1 }
                        lineStarting = s[end - 1] == "\n"
                        tokens.append(JinjaToken(kind: .variableEnd, offset: i))
                        return end
                    }
                    if startsWith("}}", at: i) {
                        lineStarting = false
                        tokens.append(JinjaToken(kind: .variableEnd, offset: i))
                        return i + 2
                    }
                }
            }
            let c = s[i]
            if isPythonWhitespace(c) {
                i += 1
                continue
            }
            if let (kind, end) = lexNumber(at: i) {
                tokens.append(JinjaToken(kind: kind, offset: i))
                i = end
                continue
            }
            if c == "_" || c.properties.isAlphabetic {
                var j = i + 1
                while j < s.count, s[j] == "_" || s[j].properties.isAlphabetic || s[j].properties.numericType == .decimal { j += 1 }
                tokens.append(JinjaToken(kind: .name(String(String.UnicodeScalarView(s[i..<j]))), offset: i))
                i = j
                continue
            }
            if c == "'" || c == "\"" {
                let (value, end) = try lexString(at: i)
                tokens.append(JinjaToken(kind: .string(value), offset: i))
                i = end
                continue
            }
            guard let op = Self.operators.first(where: { startsWith($0, at: i) }) else {
                throw error("unexpected character '\(c)'", at: i)
            }
            switch op {
            case "(": brackets.append((")", i))
            case "[": brackets.append(("]", i))
            case "{": brackets.append(("}", i))
            case ")", "]", "}":
                guard let open = brackets.popLast() else { throw error("unexpected '\(op)'", at: i) }
                if String(open.closer) != op { throw error("unexpected '\(op)', expected '\(open.closer)'", at: i) }
            default: break
            }
            tokens.append(JinjaToken(kind: .op(op), offset: i))
            i += op.unicodeScalars.count
        }
        return i  // end of template inside a tag: the parser reports what it expected
    }

    private func isDigit(_ c: Unicode.Scalar) -> Bool { c >= "0" && c <= "9" }

    /// jinja2's float and integer rules (underscores allowed between digits; 0b/0o/0x prefixes).
    private func lexNumber(at i: Int) -> (JinjaToken.Kind, Int)? {
        guard isDigit(s[i]) else { return nil }
        if i > 0 && s[i - 1] == "." {
            // float_re has (?<!\.); integer_re still matches
        } else if let (value, end) = lexFloat(at: i) {
            return (.float(value), end)
        }
        if s[i] == "0", i + 1 < s.count {
            let prefix = s[i + 1].properties.lowercaseMapping
            let radix = prefix == "b" ? 2 : prefix == "o" ? 8 : prefix == "x" ? 16 : 0
            if radix != 0 {
                var j = i + 2
                var digits = ""
                while j < s.count {
                    if s[j] == "_", j + 1 < s.count, Int(String(s[j + 1]), radix: radix) != nil { j += 1; continue }
                    guard Int(String(s[j]), radix: radix) != nil else { break }
                    digits.unicodeScalars.append(s[j])
                    j += 1
                }
                if !digits.isEmpty, let v = Int(digits, radix: radix) { return (.integer(v), j) }
            }
        }
        var j = i
        var digits = ""
        if s[i] == "0" {
            // 0(_?0)*
            j += 1
            while j < s.count {
                if s[j] == "0" { j += 1 } else if s[j] == "_", j + 1 < s.count, s[j + 1] == "0" { j += 2 } else { break }
            }
            return (.integer(0), j)
        }
        while j < s.count {
            if isDigit(s[j]) { digits.unicodeScalars.append(s[j]); j += 1; continue }
            if s[j] == "_", j + 1 < s.count, isDigit(s[j + 1]) { j += 1; continue }
            break
        }
        if let v = Int(digits) { return (.integer(v), j) }
        return (.float(Double(digits) ?? .infinity), j)
    }

    /// `(\d+_)*\d+ ((\.(\d+_)*\d+)? e[+-]?(\d+_)*\d+ | \.(\d+_)*\d+)`
    private func lexFloat(at i: Int) -> (Double, Int)? {
        func digitRun(_ k: Int) -> Int? {
            guard k < s.count, isDigit(s[k]) else { return nil }
            var j = k
            while j < s.count {
                if isDigit(s[j]) { j += 1; continue }
                if s[j] == "_", j + 1 < s.count, isDigit(s[j + 1]) { j += 1; continue }
                break
            }
            return j
        }
        guard var j = digitRun(i) else { return nil }
        var hasFraction = false
        if j < s.count, s[j] == ".", let f = digitRun(j + 1) {
            j = f
            hasFraction = true
        }
        var hasExponent = false
        if j < s.count, s[j] == "e" || s[j] == "E" {
            var k = j + 1
            if k < s.count, s[k] == "+" || s[k] == "-" { k += 1 }
            if let e = digitRun(k) {
                j = e
                hasExponent = true
            }
        }
        guard hasFraction || hasExponent else { return nil }
        let text = String(String.UnicodeScalarView(s[i..<j])).replacingOccurrences(of: "_", with: "")
        guard let value = Double(text) else { return nil }
        return (value, j)
    }

    /// A quoted string with Python's `unicode-escape` decoding of backslash sequences.
    private func lexString(at i: Int) throws -> (String, Int) {
        let quote = s[i]
        var j = i + 1
        var out = String.UnicodeScalarView()
        while j < s.count {
            let c = s[j]
            if c == quote { return (String(out), j + 1) }
            if c != "\\" {
                out.append(c)
                j += 1
                continue
            }
            guard j + 1 < s.count else { break }
            let e = s[j + 1]
            j += 2
            switch e {
            case "\n": break
            case "\\": out.append("\\")
            case "'": out.append("'")
            case "\"": out.append("\"")
            case "a": out.append("\u{07}")
            case "b": out.append("\u{08}")
            case "f": out.append("\u{0C}")
            case "n": out.append("\n")
            case "r": out.append("\r")
            case "t": out.append("\t")
            case "v": out.append("\u{0B}")
            case "0"..."7":
                var value = e.value - 48
                var count = 1
                while count < 3, j < s.count, s[j] >= "0", s[j] <= "7" {
                    value = value * 8 + s[j].value - 48
                    j += 1
                    count += 1
                }
                out.append(Unicode.Scalar(value) ?? "\u{FFFD}")
            case "x", "u", "U":
                let width = e == "x" ? 2 : e == "u" ? 4 : 8
                guard j + width <= s.count,
                      let value = UInt32(String(String.UnicodeScalarView(s[j..<j + width])), radix: 16),
                      let scalar = Unicode.Scalar(value)
                else {
                    throw error("can't decode string: truncated \\\(e) escape", at: j - 2)
                }
                out.append(scalar)
                j += width
            default:
                out.append("\\")
                out.append(e)
            }
        }
        throw error("unterminated string: found the end of the template, expected \(quote)", at: i)
    }
}
