import Foundation
import FinchKernels
import FinchIO

/// Text normalization before pre-tokenization, as HF tokenizers' normalizers/*.rs.
indirect enum Normalizer {
    case sequence([Normalizer])
    /// Prepends the string to non-empty text.
    case prepend([UInt8])
    /// Replaces every occurrence of a literal string.
    case replaceLiteral(pattern: [UInt8], content: [UInt8])
    /// Replaces every match of a regex.
    case replaceRegex(PatternRegex, content: [UInt8])
    case nfc, nfd, nfkc, nfkd
    /// Per-scalar full lowercase mapping (Rust's `char::to_lowercase`).
    case lowercase
    /// Removes leading and/or trailing White_Space.
    case strip(left: Bool, right: Bool)
    /// Removes combining marks (M), as HF's StripAccents (used after NFD).
    case stripAccents

    /// The most bytes a normalizer may make of `count` input bytes: real normalizers grow text
    /// a few times at most (NFKC expands a few scalars up to 18-fold, Replace " " by "▁" triples
    /// spaces); a chain of Replaces that multiplies it a thousandfold per step is refused.
    static func outputLimit(inputBytes count: Int) -> Int { 64 * count + 4096 }

    /// The normalized bytes; `TokenizerError.budgetExceeded` once the output would pass `limit`.
    func apply(_ bytes: [UInt8], limit: Int) throws -> [UInt8] {
        func checked(_ result: [UInt8]) throws -> [UInt8] {
            if result.count > limit { throw Normalizer.overLimit(limit) }
            return result
        }
        switch self {
        case let .sequence(items):
            var result = bytes
            for item in items { result = try item.apply(result, limit: limit) }
            return result
        case let .prepend(prefix):
            return try checked(bytes.isEmpty ? bytes : prefix + bytes)
        case let .replaceLiteral(pattern, content):
            return try Normalizer.replaceAll(bytes, pattern, content, limit: limit)
        case let .replaceRegex(regex, content):
            let text = ScalarText()
            bytes.withUnsafeBufferPointer { text.load($0.baseAddress ?? UnsafePointer(bitPattern: 1)!, $0.count) }
            var matches: [(Int, Int)] = []
            try regex.matches(in: text, from: 0, to: text.count, into: &matches)
            guard !matches.isEmpty else { return bytes }
            var result: [UInt8] = []
            var previous = 0
            for (a, b) in matches {
                if result.count > limit { throw Normalizer.overLimit(limit) }
                result.append(contentsOf: bytes[Int(text.offsets[previous])..<Int(text.offsets[a])])
                result.append(contentsOf: content)
                previous = b
            }
            result.append(contentsOf: bytes[Int(text.offsets[previous])...])
            return try checked(result)
        case .nfc: return try checked(Array(Normalizer.string(bytes).precomposedStringWithCanonicalMapping.utf8))
        case .nfd: return try checked(Array(Normalizer.string(bytes).decomposedStringWithCanonicalMapping.utf8))
        case .nfkc: return try checked(Array(Normalizer.string(bytes).precomposedStringWithCompatibilityMapping.utf8))
        case .nfkd: return try checked(Array(Normalizer.string(bytes).decomposedStringWithCompatibilityMapping.utf8))
        case .lowercase:
            var result: [UInt8] = []
            result.reserveCapacity(bytes.count)
            for scalar in Normalizer.string(bytes).unicodeScalars {
                if scalar.isASCII {
                    let v = scalar.value
                    result.append(UInt8(v >= 0x41 && v <= 0x5A ? v + 0x20 : v))
                } else {
                    result.append(contentsOf: scalar.properties.lowercaseMapping.utf8)
                }
            }
            return result
        case let .strip(left, right):
            let scalars = Array(Normalizer.string(bytes).unicodeScalars)
            var a = 0, b = scalars.count
            if left { while a < b && scalars[a].properties.isWhitespace { a += 1 } }
            if right { while b > a && scalars[b - 1].properties.isWhitespace { b -= 1 } }
            var result = String.UnicodeScalarView()
            result.append(contentsOf: scalars[a..<b])
            return Array(String(result).utf8)
        case .stripAccents:
            var result = String.UnicodeScalarView()
            // HF filters `is_combining_mark`: general categories Mn, Mc and Me.
            for scalar in Normalizer.string(bytes).unicodeScalars where ScalarClass.of(scalar.value) & ScalarClass.mark == 0 {
                result.append(scalar)
            }
            return Array(String(result).utf8)
        }
    }

    private static func string(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    private static func overLimit(_ limit: Int) -> TokenizerError {
        .budgetExceeded(component: "normalizer", reason: "its output passes \(limit) bytes, 64 times its input; a Replace or Prepend chain grows the text without bound")
    }

    /// Leftmost non-overlapping replacement of a literal byte string (valid UTF-8 on both sides).
    static func replaceAll(_ bytes: [UInt8], _ pattern: [UInt8], _ content: [UInt8], limit: Int = .max) throws -> [UInt8] {
        guard !pattern.isEmpty, bytes.count >= pattern.count else { return bytes }
        var result: [UInt8] = []
        result.reserveCapacity(bytes.count + bytes.count / 4)
        let first = pattern[0], m = pattern.count
        var i = 0
        bytes.withUnsafeBufferPointer { b in
            pattern.withUnsafeBufferPointer { pat in
                while i < b.count {
                    if b[i] == first && i + m <= b.count && memcmp(b.baseAddress! + i, pat.baseAddress!, m) == 0 {
                        if result.count + content.count > limit { return }
                        result.append(contentsOf: content)
                        i += m
                    } else {
                        result.append(b[i])
                        i += 1
                    }
                }
            }
        }
        if i < bytes.count { throw overLimit(limit) }
        return result
    }
}
