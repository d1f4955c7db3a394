import FinchKernels
import FinchIO

/// A token matched in the text before the model runs (tokenizer.json `added_tokens`, or the
/// control and user-defined tokens of a GGUF vocabulary).
struct AddedToken {
    var id: Int32
    var content: String
    var special: Bool
    var singleWord = false
    var lstrip = false
    var rstrip = false
    /// Matched in the normalized text (after the normalizer) rather than the raw text.
    var normalized = false
}

/// Finds added tokens in text as HF tokenizers' AddedVocabulary does
/// (tokenizer/added_vocabulary.rs `find_matches`): leftmost-longest matches, each checked
/// for `single_word` and widened over whitespace by `lstrip` / `rstrip`.
final class AddedTokenMatcher: @unchecked Sendable {
    private let tokens: [AddedToken]
    /// Trie over pattern bytes: (node, byte) → child; `terminal[node]` = token index or -1.
    private var edges = PairTable(capacity: 64)
    private var terminal: [Int32] = [-1]
    private var firstBytes = [Bool](repeating: false, count: 256)

    var isEmpty: Bool { tokens.isEmpty }

    /// `patterns[i]` is what token `tokens[i]` matches (its content, or normalized content).
    init(tokens: [AddedToken], patterns: [[UInt8]]) {
        self.tokens = tokens
        for (index, pattern) in patterns.enumerated() where !pattern.isEmpty {
            var node: Int32 = 0
            for byte in pattern {
                if let child = edges.find(node, Int32(byte)) {
                    node = Int32(truncatingIfNeeded: child)
                } else {
                    let child = Int32(terminal.count)
                    terminal.append(-1)
                    edges.insert(node, Int32(byte), rank: 0, merged: child)
                    node = child
                }
            }
            // Two tokens with the same pattern: the later one wins, as a later map insert would.
            terminal[Int(node)] = Int32(index)
            firstBytes[Int(pattern[0])] = true
        }
    }

    /// A piece of the text: a token (id) or plain text (id < 0), as byte offsets.
    struct Split { var start: Int; var end: Int; var id: Int32 }

    /// Splits `p[0..<n]` into added tokens and the text between them.
    func split(_ p: UnsafePointer<UInt8>, _ n: Int, into result: inout [Split]) {
        var startOffset = 0
        var position = 0
        while let (matchStart, matchEnd, index) = nextMatch(p, n, from: position) {
            position = matchEnd
            let token = tokens[index]
            var start = matchStart, stop = matchEnd
            if token.singleWord {
                let before = start > 0 && isWordScalar(scalarBefore(p, start))
                let after = stop < n && isWordScalar(scalarAt(p, stop, n))
                if before || after { continue }
            }
            if token.lstrip {
                var s = start
                while s > 0 {
                    let (v, len) = scalarEndingAt(p, s)
                    guard isWhitespace(v) else { break }
                    s -= len
                }
                start = max(s, startOffset)
            }
            if token.rstrip {
                while stop < n {
                    let v = scalarAt(p, stop, n)
                    guard isWhitespace(v) else { break }
                    stop += utf8SequenceLength(p[stop])
                }
            }
            if startOffset < start { result.append(Split(start: startOffset, end: start, id: -1)) }
            result.append(Split(start: start, end: stop, id: token.id))
            startOffset = stop
        }
        if startOffset != n { result.append(Split(start: startOffset, end: n, id: -1)) }
    }

    /// The leftmost match at or after `from`, longest among those starting there.
    private func nextMatch(_ p: UnsafePointer<UInt8>, _ n: Int, from: Int) -> (Int, Int, Int)? {
        var i = from
        while i < n {
            if firstBytes[Int(p[i])] {
                var node: Int32 = 0
                var j = i
                var best = -1, bestEnd = i
                while j < n, let child = edges.find(node, Int32(p[j])) {
                    node = Int32(truncatingIfNeeded: child)
                    j += 1
                    if terminal[Int(node)] >= 0 { best = Int(terminal[Int(node)]); bestEnd = j }
                }
                if best >= 0 { return (i, bestEnd, best) }
            }
            i += 1
        }
        return nil
    }

    private func isWhitespace(_ v: UInt32) -> Bool { ScalarClass.of(v) & ScalarClass.whiteSpace != 0 }
    /// Rust regex `\w` (Unicode): alphabetic, marks, decimal digits, connector punctuation.
    private func isWordScalar(_ v: UInt32) -> Bool {
        if let s = Unicode.Scalar(v), s.properties.isAlphabetic || s.properties.isJoinControl { return true }
        return ScalarClass.of(v) & (ScalarClass.mark | ScalarClass.nd | ScalarClass.pc) != 0
    }

    private func scalarAt(_ p: UnsafePointer<UInt8>, _ i: Int, _ n: Int) -> UInt32 {
        let b0 = UInt32(p[i])
        let len = min(utf8SequenceLength(p[i]), n - i)
        switch len {
        case 1: return b0
        case 2: return (b0 & 0x1F) << 6 | UInt32(p[i + 1] & 0x3F)
        case 3: return (b0 & 0x0F) << 12 | UInt32(p[i + 1] & 0x3F) << 6 | UInt32(p[i + 2] & 0x3F)
        default: return (b0 & 0x07) << 18 | UInt32(p[i + 1] & 0x3F) << 12 | UInt32(p[i + 2] & 0x3F) << 6 | UInt32(p[i + 3] & 0x3F)
        }
    }

    /// The scalar that ends at byte offset `end`, and its length.
    private func scalarEndingAt(_ p: UnsafePointer<UInt8>, _ end: Int) -> (UInt32, Int) {
        var s = end - 1
        while s > 0 && p[s] & 0xC0 == 0x80 { s -= 1 }
        return (scalarAt(p, s, end), end - s)
    }

    private func scalarBefore(_ p: UnsafePointer<UInt8>, _ end: Int) -> UInt32 { scalarEndingAt(p, end).0 }
}
