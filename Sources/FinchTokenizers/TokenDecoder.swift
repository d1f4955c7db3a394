import FinchKernels
import FinchIO

/// Token strings back to text (HF decoders/*.rs and the Decoder halves of pre_tokenizers):
/// each stage maps the list of token strings to a new list; the results are joined.
indirect enum TokenDecoder {
    /// GPT-2's byte-level characters back to bytes, then lossy UTF-8.
    case byteLevel
    /// Replacement characters back to spaces; dropped from the first token unless `prepend` is never.
    case metaspace(replacement: Unicode.Scalar, prependScheme: PrependScheme)
    /// Runs of `<0xXX>` tokens become their bytes' text (or one U+FFFD per byte if invalid).
    case byteFallback
    /// All tokens joined into one.
    case fuse
    /// Up to `start` leading and `stop` trailing `content` characters removed from each token.
    case strip(content: Unicode.Scalar, start: Int, stop: Int)
    case replaceLiteral(pattern: String, content: String)
    case replaceRegex(PatternRegex, content: String)
    case sequence([TokenDecoder])

    func decode(_ tokens: [String]) -> String {
        decodeChain(tokens).joined()
    }

    func decodeChain(_ tokens: [String]) -> [String] {
        switch self {
        case .byteLevel:
            var bytes: [UInt8] = []
            for token in tokens {
                let start = bytes.count
                var mapped = true
                for scalar in token.unicodeScalars {
                    let v = Int(scalar.value)
                    if v < ByteLevelAlphabet.byteOfScalar.count, ByteLevelAlphabet.byteOfScalar[v] >= 0 {
                        bytes.append(UInt8(ByteLevelAlphabet.byteOfScalar[v]))
                    } else {
                        mapped = false
                        break
                    }
                }
                if !mapped {
                    bytes.removeSubrange(start...)
                    bytes.append(contentsOf: token.utf8)
                }
            }
            return [String(decoding: bytes, as: UTF8.self)]
        case let .metaspace(replacement, scheme):
            return tokens.enumerated().map { index, token in
                var result = String.UnicodeScalarView()
                for scalar in token.unicodeScalars {
                    if scalar == replacement {
                        if !(index == 0 && scheme != .never) { result.append(" ") }
                    } else {
                        result.append(scalar)
                    }
                }
                return String(result)
            }
        case .byteFallback:
            var result: [String] = []
            var pending: [UInt8] = []
            func flush() {
                guard !pending.isEmpty else { return }
                if let text = String(validating: pending, as: UTF8.self) {
                    result.append(text)
                } else {
                    result.append(contentsOf: repeatElement("\u{FFFD}", count: pending.count))
                }
                pending.removeAll()
            }
            for token in tokens {
                let utf8 = Array(token.utf8)
                if utf8.count == 6, utf8[0] == 0x3C, utf8[1] == 0x30, utf8[2] == 0x78, utf8[5] == 0x3E,
                   let byte = UInt8(String(decoding: utf8[3..<5], as: UTF8.self), radix: 16) {
                    pending.append(byte)
                } else {
                    flush()
                    result.append(token)
                }
            }
            flush()
            return result
        case .fuse:
            return [tokens.joined()]
        case let .strip(content, start, stop):
            return tokens.map { token in
                let chars = Array(token.unicodeScalars)
                var startCut = 0
                for i in 0..<min(start, chars.count) {
                    if chars[i] == content { startCut = i + 1 } else { break }
                }
                var stopCut = chars.count
                for i in 0..<min(stop, chars.count) {
                    let index = chars.count - i - 1
                    if chars[index] == content { stopCut = index } else { break }
                }
                guard stopCut > startCut else { return "" }
                var result = String.UnicodeScalarView()
                result.append(contentsOf: chars[startCut..<stopCut])
                return String(result)
            }
        case let .replaceLiteral(pattern, content):
            let p = Array(pattern.utf8), c = Array(content.utf8)
            return tokens.map { String(decoding: ((try? Normalizer.replaceAll(Array($0.utf8), p, c)) ?? Array($0.utf8)), as: UTF8.self) }
        case let .replaceRegex(regex, content):
            let normalizer = Normalizer.replaceRegex(regex, content: Array(content.utf8))
            // A pattern past its backtracking budget leaves the token as it is (decoding cannot fail).
            return tokens.map { String(decoding: (try? normalizer.apply(Array($0.utf8), limit: .max)) ?? Array($0.utf8), as: UTF8.self) }
        case let .sequence(items):
            var result = tokens
            for item in items { result = item.decodeChain(result) }
            return result
        }
    }
}

/// GPT-2's reversible mapping of bytes to printable characters (HF pre_tokenizers/byte_level.rs
/// `bytes_char`): printable Latin-1 bytes map to themselves, the other 68 to U+0100 onward.
enum ByteLevelAlphabet {
    /// Scalar value of each byte's character.
    static let scalarOfByte: [UInt32] = {
        var table = [UInt32](repeating: 0, count: 256)
        var next: UInt32 = 256
        for b in 0..<256 {
            if (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b) {
                table[b] = UInt32(b)
            } else {
                table[b] = next
                next += 1
            }
        }
        return table
    }()

    /// Byte of each character's scalar value, -1 where none (indices up to U+0143).
    static let byteOfScalar: [Int16] = {
        var table = [Int16](repeating: -1, count: 0x144)
        for (b, v) in scalarOfByte.enumerated() { table[Int(v)] = Int16(b) }
        return table
    }()

    /// The raw bytes a byte-level token string stands for, or nil if it has other characters.
    static func bytes(of token: String) -> [UInt8]? {
        var result: [UInt8] = []
        result.reserveCapacity(token.utf8.count)
        for scalar in token.unicodeScalars {
            let v = Int(scalar.value)
            guard v < byteOfScalar.count, byteOfScalar[v] >= 0 else { return nil }
            result.append(UInt8(byteOfScalar[v]))
        }
        return result
    }
}
