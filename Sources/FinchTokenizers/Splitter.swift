import FinchKernels
import FinchIO

/// What a Split pre-tokenizer splits on. The regexes that real vocabularies use most
/// (GPT-2's, Llama 3's, Qwen2's) are hand-written scanners over classified scalars; any
/// other pattern runs on `PatternRegex`. Scanners produce exactly the regex's matches,
/// which the tests check against `PatternRegex` on a corpus.
package enum Splitter {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    /// (with or without the final `|\s+`, which changes no Isolated split).
    case gpt2
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?LETTERS+|\p{N}{1,D}| ?[^\s\p{L}\p{N}…]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    case llama3(LetterRunScanner)
    /// Each `\p{N}` scalar alone (individual) or runs of them.
    case digits(individual: Bool)
    /// HF Punctuation: ASCII punctuation or general category P.
    case punctuation
    case regex(PatternRegex)

    static let gpt2Pattern = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#
    static package let gpt2PatternShort = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"#
    static let llama3Pattern = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let qwen2Pattern = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let qwen35Pattern = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// The scanner for `pattern` if there is one, else the regex engine. Scanners make every
    /// scalar part of a match, so they stand in for the regex only in Isolated splits (for
    /// GPT-2's pattern without `|\s+`, the regex leaves some whitespace between matches).
    static func forPattern(_ pattern: String, isolated: Bool = true) throws -> Splitter {
        guard isolated else { return .regex(try PatternRegex(pattern)) }
        switch pattern {
        case gpt2Pattern, gpt2PatternShort: return .gpt2
        case llama3Pattern: return .llama3(LetterRunScanner(letters: ScalarClass.letter, maxDigits: 3, punctuationExcludes: ScalarClass.whiteSpace | ScalarClass.letter | ScalarClass.number))
        case qwen2Pattern: return .llama3(LetterRunScanner(letters: ScalarClass.letter, maxDigits: 1, punctuationExcludes: ScalarClass.whiteSpace | ScalarClass.letter | ScalarClass.number))
        case qwen35Pattern: return .llama3(LetterRunScanner(letters: ScalarClass.letter | ScalarClass.mark, maxDigits: 1,
                                                            punctuationExcludes: ScalarClass.whiteSpace | ScalarClass.letter | ScalarClass.mark | ScalarClass.number))
        default: return .regex(try PatternRegex(pattern))
        }
    }

    /// Whether every scalar falls in some match (the scanners): then the matches alone are the split.
    var coversEverything: Bool {
        switch self {
        case .gpt2, .llama3: return true
        default: return false
        }
    }

    /// Matches in scalars `[begin, end)` as (start, end) pairs.
    func matches(in text: ScalarText, from begin: Int, to end: Int, into result: inout [(Int, Int)]) throws {
        switch self {
        case .gpt2: GPT2Scanner.scan(text, begin, end, &result)
        case let .llama3(scanner): scanner.scan(text, begin, end, &result)
        case let .digits(individual):
            var i = begin
            while i < end {
                guard text.classes[i] & ScalarClass.number != 0 else { i += 1; continue }
                var j = i + 1
                if !individual { while j < end && text.classes[j] & ScalarClass.number != 0 { j += 1 } }
                result.append((i, j))
                i = j
            }
        case .punctuation:
            for i in begin..<end {
                let v = text.scalars[i]
                let ascii = v < 0x80 && (0x21...0x2F ~= v || 0x3A...0x40 ~= v || 0x5B...0x60 ~= v || 0x7B...0x7E ~= v)
                if ascii || text.classes[i] & ScalarClass.punctuation != 0 { result.append((i, i + 1)) }
            }
        case let .regex(regex):
            try regex.matches(in: text, from: begin, to: end, into: &result)
        }
    }
}

/// Length of a contraction `'s 't 're 've 'm 'll 'd` starting at `i` (the apostrophe), or 0.
/// Case-insensitive as Oniguruma's `(?i:...)`: simple case mapping, so `ſ` (U+017F) is an s.
@inline(__always)
private func contractionLength(_ s: UnsafeMutablePointer<UInt32>, _ i: Int, _ end: Int, caseInsensitive: Bool) -> Int {
    guard s[i] == 0x27, i + 1 < end else { return 0 }
    @inline(__always) func lower(_ v: UInt32) -> UInt32 {
        guard caseInsensitive else { return v }
        if v >= 0x41 && v <= 0x5A { return v + 0x20 }
        if v == 0x17F { return 0x73 }
        return v
    }
    let a = lower(s[i + 1])
    if a == 0x73 || a == 0x74 || a == 0x6D || a == 0x64 { return 2 }  // s t m d
    guard i + 2 < end else { return 0 }
    let b = lower(s[i + 2])
    if (a == 0x72 && b == 0x65) || (a == 0x76 && b == 0x65) || (a == 0x6C && b == 0x6C) { return 3 }  // re ve ll
    return 0
}

/// `\s+(?!\S)|\s+` at `i` (a whitespace scalar): the run, less its last scalar when a
/// non-space follows and the run is longer than one.
@inline(__always)
private func whitespaceMatch(_ c: UnsafeMutablePointer<UInt32>, _ i: Int, _ end: Int) -> Int {
    var j = i + 1
    while j < end && c[j] & ScalarClass.whiteSpace != 0 { j += 1 }
    if j < end && j - 1 > i { return j - 1 }
    return j
}

enum GPT2Scanner {
    static func scan(_ text: ScalarText, _ begin: Int, _ end: Int, _ result: inout [(Int, Int)]) {
        let s = text.scalars, c = text.classes
        let letter = ScalarClass.letter, number = ScalarClass.number
        let other = ScalarClass.whiteSpace | letter | number
        var i = begin
        while i < end {
            let k = c[i]
            var j: Int
            @inline(__always) func run(_ from: Int, _ bits: UInt32, _ inverted: Bool) -> Int {
                var e = from
                if inverted { while e < end && c[e] & bits == 0 { e += 1 } }
                else { while e < end && c[e] & bits != 0 { e += 1 } }
                return e
            }
            let spaceNext: UInt32 = (s[i] == 0x20 && i + 1 < end) ? c[i + 1] : 0
            let n = contractionLength(s, i, end, caseInsensitive: false)
            if n > 0 { j = i + n }
            else if spaceNext & letter != 0 { j = run(i + 1, letter, false) }
            else if k & letter != 0 { j = run(i + 1, letter, false) }
            else if spaceNext & number != 0 { j = run(i + 1, number, false) }
            else if k & number != 0 { j = run(i + 1, number, false) }
            else if s[i] == 0x20 && i + 1 < end && spaceNext & other == 0 { j = run(i + 1, other, true) }
            else if k & other == 0 { j = run(i + 1, other, true) }
            else { j = whitespaceMatch(c, i, end) }
            result.append((i, j))
            i = j
        }
    }
}

/// The Llama 3 family of patterns (Llama 3, Qwen2, Qwen3.5):
/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?LETTERS+|\p{N}{1,maxDigits}|
///  ?[^\s\p{L}\p{N}...]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
package struct LetterRunScanner {
    /// LETTERS: `\p{L}` or `[\p{L}\p{M}]`.
    let letters: UInt32
    let maxDigits: Int
    /// The negated class of the punctuation alternative.
    let punctuationExcludes: UInt32

    func scan(_ text: ScalarText, _ begin: Int, _ end: Int, _ result: inout [(Int, Int)]) {
        let s = text.scalars, c = text.classes
        let letters = self.letters, excludes = punctuationExcludes
        let prefixExcludes = ScalarClass.lineBreak | ScalarClass.letter | ScalarClass.number
        var i = begin
        while i < end {
            let k = c[i]
            var j: Int
            let n = contractionLength(s, i, end, caseInsensitive: true)
            if n > 0 {
                j = i + n
            } else if k & letters != 0 {
                j = i + 1
                while j < end && c[j] & letters != 0 { j += 1 }
            } else if k & prefixExcludes == 0 && i + 1 < end && c[i + 1] & letters != 0 {
                j = i + 2
                while j < end && c[j] & letters != 0 { j += 1 }
            } else if k & ScalarClass.number != 0 {
                j = i + 1
                while j < end && j - i < maxDigits && c[j] & ScalarClass.number != 0 { j += 1 }
            } else if k & excludes == 0 || (s[i] == 0x20 && i + 1 < end && c[i + 1] & excludes == 0) {
                j = i + 1
                while j < end && c[j] & excludes == 0 { j += 1 }
                while j < end && c[j] & ScalarClass.lineBreak != 0 { j += 1 }
            } else {
                // Whitespace: `\s*[\r\n]+` ends after the run's last line break, if it has one.
                var runEnd = i + 1
                while runEnd < end && c[runEnd] & ScalarClass.whiteSpace != 0 { runEnd += 1 }
                var lastBreak = runEnd - 1
                while lastBreak >= i && c[lastBreak] & ScalarClass.lineBreak == 0 { lastBreak -= 1 }
                if lastBreak >= i {
                    j = lastBreak + 1
                } else {
                    j = runEnd < end && runEnd - 1 > i ? runEnd - 1 : runEnd
                }
            }
            result.append((i, j))
            i = j
        }
    }
}
