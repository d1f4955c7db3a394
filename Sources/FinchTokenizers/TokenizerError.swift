import FinchKernels
import FinchIO

/// Why a tokenizer could not be loaded, or text could not be read. Each case names the file
/// (or input), where in it, what was found and what was expected.
public enum TokenizerError: Error, CustomStringConvertible, Equatable {
    case fileNotFound(path: String)
    case unreadable(path: String, reason: String)
    /// The file does not have the expected structure: `field` says where.
    case malformed(path: String, field: String, found: String, expected: String)
    /// A component Finch does not implement, e.g. kind "pre-tokenizer type", found "Foo".
    case unsupported(path: String, field: String, kind: String, found: String, supported: [String])
    /// A pattern (Split, Replace) that does not parse.
    case invalidPattern(path: String, field: String, pattern: String, reason: String)
    /// Input bytes that are not UTF-8: `source` names the input (a file, "stdin line 3").
    case invalidUTF8(source: String, byteOffset: Int, bytes: [UInt8])
    /// A pattern or normalizer that would take unbounded time or memory on this text: a regex past
    /// its backtracking budget, a normalizer whose output grows past its cap.
    case budgetExceeded(component: String, reason: String)

    public var description: String {
        switch self {
        case let .fileNotFound(path):
            return "\(path): no such file or directory"
        case let .unreadable(path, reason):
            return "\(path): cannot read: \(reason)"
        case let .malformed(path, field, found, expected):
            return "\(path): \(field): found \(found), expected \(expected)"
        case let .unsupported(path, field, kind, found, supported):
            return "\(path): unknown \(kind) \"\(found)\" in \(field); supported: \(supported.joined(separator: ", "))"
        case let .invalidPattern(path, field, pattern, reason):
            return "\(path): \(field): cannot use pattern \(TokenizerError.quoted(pattern)): \(reason)"
        case let .invalidUTF8(source, byteOffset, bytes):
            let hex = bytes.map { String($0, radix: 16, uppercase: true).leftPadded(2) }.joined(separator: " ")
            return "\(source): invalid UTF-8 at byte \(byteOffset) (\(hex)); expected UTF-8 text"
        case let .budgetExceeded(component, reason):
            return "tokenizer \(component): \(reason)"
        }
    }

    /// `s` as a JSON string, as error messages show found text.
    static func quoted(_ s: String) -> String { jsonQuote(s, ensureASCII: false) }
}

private extension String {
    func leftPadded(_ width: Int) -> String { count >= width ? self : String(repeating: "0", count: width - count) + self }
}

/// Strict UTF-8 checking, to name the offending byte when a file is not valid text.
package enum UTF8Validation {
    /// The offset of the first byte that does not start or continue a valid UTF-8 sequence
    /// (overlong forms, surrogates and values above U+10FFFF are invalid), or nil.
    package static func firstInvalidOffset<C: Collection>(in bytes: C) -> Int? where C.Element == UInt8 {
        let b = Array(bytes)
        var i = 0
        let n = b.count
        while i < n {
            let c = b[i]
            if c < 0x80 { i += 1; continue }
            var need = 0, low: UInt8 = 0x80, high: UInt8 = 0xBF
            switch c {
            case 0xC2...0xDF: need = 1
            case 0xE0: need = 2; low = 0xA0
            case 0xE1...0xEC, 0xEE, 0xEF: need = 2
            case 0xED: need = 2; high = 0x9F
            case 0xF0: need = 3; low = 0x90
            case 0xF1...0xF3: need = 3
            case 0xF4: need = 3; high = 0x8F
            default: return i
            }
            guard i + need < n else { return i }
            if b[i + 1] < low || b[i + 1] > high { return i }
            for k in 2..<(need + 1) where b[i + k] & 0xC0 != 0x80 { return i }
            i += need + 1
        }
        return nil
    }

    /// The bytes as a String, or `TokenizerError.invalidUTF8` naming `source` and the offset.
    package static func string<C: Collection>(from bytes: C, source: String) throws -> String where C.Element == UInt8 {
        let array = Array(bytes)
        if let offset = firstInvalidOffset(in: array) {
            throw TokenizerError.invalidUTF8(source: source, byteOffset: offset, bytes: Array(array[offset..<min(offset + 4, array.count)]))
        }
        return String(decoding: array, as: UTF8.self)
    }
}
