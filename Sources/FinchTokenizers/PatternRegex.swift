#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import FinchKernels
import FinchIO

/// A small backtracking regex engine over Unicode scalars, for the pre-tokenizer and
/// normalizer patterns of tokenizer.json that have no hand-written scanner. It follows
/// Oniguruma (which HF tokenizers uses) where these patterns depend on it: leftmost match,
/// alternatives tried in order, `\p{..}` by general category, `\s` = White_Space, `\d` =
/// any decimal digit, `(?i:...)` with simple case mapping, `^`/`$` at line boundaries,
/// lookahead, atomic groups and possessive quantifiers. Lookbehind, backreferences and
/// POSIX brackets are refused by name.
final package class PatternRegex: @unchecked Sendable {
    let source: String
    private let program: [Instruction]
    private let sets: [ScalarSet]

    enum Anchor { case lineStart, lineEnd, textStart, textEnd, textEndBeforeNewline, wordBoundary, notWordBoundary }

    private enum Instruction {
        case scalar(UInt32)
        case set(Int)
        case anyButNewline
        case split(Int, Int)
        case jump(Int)
        case assert(Anchor)
        /// Run the sub-program at pc + 1 (it ends in `.match`); continue at `next` if it
        /// matched (negate: if it did not), without consuming input.
        case look(negate: Bool, next: Int)
        /// Run the sub-program at pc + 1 once, keep its first match, never backtrack into it.
        case atomic(next: Int)
        case match
    }

    struct Failure: Error, CustomStringConvertible {
        var message: String
        var offset: Int
        var description: String { "\(message) at character \(offset)" }
    }

    init(_ pattern: String) throws {
        source = pattern
        var parser = Parser(Array(pattern.unicodeScalars))
        let node = try parser.parseWhole()
        var compiler = Compiler(sets: parser.sets)
        compiler.emit(node)
        compiler.program.append(.match)
        program = compiler.program
        sets = compiler.sets
    }

    /// Non-overlapping matches in scalars `[begin, end)` of `text`, as (start, end) scalar
    /// indices, found as Oniguruma's find_iter does (an empty match right after the previous
    /// match is skipped).
    /// Backtracking steps allowed per call of `matches`: a fixed allowance plus a generous amount
    /// per scalar (the patterns of real tokenizers take a few steps per scalar, quadratic at worst
    /// on long whitespace runs, as in Oniguruma). Nested quantifiers such as `(a+)+$` take
    /// exponential time and run out of it within a fraction of a second; Oniguruma bounds
    /// backtracking the same way (its retry limit).
    static func stepBudget(scalars: Int) -> Int { 10_000_000 + 20_000 * scalars }

    func matches(in text: ScalarText, from begin: Int, to end: Int, into result: inout [(Int, Int)]) throws {
        var budget = Self.stepBudget(scalars: end - begin)
        var searchFrom = begin
        var lastMatchEnd = -1
        var stack: [(Int, Int)] = []
        while searchFrom <= end {
            var found: (Int, Int)? = nil
            var s = searchFrom
            while s <= end {
                if let e = try run(0, s, begin, end, text, &stack, &budget) { found = (s, e); break }
                s += 1
            }
            guard let (start, stop) = found else { return }
            if start == stop && stop == lastMatchEnd {
                searchFrom = start + 1
                continue
            }
            result.append((start, stop))
            lastMatchEnd = stop
            searchFrom = stop > start ? stop : stop + 1
            if start == stop && stop == end { return }
        }
    }

    private func run(_ startPC: Int, _ startPos: Int, _ begin: Int, _ end: Int, _ text: ScalarText,
                     _ stack: inout [(Int, Int)], _ budget: inout Int) throws -> Int? {
        let base = stack.count
        defer { stack.removeSubrange(base...) }
        var pc = startPC, pos = startPos
        let scalars = text.scalars, classes = text.classes
        while true {
            budget -= 1
            if budget < 0 {
                throw TokenizerError.budgetExceeded(
                    component: "pattern \(TokenizerError.quoted(source))",
                    reason: "more than \(Self.stepBudget(scalars: end - begin)) backtracking steps on a text of \(end - begin) characters; the pattern backtracks catastrophically (nested quantifiers such as (a+)+)")
            }
            var ok = true
            switch program[pc] {
            case let .scalar(v):
                if pos < end && scalars[pos] == v { pos += 1; pc += 1 } else { ok = false }
            case let .set(i):
                if pos < end && sets[i].contains(scalars[pos], classes[pos]) { pos += 1; pc += 1 } else { ok = false }
            case .anyButNewline:
                if pos < end && scalars[pos] != 0x0A { pos += 1; pc += 1 } else { ok = false }
            case let .split(first, second):
                stack.append((second, pos))
                pc = first
            case let .jump(target):
                pc = target
            case let .assert(anchor):
                if check(anchor, pos, begin, end, text) { pc += 1 } else { ok = false }
            case let .look(negate, next):
                let matched = try run(pc + 1, pos, begin, end, text, &stack, &budget) != nil
                if matched != negate { pc = next } else { ok = false }
            case let .atomic(next):
                if let e = try run(pc + 1, pos, begin, end, text, &stack, &budget) { pos = e; pc = next } else { ok = false }
            case .match:
                return pos
            }
            if !ok {
                guard stack.count > base else { return nil }
                (pc, pos) = stack.removeLast()
            }
        }
    }

    private func check(_ anchor: Anchor, _ pos: Int, _ begin: Int, _ end: Int, _ text: ScalarText) -> Bool {
        func isWord(_ i: Int) -> Bool { i >= begin && i < end && text.classes[i] & ScalarClass.word != 0 }
        switch anchor {
        case .lineStart: return pos == begin || text.scalars[pos - 1] == 0x0A
        case .lineEnd: return pos == end || text.scalars[pos] == 0x0A
        case .textStart: return pos == begin
        case .textEnd: return pos == end
        case .textEndBeforeNewline: return pos == end || (pos == end - 1 && text.scalars[pos] == 0x0A)
        case .wordBoundary: return isWord(pos - 1) != isWord(pos)
        case .notWordBoundary: return isWord(pos - 1) == isWord(pos)
        }
    }

    // MARK: - Syntax tree

    private indirect enum Node {
        case empty
        case scalar(UInt32, caseInsensitive: Bool)
        case set(Int)
        case anyButNewline
        case concat([Node])
        case alternation([Node])
        case repetition(Node, min: Int, max: Int?, greedy: Bool, possessive: Bool)
        case look(Node, negate: Bool)
        case atomic(Node)
        case assert(Anchor)

        var canBeEmpty: Bool {
            switch self {
            case .empty, .look, .assert: return true
            case .scalar, .set, .anyButNewline: return false
            case let .concat(items): return items.allSatisfy(\.canBeEmpty)
            case let .alternation(items): return items.contains(where: \.canBeEmpty)
            case let .repetition(node, min, _, _, _): return min == 0 || node.canBeEmpty
            case let .atomic(node): return node.canBeEmpty
            }
        }
    }

    private struct Parser {
        let s: [Unicode.Scalar]
        var i = 0
        var sets: [ScalarSet] = []

        init(_ s: [Unicode.Scalar]) { self.s = s }

        func fail(_ message: String) -> Failure { Failure(message: message, offset: i) }
        var atEnd: Bool { i >= s.count }
        func peek(_ k: Int = 0) -> Unicode.Scalar? { i + k < s.count ? s[i + k] : nil }

        mutating func parseWhole() throws -> Node {
            let node = try parseAlternation(caseInsensitive: false)
            if !atEnd { throw fail("unmatched ')'") }
            return node
        }

        mutating func parseAlternation(caseInsensitive: Bool) throws -> Node {
            var ci = caseInsensitive
            var branches: [Node] = [try parseConcat(&ci)]
            while peek() == "|" {
                i += 1
                branches.append(try parseConcat(&ci))
            }
            return branches.count == 1 ? branches[0] : .alternation(branches)
        }

        mutating func parseConcat(_ ci: inout Bool) throws -> Node {
            var items: [Node] = []
            while let c = peek(), c != "|", c != ")" {
                if c == "(" && peek(1) == "?" && peek(2) == "i" && peek(3) == ")" { ci = true; i += 4; continue }
                if c == "(" && peek(1) == "?" && peek(2) == "-" && peek(3) == "i" && peek(4) == ")" { ci = false; i += 5; continue }
                var atom = try parseAtom(ci)
                atom = try parseQuantifiers(atom)
                items.append(atom)
            }
            return items.count == 1 ? items[0] : (items.isEmpty ? .empty : .concat(items))
        }

        mutating func parseQuantifiers(_ atom: Node) throws -> Node {
            var node = atom
            while let c = peek() {
                var minimum = 0, maximum: Int? = nil
                let start = i
                if c == "*" { i += 1 }
                else if c == "+" { minimum = 1; i += 1 }
                else if c == "?" { maximum = 1; i += 1 }
                else if c == "{", let (lo, hi) = parseBraces() { minimum = lo; maximum = hi }
                else { break }
                var greedy = true, possessive = false
                if peek() == "?" { greedy = false; i += 1 }
                else if peek() == "+" && s[start] != "{" { possessive = true; i += 1 }
                if case .assert = node { throw Failure(message: "quantifier after an anchor", offset: start) }
                if (maximum == nil) && node.canBeEmpty {
                    throw Failure(message: "unbounded quantifier on an expression that can match empty", offset: start)
                }
                if let maximum, maximum < minimum { throw Failure(message: "quantifier {\(minimum),\(maximum)} with max below min", offset: start) }
                if minimum > 1000 || (maximum ?? 0) > 1000 { throw Failure(message: "repetition count above 1000", offset: start) }
                node = .repetition(node, min: minimum, max: maximum, greedy: greedy, possessive: possessive)
            }
            return node
        }

        /// `{n}`, `{n,}`, `{n,m}`, `{,m}`; nil (and nothing consumed) if not a quantifier.
        mutating func parseBraces() -> (Int, Int?)? {
            var j = i + 1
            func number() -> Int? {
                var value: Int? = nil
                while j < s.count, (0x30...0x39).contains(s[j].value) {
                    value = (value ?? 0) * 10 + Int(s[j].value - 0x30)
                    if value! > 100_000 { return nil }
                    j += 1
                }
                return value
            }
            let lo = number()
            var hi: Int?
            if j < s.count && s[j] == "," {
                j += 1
                hi = number()
                guard lo != nil || hi != nil else { return nil }
            } else {
                guard lo != nil else { return nil }
                hi = lo
            }
            guard j < s.count && s[j] == "}" else { return nil }
            i = j + 1
            return (lo ?? 0, hi)
        }

        mutating func parseAtom(_ ci: Bool) throws -> Node {
            let c = s[i]
            switch c {
            case "(":
                return try parseGroup(ci)
            case "[":
                i += 1
                var set = try parseClass()
                set.caseInsensitive = ci
                return addSet(set)
            case ".":
                i += 1
                return .anyButNewline
            case "^":
                i += 1
                return .assert(.lineStart)
            case "$":
                i += 1
                return .assert(.lineEnd)
            case "\\":
                return try parseEscape(ci)
            case "*", "+", "?":
                throw fail("quantifier '\(c)' with nothing to repeat")
            default:
                i += 1
                return .scalar(c.value, caseInsensitive: ci)
            }
        }

        mutating func addSet(_ set: ScalarSet) -> Node {
            sets.append(set)
            return .set(sets.count - 1)
        }

        mutating func parseGroup(_ ci: Bool) throws -> Node {
            let open = i
            i += 1
            var inner = ci
            var kind = 0  // 0 group, 1 lookahead, 2 negative lookahead, 3 atomic
            if peek() == "?" {
                i += 1
                guard let k = peek() else { throw fail("unterminated group") }
                switch k {
                case ":": i += 1
                case "=": i += 1; kind = 1
                case "!": i += 1; kind = 2
                case ">": i += 1; kind = 3
                case "#":
                    while let c = peek(), c != ")" { i += 1 }
                    guard peek() == ")" else { throw fail("unterminated comment") }
                    i += 1
                    return .empty
                case "<":
                    if peek(1) == "=" || peek(1) == "!" {
                        throw Failure(message: "lookbehind '(?<\(peek(1)!)' is not supported", offset: open)
                    }
                    i += 1
                    while let c = peek(), c != ">" { i += 1 }
                    guard peek() == ">" else { throw fail("unterminated group name") }
                    i += 1
                case "i", "-", "m", "x":
                    var on = true
                    while let f = peek(), f != ":" && f != ")" {
                        if f == "-" { on = false } else if f == "i" { inner = on ? true : false }
                        else { throw Failure(message: "unsupported group option '\(f)'", offset: i) }
                        i += 1
                    }
                    guard peek() == ":" else { throw fail("unsupported inline option group") }
                    i += 1
                default:
                    throw Failure(message: "unsupported group syntax '(?\(k)'", offset: open)
                }
            }
            let body = try parseAlternation(caseInsensitive: inner)
            guard peek() == ")" else { throw Failure(message: "unterminated group", offset: open) }
            i += 1
            switch kind {
            case 1: return .look(body, negate: false)
            case 2: return .look(body, negate: true)
            case 3: return .atomic(body)
            default: return body
            }
        }

        mutating func parseHex(maxDigits: Int, braces: Bool) throws -> UInt32 {
            var value: UInt32 = 0, digits = 0
            if braces {
                guard peek() == "{" else { throw fail("expected '{' after \\x") }
                i += 1
            }
            while digits < (braces ? 8 : maxDigits), let c = peek(), c.isASCII, let d = Int(String(c), radix: 16) {
                value = value * 16 + UInt32(d)
                digits += 1
                i += 1
            }
            if braces {
                guard peek() == "}" else { throw fail("expected '}' in \\x{...}") }
                i += 1
            }
            guard digits > 0, Unicode.Scalar(value) != nil else { throw fail("bad hexadecimal escape") }
            return value
        }

        /// A class escape (`\s`, `\p{L}`, ...) as an item of a set, or nil.
        mutating func classEscape(_ c: Unicode.Scalar) throws -> ScalarSet.Item? {
            switch c {
            case "s": return .bits(ScalarClass.whiteSpace)
            case "S": return .notBits(ScalarClass.whiteSpace)
            case "d": return .bits(ScalarClass.nd)
            case "D": return .notBits(ScalarClass.nd)
            case "w": return .bits(ScalarClass.word)
            case "W": return .notBits(ScalarClass.word)
            case "h": return .ranges([(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)])
            case "H": return .notRanges([(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)])
            case "p", "P":
                var negate = c == "P"
                var name = ""
                if peek() == "{" {
                    i += 1
                    if peek() == "^" { negate.toggle(); i += 1 }
                    while let k = peek(), k != "}" { name.unicodeScalars.append(k); i += 1 }
                    guard peek() == "}" else { throw fail("unterminated \\p{") }
                    i += 1
                } else if let k = peek() {
                    name = String(k); i += 1
                }
                guard let bits = ScalarClass.categoryNames[name] else {
                    throw fail("unsupported property \\p{\(name)} (general categories such as L, Lu, N, P, S, M, Z, C are supported)")
                }
                return negate ? .notBits(bits) : .bits(bits)
            default: return nil
            }
        }

        /// A single escaped scalar inside or outside a class.
        mutating func escapedScalar(_ c: Unicode.Scalar) throws -> UInt32 {
            switch c {
            case "t": return 0x09
            case "n": return 0x0A
            case "r": return 0x0D
            case "f": return 0x0C
            case "v": return 0x0B
            case "a": return 0x07
            case "e": return 0x1B
            case "x": return try peek() == "{" ? parseHex(maxDigits: 8, braces: true) : parseHex(maxDigits: 2, braces: false)
            case "u": return try parseHex(maxDigits: 4, braces: false)
            case "0": return 0
            default:
                if c.properties.isAlphabetic || (c.value >= 0x31 && c.value <= 0x39) {
                    throw Failure(message: "unsupported escape '\\\(c)'", offset: i - 1)
                }
                return c.value
            }
        }

        mutating func parseEscape(_ ci: Bool) throws -> Node {
            i += 1
            guard let c = peek() else { throw fail("pattern ends with '\\'") }
            i += 1
            switch c {
            case "A": return .assert(.textStart)
            case "z": return .assert(.textEnd)
            case "Z": return .assert(.textEndBeforeNewline)
            case "b": return .assert(.wordBoundary)
            case "B": return .assert(.notWordBoundary)
            case "G": return .assert(.textStart)
            default: break
            }
            if let item = try classEscape(c) {
                return addSet(ScalarSet(items: [item], negated: false))
            }
            return .scalar(try escapedScalar(c), caseInsensitive: ci)
        }

        /// After '['.
        mutating func parseClass() throws -> ScalarSet {
            let open = i - 1
            var set = ScalarSet(items: [], negated: false)
            if peek() == "^" { set.negated = true; i += 1 }
            var first = true
            var ranges: [(UInt32, UInt32)] = []
            while true {
                guard let c = peek() else { throw Failure(message: "unterminated character class", offset: open) }
                if c == "]" && !first { i += 1; break }
                first = false
                if c == "[" {
                    if peek(1) == ":" { throw fail("POSIX bracket expressions are not supported") }
                    i += 1
                    let nested = try parseClass()
                    guard !nested.negated else { throw fail("negated nested character class is not supported") }
                    set.items.append(contentsOf: nested.items)
                    continue
                }
                if c == "&" && peek(1) == "&" { throw fail("character class intersection '&&' is not supported") }
                var low: UInt32
                i += 1
                if c == "\\" {
                    guard let e = peek() else { throw fail("pattern ends with '\\'") }
                    i += 1
                    if let item = try classEscape(e) { set.items.append(item); continue }
                    low = try escapedScalar(e)
                } else {
                    low = c.value
                }
                // A range `low-high`, unless '-' is last.
                if peek() == "-", let next = peek(1), next != "]" {
                    i += 1
                    var high: UInt32
                    if next == "\\" {
                        i += 1
                        guard let e = peek() else { throw fail("pattern ends with '\\'") }
                        i += 1
                        if try classEscape(e) != nil { throw fail("class escape as the end of a range") }
                        high = try escapedScalar(e)
                    } else {
                        high = next.value
                        i += 1
                    }
                    guard low <= high else { throw fail("range out of order in character class") }
                    ranges.append((low, high))
                } else {
                    ranges.append((low, low))
                }
            }
            if !ranges.isEmpty { set.items.append(.ranges(ranges)) }
            return set
        }
    }

    private struct Compiler {
        var program: [Instruction] = []
        var sets: [ScalarSet]

        init(sets: [ScalarSet]) { self.sets = sets }

        mutating func emit(_ node: Node) {
            switch node {
            case .empty: break
            case let .scalar(v, ci):
                if ci, let set = ScalarSet.caseInsensitiveScalar(v) {
                    sets.append(set)
                    program.append(.set(sets.count - 1))
                } else {
                    program.append(.scalar(v))
                }
            case let .set(i): program.append(.set(i))
            case .anyButNewline: program.append(.anyButNewline)
            case let .concat(items): for item in items { emit(item) }
            case let .alternation(branches):
                // split L1, next; L1: a; jump end; next: split L2, next2; ...
                var jumps: [Int] = []
                for (k, branch) in branches.enumerated() {
                    if k < branches.count - 1 {
                        let split = program.count
                        program.append(.split(split + 1, -1))
                        emit(branch)
                        jumps.append(program.count)
                        program.append(.jump(-1))
                        program[split] = .split(split + 1, program.count)
                    } else {
                        emit(branch)
                    }
                }
                for j in jumps { program[j] = .jump(program.count) }
            case let .repetition(body, minimum, maximum, greedy, possessive):
                if possessive {
                    emit(.atomic(.repetition(body, min: minimum, max: maximum, greedy: greedy, possessive: false)))
                    return
                }
                for _ in 0..<minimum { emit(body) }
                if let maximum {
                    // Nested optionals: (x(x(x)?)?)? so that every skip ends the repetition.
                    var exits: [Int] = []
                    for _ in minimum..<maximum {
                        exits.append(program.count)
                        program.append(.split(-1, -1))
                        emit(body)
                    }
                    let end = program.count
                    for e in exits { program[e] = greedy ? .split(e + 1, end) : .split(end, e + 1) }
                } else {
                    let loop = program.count
                    program.append(.split(-1, -1))
                    emit(body)
                    program.append(.jump(loop))
                    program[loop] = greedy ? .split(loop + 1, program.count) : .split(program.count, loop + 1)
                }
            case let .look(body, negate):
                let at = program.count
                program.append(.match)
                emit(body)
                program.append(.match)
                program[at] = .look(negate: negate, next: program.count)
            case let .atomic(body):
                let at = program.count
                program.append(.match)
                emit(body)
                program.append(.match)
                program[at] = .atomic(next: program.count)
            case let .assert(anchor):
                program.append(.assert(anchor))
            }
        }
    }
}

/// A set of scalars: ranges and general-category tests, optionally negated.
struct ScalarSet {
    enum Item {
        case ranges([(UInt32, UInt32)])
        case notRanges([(UInt32, UInt32)])
        case bits(UInt32)
        case notBits(UInt32)
    }
    var items: [Item]
    var negated: Bool
    var caseInsensitive = false

    func contains(_ v: UInt32, _ classBits: UInt32) -> Bool {
        var hit = matches(v, classBits)
        if !hit && caseInsensitive, let scalar = Unicode.Scalar(v) {
            for other in ScalarSet.caseVariants(scalar) where other != v {
                if matches(other, ScalarClass.of(other)) { hit = true; break }
            }
        }
        return hit != negated
    }

    private func matches(_ v: UInt32, _ classBits: UInt32) -> Bool {
        for item in items {
            switch item {
            case let .ranges(ranges): for (lo, hi) in ranges where v >= lo && v <= hi { return true }
            case let .notRanges(ranges): if !ranges.contains(where: { v >= $0.0 && v <= $0.1 }) { return true }
            case let .bits(bits): if classBits & bits != 0 { return true }
            case let .notBits(bits): if classBits & bits == 0 { return true }
            }
        }
        return false
    }

    /// The scalar itself and its single-scalar lower- and uppercase mappings.
    static func caseVariants(_ s: Unicode.Scalar) -> [UInt32] {
        var result: [UInt32] = [s.value]
        for mapped in [s.properties.lowercaseMapping, s.properties.uppercaseMapping, s.properties.titlecaseMapping] {
            let scalars = mapped.unicodeScalars
            if scalars.count == 1, let m = scalars.first?.value, !result.contains(m) { result.append(m) }
        }
        return result
    }

    static func caseInsensitiveScalar(_ v: UInt32) -> ScalarSet? {
        guard let s = Unicode.Scalar(v) else { return nil }
        let variants = caseVariants(s)
        guard variants.count > 1 else { return nil }
        var set = ScalarSet(items: [.ranges(variants.map { ($0, $0) })], negated: false)
        set.caseInsensitive = true
        return set
    }
}
