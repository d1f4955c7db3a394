import Foundation
import FinchKernels
import FinchIO

/// Options of Python's `json.dumps` that transformers' `tojson` filter exposes.
struct JinjaJSONDumpOptions {
    var ensureASCII = false
    /// nil: one line. Otherwise the text of one indentation level (`indent=4` is four spaces).
    var indent: String? = nil
    var itemSeparator: String? = nil
    var keySeparator: String? = nil
    var sortKeys = false
}

/// Python's `json.dumps(value, ...)`, byte for byte (transformers' `tojson` override calls it directly,
/// so unlike jinja2's own filter nothing is HTML-escaped).
func pythonJSONDumps(_ value: JinjaValue, _ options: JinjaJSONDumpOptions) throws -> String {
    // json.dumps: separators default to (', ', ': '), or (',', ': ') when indenting.
    let itemSep = options.itemSeparator ?? (options.indent == nil ? ", " : ",")
    let keySep = options.keySeparator ?? ": "
    var out = ""
    try writeJSON(value, into: &out, level: 0, options, itemSep: itemSep, keySep: keySep)
    return out
}

private func writeJSON(
    _ value: JinjaValue, into out: inout String, level: Int, _ options: JinjaJSONDumpOptions,
    itemSep: String, keySep: String
) throws {
    switch value {
    case .none: out += "null"
    case .bool(let b): out += b ? "true" : "false"
    case .int(let i): out += String(i)
    case .double(let d):
        // json.dumps writes NaN and Infinity (allow_nan=True).
        if d.isNaN { out += "NaN" } else if d.isInfinite { out += d < 0 ? "-Infinity" : "Infinity" } else { out += pythonFloatRepr(d) }
    case .string(let s), .markup(let s): out += jsonQuote(s, ensureASCII: options.ensureASCII)
    case .array(let items), .tuple(let items):
        if items.isEmpty { out += "[]"; return }
        out += "["
        for (i, item) in items.enumerated() {
            if i > 0 { out += itemSep }
            newline(&out, level + 1, options)
            try writeJSON(item, into: &out, level: level + 1, options, itemSep: itemSep, keySep: keySep)
        }
        newline(&out, level, options)
        out += "]"
    case .object(let object):
        if object.isEmpty { out += "{}"; return }
        out += "{"
        // json.dumps writes int keys as strings.
        func text(_ key: JinjaKey) -> String {
            switch key {
            case .string(let s): return s
            case .int(let i): return String(i)
            }
        }
        var keys = object.keys
        if options.sortKeys {
            keys.sort { a, b in
                switch (a, b) {
                case let (.int(x), .int(y)): return x < y
                default: return text(a).unicodeScalars.lexicographicallyPrecedes(text(b).unicodeScalars)
                }
            }
        }
        for (i, key) in keys.enumerated() {
            if i > 0 { out += itemSep }
            newline(&out, level + 1, options)
            out += jsonQuote(text(key), ensureASCII: options.ensureASCII) + keySep
            try writeJSON(object[key]!, into: &out, level: level + 1, options, itemSep: itemSep, keySep: keySep)
        }
        newline(&out, level, options)
        out += "}"
    case .undefined, .namespace, .function, .iterator:
        throw JinjaRuntimeError("Object of type \(value.typeName) is not JSON serializable")
    }
}

private func newline(_ out: inout String, _ level: Int, _ options: JinjaJSONDumpOptions) {
    guard let indent = options.indent else { return }
    out += "\n" + String(repeating: indent, count: level)
}


// MARK: - Parsing

/// Error from `JinjaValue(jsonText:)`.
public struct JinjaJSONError: Error, CustomStringConvertible {
    /// 0-based byte offset into the UTF-8 text where parsing failed.
    public let offset: Int
    /// What was wrong there.
    public let message: String
    public var description: String { "invalid JSON at byte \(offset): \(message)" }
}

/// A small JSON parser that keeps object keys in source order and tells 1 from 1.0, as `json.loads` does.
struct JinjaJSONParser {
    private let bytes: [UInt8]
    private var pos = 0
    private var depth = 0

    init(text: String) { bytes = Array(text.utf8) }

    mutating func parseDocument() throws -> JinjaValue {
        let value = try parseValue()
        skipSpace()
        if pos != bytes.count { throw fail("unexpected trailing characters") }
        return value
    }

    private func fail(_ message: String) -> JinjaJSONError { JinjaJSONError(offset: pos, message: message) }

    private mutating func skipSpace() {
        while pos < bytes.count, [0x20, 0x0A, 0x0D, 0x09].contains(bytes[pos]) { pos += 1 }
    }

    private mutating func parseValue() throws -> JinjaValue {
        skipSpace()
        guard pos < bytes.count else { throw fail("unexpected end of input") }
        switch bytes[pos] {
        case UInt8(ascii: "{"): return try parseObject()
        case UInt8(ascii: "["): return try parseArray()
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try expectWord("true"); return .bool(true)
        case UInt8(ascii: "f"): try expectWord("false"); return .bool(false)
        case UInt8(ascii: "n"): try expectWord("null"); return .none
        case UInt8(ascii: "N"): try expectWord("NaN"); return .double(.nan)
        case UInt8(ascii: "I"): try expectWord("Infinity"); return .double(.infinity)
        default: return try parseNumber()
        }
    }

    private mutating func expectWord(_ word: String) throws {
        let w = Array(word.utf8)
        guard pos + w.count <= bytes.count, Array(bytes[pos..<pos + w.count]) == w else { throw fail("expected '\(word)'") }
        pos += w.count
    }

    private mutating func nested<T>(_ body: (inout JinjaJSONParser) throws -> T) throws -> T {
        depth += 1
        defer { depth -= 1 }
        if depth > 512 { throw fail("nesting too deep") }
        return try body(&self)
    }

    private mutating func parseObject() throws -> JinjaValue {
        try nested { p in
            p.pos += 1
            var object = JinjaObject()
            p.skipSpace()
            if p.pos < p.bytes.count, p.bytes[p.pos] == UInt8(ascii: "}") { p.pos += 1; return .object(object) }
            while true {
                p.skipSpace()
                guard p.pos < p.bytes.count, p.bytes[p.pos] == UInt8(ascii: "\"") else { throw p.fail("expected a string key") }
                let key = try p.parseString()
                p.skipSpace()
                guard p.pos < p.bytes.count, p.bytes[p.pos] == UInt8(ascii: ":") else { throw p.fail("expected ':'") }
                p.pos += 1
                object[key] = try p.parseValue()
                p.skipSpace()
                guard p.pos < p.bytes.count else { throw p.fail("unexpected end of input") }
                if p.bytes[p.pos] == UInt8(ascii: ",") { p.pos += 1; continue }
                if p.bytes[p.pos] == UInt8(ascii: "}") { p.pos += 1; return .object(object) }
                throw p.fail("expected ',' or '}'")
            }
        }
    }

    private mutating func parseArray() throws -> JinjaValue {
        try nested { p in
            p.pos += 1
            var items: [JinjaValue] = []
            p.skipSpace()
            if p.pos < p.bytes.count, p.bytes[p.pos] == UInt8(ascii: "]") { p.pos += 1; return .array(items) }
            while true {
                items.append(try p.parseValue())
                p.skipSpace()
                guard p.pos < p.bytes.count else { throw p.fail("unexpected end of input") }
                if p.bytes[p.pos] == UInt8(ascii: ",") { p.pos += 1; continue }
                if p.bytes[p.pos] == UInt8(ascii: "]") { p.pos += 1; return .array(items) }
                throw p.fail("expected ',' or ']'")
            }
        }
    }

    private mutating func parseHex4() throws -> UInt32 {
        guard pos + 4 <= bytes.count, let v = UInt32(String(decoding: bytes[pos..<pos + 4], as: UTF8.self), radix: 16)
        else { throw fail("bad \\u escape") }
        pos += 4
        return v
    }

    private mutating func parseString() throws -> String {
        pos += 1
        var out = String.UnicodeScalarView()
        var runStart = pos
        func flush(_ p: JinjaJSONParser, _ end: Int) {
            // One scalar at a time: UnicodeScalarView.append(contentsOf:) rebuilds the whole string.
            for scalar in String(decoding: p.bytes[runStart..<end], as: UTF8.self).unicodeScalars { out.append(scalar) }
        }
        while pos < bytes.count {
            let b = bytes[pos]
            if b == UInt8(ascii: "\"") {
                flush(self, pos)
                pos += 1
                return String(out)
            }
            if b == UInt8(ascii: "\\") {
                flush(self, pos)
                pos += 1
                guard pos < bytes.count else { break }
                let e = bytes[pos]
                pos += 1
                switch e {
                case UInt8(ascii: "\""): out.append("\"")
                case UInt8(ascii: "\\"): out.append("\\")
                case UInt8(ascii: "/"): out.append("/")
                case UInt8(ascii: "b"): out.append("\u{08}")
                case UInt8(ascii: "f"): out.append("\u{0C}")
                case UInt8(ascii: "n"): out.append("\n")
                case UInt8(ascii: "r"): out.append("\r")
                case UInt8(ascii: "t"): out.append("\t")
                case UInt8(ascii: "u"):
                    var v = try parseHex4()
                    if (0xD800..<0xDC00).contains(v), pos + 6 <= bytes.count,
                       bytes[pos] == UInt8(ascii: "\\"), bytes[pos + 1] == UInt8(ascii: "u") {
                        let save = pos
                        pos += 2
                        let low = try parseHex4()
                        if (0xDC00..<0xE000).contains(low) {
                            v = 0x10000 + ((v - 0xD800) << 10) + (low - 0xDC00)
                        } else {
                            pos = save
                        }
                    }
                    out.append(Unicode.Scalar(v) ?? "\u{FFFD}")
                default: throw fail("bad escape")
                }
                runStart = pos
                continue
            }
            if b < 0x20 { throw fail("control character in string") }
            pos += 1
        }
        throw fail("unterminated string")
    }

    private mutating func parseNumber() throws -> JinjaValue {
        let start = pos
        var isFloat = false
        if pos < bytes.count, bytes[pos] == UInt8(ascii: "-") { pos += 1 }
        while pos < bytes.count {
            let c = bytes[pos]
            if c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") {
                pos += 1
            } else if c == UInt8(ascii: ".") || c == UInt8(ascii: "e") || c == UInt8(ascii: "E")
                || ((c == UInt8(ascii: "+") || c == UInt8(ascii: "-")) && pos > start) {
                isFloat = true
                pos += 1
            } else {
                break
            }
        }
        let text = String(decoding: bytes[start..<pos], as: UTF8.self)
        if text == "-", pos < bytes.count, bytes[pos] == UInt8(ascii: "I") {
            try expectWord("Infinity")
            return .double(-.infinity)
        }
        if !isFloat, let i = Int(text) { return .int(i) }
        guard !text.isEmpty, let d = Double(text) else { pos = start; throw fail("unexpected character") }
        return .double(d)
    }
}
