import FinchKernels
import FinchIO

/// How a Split keeps its delimiters (HF `SplitDelimiterBehavior`).
enum SplitBehavior: String, CaseIterable {
    case removed = "Removed", isolated = "Isolated", mergedWithPrevious = "MergedWithPrevious"
    case mergedWithNext = "MergedWithNext", contiguous = "Contiguous"
}

/// When Metaspace puts a replacement character before a piece.
enum PrependScheme: String, CaseIterable {
    case first, never, always
}

/// One stage of the pre-tokenizer, in HF tokenizers' terms (pre_tokenizers/*.rs).
enum PreTokenizerStep {
    case split(Splitter, SplitBehavior, invert: Bool)
    /// Spaces become `replacement`, which is prepended per `prepend`; with `split`, each
    /// replacement starts a new piece.
    case metaspace(replacement: UInt32, prepend: PrependScheme, split: Bool)
    /// ByteLevel's add_prefix_space: a space before every piece that does not start with one.
    case prefixSpace
}

/// The pre-tokenizer as a list of steps applied in order to every piece. A ByteLevel
/// pre-tokenizer at the end adds no step of its own beyond its regex (and prefix space): its
/// byte-to-character mapping is folded into the BPE vocabulary (`BPEModel.byteLevel`).
final class PreTokenizer: @unchecked Sendable {
    let steps: [PreTokenizerStep]

    init(steps: [PreTokenizerStep]) {
        self.steps = steps
    }

    struct Piece { var start: Int; var end: Int; var atTextStart: Bool }

    /// Splits `p[0..<n]` (valid UTF-8) and calls `body` with each piece's bytes.
    /// `atTextStart` says whether these bytes begin the original text (Metaspace "first").
    func run(_ p: UnsafePointer<UInt8>, _ n: Int, atTextStart: Bool, work: PreTokenizerWork,
             _ body: (UnsafePointer<UInt8>, Int) -> Void) throws {
        guard n > 0 else { return }
        if steps.isEmpty { body(p, n); return }
        // Fast path: one scanner split over the whole text, no copies.
        if steps.count == 1, case let .split(splitter, .isolated, false) = steps[0], splitter.coversEverything {
            let text = work.text
            text.load(p, n)
            work.matches.removeAll(keepingCapacity: true)
            try splitter.matches(in: text, from: 0, to: text.count, into: &work.matches)
            let offsets = text.offsets
            for (a, b) in work.matches {
                let start = Int(offsets[a])
                body(p + start, Int(offsets[b]) - start)
            }
            return
        }
        work.bytes.removeAll(keepingCapacity: true)
        work.bytes.append(contentsOf: UnsafeBufferPointer(start: p, count: n))
        work.text.load(p, n)
        work.pieces.removeAll(keepingCapacity: true)
        work.pieces.append(Piece(start: 0, end: work.text.count, atTextStart: atTextStart))
        for step in steps {
            switch step {
            case let .split(splitter, behavior, invert):
                try split(work, splitter, behavior, invert)
            case let .metaspace(replacement, prepend, splitting):
                metaspace(work, replacement, prepend, splitting)
            case .prefixSpace:
                rebuild(work) { piece, scalars, out in
                    if piece.end == piece.start || scalars[piece.start] != 0x20 { out.append(0x20) }
                    for i in piece.start..<piece.end { out.append(scalars[i]) }
                }
            }
        }
        let offsets = work.text.offsets
        work.bytes.withUnsafeBufferPointer { bytes in
            for piece in work.pieces where piece.end > piece.start {
                let start = Int(offsets[piece.start])
                body(bytes.baseAddress! + start, Int(offsets[piece.end]) - start)
            }
        }
    }

    private func split(_ work: PreTokenizerWork, _ splitter: Splitter, _ behavior: SplitBehavior, _ invert: Bool) throws {
        var result: [Piece] = []
        result.reserveCapacity(work.pieces.count * 4)
        for piece in work.pieces {
            work.matches.removeAll(keepingCapacity: true)
            try splitter.matches(in: work.text, from: piece.start, to: piece.end, into: &work.matches)
            // Matches and the gaps between them, in order (pattern.rs `find_matches`).
            var parts: [(Int, Int, Bool)] = []
            var previous = piece.start
            for (a, b) in work.matches {
                if previous != a { parts.append((previous, a, invert)) }
                parts.append((a, b, !invert))
                previous = b
            }
            if previous != piece.end { parts.append((previous, piece.end, invert)) }
            var kept: [(Int, Int)] = []
            switch behavior {
            case .isolated:
                kept = parts.map { ($0.0, $0.1) }
            case .removed:
                kept = parts.filter { !$0.2 }.map { ($0.0, $0.1) }
            case .contiguous:
                var previousMatch = false
                for (a, b, isMatch) in parts {
                    if isMatch == previousMatch, !kept.isEmpty { kept[kept.count - 1].1 = b } else { kept.append((a, b)) }
                    previousMatch = isMatch
                }
            case .mergedWithPrevious:
                var previousMatch = false
                for (a, b, isMatch) in parts {
                    if isMatch && !previousMatch, !kept.isEmpty { kept[kept.count - 1].1 = b } else { kept.append((a, b)) }
                    previousMatch = isMatch
                }
            case .mergedWithNext:
                var previousMatch = false
                for (a, b, isMatch) in parts.reversed() {
                    if isMatch && !previousMatch, !kept.isEmpty { kept[kept.count - 1].0 = a } else { kept.append((a, b)) }
                    previousMatch = isMatch
                }
                kept.reverse()
            }
            for (a, b) in kept where b > a {
                result.append(Piece(start: a, end: b, atTextStart: piece.atTextStart && a == piece.start))
            }
        }
        work.pieces = result
    }

    private func metaspace(_ work: PreTokenizerWork, _ replacement: UInt32, _ prepend: PrependScheme, _ splitting: Bool) {
        rebuild(work) { piece, scalars, out in
            let first = piece.end > piece.start ? scalars[piece.start] : 0
            let startsWithReplacement = first == 0x20 || first == replacement
            switch prepend {
            case .always where !startsWithReplacement: out.append(replacement)
            case .first where !startsWithReplacement && piece.atTextStart: out.append(replacement)
            default: break
            }
            for i in piece.start..<piece.end { out.append(scalars[i] == 0x20 ? replacement : scalars[i]) }
        }
        if splitting {
            var result: [Piece] = []
            let scalars = work.text.scalars
            for piece in work.pieces {
                // Each replacement character starts a piece (MergedWithNext).
                var start = piece.start
                for i in piece.start..<piece.end where scalars[i] == replacement && i > start {
                    result.append(Piece(start: start, end: i, atTextStart: piece.atTextStart && start == piece.start))
                    start = i
                }
                if piece.end > start { result.append(Piece(start: start, end: piece.end, atTextStart: piece.atTextStart && start == piece.start)) }
            }
            work.pieces = result
        }
    }

    /// Replaces each piece's scalars by what `transform` appends, and reloads the text.
    private func rebuild(_ work: PreTokenizerWork, _ transform: (Piece, UnsafeMutablePointer<UInt32>, inout [UInt32]) -> Void) {
        var newPieces: [Piece] = []
        var scalars: [UInt32] = []
        let old = work.text.scalars
        for piece in work.pieces {
            let start = scalars.count
            transform(piece, old, &scalars)
            newPieces.append(Piece(start: start, end: scalars.count, atTextStart: piece.atTextStart))
        }
        work.bytes.removeAll(keepingCapacity: true)
        for v in scalars { appendUTF8(v, to: &work.bytes) }
        work.bytes.withUnsafeBufferPointer { work.text.load($0.baseAddress!, $0.count) }
        work.pieces = newPieces
    }
}

/// Buffers a pre-tokenizer reuses across calls.
final class PreTokenizerWork {
    let text = ScalarText()
    var bytes: [UInt8] = []
    var pieces: [PreTokenizer.Piece] = []
    var matches: [(Int, Int)] = []
}
