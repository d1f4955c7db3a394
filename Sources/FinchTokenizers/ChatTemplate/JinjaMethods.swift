import Foundation
import FinchKernels
import FinchIO

// Python methods of str, dict and list that templates call (`content.strip()`, `message.get('x')`).

private let stringMethods: Set<String> = [
    "strip", "lstrip", "rstrip", "split", "rsplit", "splitlines", "startswith", "endswith",
    "upper", "lower", "title", "capitalize", "swapcase", "casefold", "replace", "find", "rfind", "index", "rindex",
    "count", "join", "format", "isdigit", "isdecimal", "isnumeric", "isalpha", "isalnum", "isspace",
    "islower", "isupper", "istitle", "zfill", "center", "ljust", "rjust", "removeprefix", "removesuffix",
    "partition", "rpartition",
]
private let dictMethods: Set<String> = ["items", "keys", "values", "get", "copy"]
private let listMethods: Set<String> = ["index", "count", "copy"]
/// Methods that mutate; ImmutableSandboxedEnvironment refuses them.
private let unsafeDictMethods: Set<String> = ["clear", "pop", "popitem", "setdefault", "update"]
private let unsafeListMethods: Set<String> = ["append", "clear", "pop", "reverse", "insert", "sort", "extend", "remove"]

/// `value.name` as a callable, when `value` has such a method.
func jinjaBoundMethod(_ value: JinjaValue, _ name: String) -> JinjaValue? {
    let known: Set<String>
    switch value {
    case .string: known = stringMethods
    case .object: known = dictMethods
    case .array, .tuple: known = listMethods
    default: return nil
    }
    guard known.contains(name) else { return nil }
    return .function(JinjaFunction(name: "\(value.typeName).\(name)") { args in
        guard let result = try jinjaCallMethod(value, name, args) else {
            throw JinjaRuntimeError("'\(value.typeName)' object has no attribute '\(name)'")
        }
        return result
    })
}

/// Calls `receiver.name(args)`; nil when the receiver has no such method.
func jinjaCallMethod(_ receiver: JinjaValue, _ name: String, _ args: JinjaArguments) throws -> JinjaValue? {
    switch receiver {
    case .string(let s):
        guard stringMethods.contains(name) else { return nil }
        return try callStringMethod(s, name, args)
    case .object(let o):
        if unsafeDictMethods.contains(name) {
            throw JinjaRuntimeError("access to attribute '\(name)' of 'dict' object is unsafe.")
        }
        guard dictMethods.contains(name) else { return nil }
        let p = try bindArguments(args, ["key", "default"], function: "dict.\(name)")
        switch name {
        case "items": return .array(o.pairs.map { .tuple([$0.key.value, $0.value]) })
        case "keys": return .array(o.keys.map(\.value))
        case "values": return .array(o.values)
        case "copy": return receiver
        default:
            guard let key = p[0] else { throw JinjaRuntimeError("get expected at least 1 argument, got 0") }
            return JinjaKey(key).flatMap { o[$0] } ?? p[1] ?? JinjaValue.none
        }
    case .array(let items), .tuple(let items):
        if case .array = receiver, unsafeListMethods.contains(name) {
            throw JinjaRuntimeError("access to attribute '\(name)' of 'list' object is unsafe.")
        }
        guard listMethods.contains(name) else { return nil }
        if name == "copy" { return receiver }
        guard let needle = args.positional.first else { throw JinjaRuntimeError("\(name)() takes exactly one argument (0 given)") }
        if name == "count" { return .int(items.filter { pyEquals($0, needle) }.count) }
        guard let i = items.firstIndex(where: { pyEquals($0, needle) }) else {
            throw JinjaRuntimeError("\(needle.pyRepr) is not in list")
        }
        return .int(i)
    default:
        return nil
    }
}

/// Binds Python-style arguments to parameter names; missing ones are nil.
func bindArguments(_ args: JinjaArguments, _ names: [String], function: String) throws -> [JinjaValue?] {
    if args.positional.count > names.count {
        throw JinjaRuntimeError("\(function)() takes at most \(names.count) arguments (\(args.positional.count) given)")
    }
    var bound: [JinjaValue?] = args.positional + Array(repeating: nil, count: names.count - args.positional.count)
    for (key, value) in args.keywords {
        guard let i = names.firstIndex(of: key) else {
            throw JinjaRuntimeError("\(function)() got an unexpected keyword argument '\(key)'")
        }
        if bound[i] != nil && i < args.positional.count {
            throw JinjaRuntimeError("\(function)() got multiple values for argument '\(key)'")
        }
        bound[i] = value
    }
    return bound
}

private func stringArgument(_ value: JinjaValue?, _ function: String) throws -> String? {
    switch value {
    case nil, .none?: return nil
    case .string(let s)?: return s
    case let v?: throw JinjaRuntimeError("\(function) arg must be None or str, not \(v.typeName)")
    }
}

private func intArgument(_ value: JinjaValue?, _ defaultValue: Int, _ function: String) throws -> Int {
    guard let value, !(value == .none) else { return defaultValue }
    guard let i = pythonInt(value) else {
        throw JinjaRuntimeError("'\(value.typeName)' object cannot be interpreted as an integer")
    }
    return i
}

private func callStringMethod(_ s: String, _ name: String, _ args: JinjaArguments) throws -> JinjaValue {
    let fn = "str.\(name)"
    switch name {
    case "strip", "lstrip", "rstrip":
        let chars = try stringArgument(try bindArguments(args, ["chars"], function: fn)[0], fn)
        return .string(pythonStrip(s, chars: chars, leading: name != "rstrip", trailing: name != "lstrip"))
    case "split", "rsplit":
        let p = try bindArguments(args, ["sep", "maxsplit"], function: fn)
        let parts = try pythonSplit(s, separator: try stringArgument(p[0], fn), maxSplit: try intArgument(p[1], -1, fn), fromRight: name == "rsplit")
        return .array(parts.map { .string($0) })
    case "splitlines":
        let keepEnds = (try bindArguments(args, ["keepends"], function: fn)[0])?.isTruthy ?? false
        return .array(pythonSplitLines(s, keepEnds: keepEnds).map { .string($0) })
    case "startswith", "endswith":
        let p = try bindArguments(args, ["prefix", "start", "end"], function: fn)
        let scalars = Array(s.unicodeScalars)
        let range = clampedRange(count: scalars.count, start: try intArgument(p[1], 0, fn), end: try intArgument(p[2], scalars.count, fn))
        let window = range.isEmpty && range.lowerBound > scalars.count ? [] : Array(scalars[range])
        let candidates: [JinjaValue]
        switch p[0] {
        case .string?: candidates = [p[0]!]
        case .tuple(let items)?: candidates = items
        default: throw JinjaRuntimeError("\(name) first arg must be str or a tuple of str, not \(p[0]?.typeName ?? "nothing")")
        }
        for candidate in candidates {
            guard case .string(let affix) = candidate else { throw JinjaRuntimeError("tuple for \(name) must only contain str") }
            let a = Array(affix.unicodeScalars)
            if name == "startswith" ? window.starts(with: a) : window.reversed().starts(with: a.reversed()) { return .bool(true) }
        }
        return .bool(false)
    case "upper": return .string(s.uppercased())
    case "lower": return .string(s.lowercased())
    case "casefold": return .string(s.lowercased())
    case "swapcase":
        return .string(String(String.UnicodeScalarView(s.unicodeScalars.flatMap { c -> [Unicode.Scalar] in
            let p = c.properties
            let mapped = p.isUppercase ? p.lowercaseMapping : p.isLowercase ? p.uppercaseMapping : String(c)
            return Array(mapped.unicodeScalars)
        })))
    case "title": return .string(pythonTitle(s))
    case "capitalize": return .string(pythonCapitalize(s))
    case "replace":
        let p = try bindArguments(args, ["old", "new", "count"], function: fn)
        guard case .string(let old)? = p[0], case .string(let new)? = p[1] else {
            throw JinjaRuntimeError("replace() arguments must be str")
        }
        return .string(try pythonReplace(s, old, new, count: try intArgument(p[2], -1, fn)))
    case "find", "rfind", "index", "rindex", "count":
        let p = try bindArguments(args, ["sub", "start", "end"], function: fn)
        guard case .string(let sub)? = p[0] else { throw JinjaRuntimeError("must be str, not \(p[0]?.typeName ?? "nothing")") }
        let scalars = Array(s.unicodeScalars)
        let range = clampedRange(count: scalars.count, start: try intArgument(p[1], 0, fn), end: try intArgument(p[2], scalars.count, fn))
        let needle = Array(sub.unicodeScalars)
        let hits = occurrences(of: needle, in: scalars, range: range)
        if name == "count" { return .int(hits.count) }
        let found = name.hasPrefix("r") ? hits.last : hits.first
        if let found { return .int(found) }
        if name.hasSuffix("index") { throw JinjaRuntimeError("substring not found") }
        return .int(-1)
    case "join":
        let items = try pythonIterate(args.positional.first ?? .undefined)
        return .string(try items.map { item -> String in
            guard case .string(let t) = item else { throw JinjaRuntimeError("sequence item: expected str instance, \(item.typeName) found") }
            return t
        }.joined(separator: s))
    case "format":
        return .string(try pythonStrFormat(s, args))
    case "isdigit", "isdecimal", "isnumeric":
        return .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.numericType != nil && (name == "isnumeric" || $0.properties.numericType != .numeric) && (name != "isdecimal" || $0.properties.numericType == .decimal) })
    case "isalpha": return .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.isAlphabetic })
    case "isalnum": return .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.isAlphabetic || $0.properties.numericType != nil })
    case "isspace": return .bool(!s.isEmpty && s.unicodeScalars.allSatisfy(isPythonWhitespace))
    case "islower": return .bool(pythonIsLower(s))
    case "isupper": return .bool(pythonIsUpper(s))
    case "istitle": return .bool(!s.isEmpty && pythonTitle(s) == s && s.unicodeScalars.contains { $0.properties.isCased })
    case "zfill":
        let width = try intArgument(args.positional.first, 0, fn)
        let scalars = Array(s.unicodeScalars)
        guard scalars.count < width else { return .string(s) }
        try JinjaLimits.checkWidth(width)
        let padding = String(repeating: "0", count: width - scalars.count)
        if let first = scalars.first, first == "+" || first == "-" { return .string(String(first) + padding + String(String.UnicodeScalarView(scalars.dropFirst()))) }
        return .string(padding + s)
    case "center", "ljust", "rjust":
        let p = try bindArguments(args, ["width", "fillchar"], function: fn)
        let width = try intArgument(p[0], 0, fn)
        let fill = try stringArgument(p[1], fn) ?? " "
        return .string(try pythonPad(s, width: width, fill: fill, align: name == "center" ? "c" : name == "ljust" ? "<" : ">"))
    case "removeprefix", "removesuffix":
        guard case .string(let affix)? = args.positional.first else { throw JinjaRuntimeError("\(name)() argument must be str") }
        if name == "removeprefix" { return .string(s.unicodeScalars.starts(with: affix.unicodeScalars) ? String(String.UnicodeScalarView(s.unicodeScalars.dropFirst(affix.unicodeScalars.count))) : s) }
        return .string(s.unicodeScalars.reversed().starts(with: affix.unicodeScalars.reversed()) && !affix.isEmpty ? String(String.UnicodeScalarView(s.unicodeScalars.dropLast(affix.unicodeScalars.count))) : s)
    case "partition", "rpartition":
        guard case .string(let sep)? = args.positional.first, !sep.isEmpty else { throw JinjaRuntimeError("empty separator") }
        let scalars = Array(s.unicodeScalars)
        let hits = occurrences(of: Array(sep.unicodeScalars), in: scalars, range: 0..<scalars.count)
        guard let at = name == "partition" ? hits.first : hits.last else {
            return name == "partition" ? .tuple([.string(s), "", ""]) : .tuple(["", "", .string(s)])
        }
        let n = sep.unicodeScalars.count
        return .tuple([.string(String(String.UnicodeScalarView(scalars[..<at]))), .string(sep), .string(String(String.UnicodeScalarView(scalars[(at + n)...])))])
    default:
        throw JinjaRuntimeError("'str' object has no attribute '\(name)'")
    }
}

/// Python's clamping of `start`/`end` arguments of str methods.
private func clampedRange(count: Int, start: Int, end: Int) -> Range<Int> {
    func clamp(_ i: Int) -> Int { i < 0 ? max(0, i + count) : min(i, count) }
    let a = clamp(start), b = clamp(end)
    return a <= b ? a..<b : a..<a
}

/// Start offsets of non-overlapping occurrences, left to right; an empty needle matches everywhere.
private func occurrences(of needle: [Unicode.Scalar], in haystack: [Unicode.Scalar], range: Range<Int>) -> [Int] {
    if needle.isEmpty { return Array(range.lowerBound...range.upperBound) }
    var hits: [Int] = []
    var i = range.lowerBound
    while i + needle.count <= range.upperBound {
        if haystack[i] == needle[0] && Array(haystack[i..<i + needle.count]) == needle {
            hits.append(i)
            i += needle.count
        } else {
            i += 1
        }
    }
    return hits
}

func pythonStrip(_ s: String, chars: String?, leading: Bool = true, trailing: Bool = true) -> String {
    let set = chars.map { Set($0.unicodeScalars) }
    let strip: (Unicode.Scalar) -> Bool = { c in set.map { $0.contains(c) } ?? isPythonWhitespace(c) }
    let scalars = s.unicodeScalars
    var a = scalars.startIndex, b = scalars.endIndex
    if leading { while a < b && strip(scalars[a]) { a = scalars.index(after: a) } }
    if trailing {
        while b > a {
            let before = scalars.index(before: b)
            guard strip(scalars[before]) else { break }
            b = before
        }
    }
    return a == scalars.startIndex && b == scalars.endIndex ? s : String(scalars[a..<b])
}

func pythonSplit(_ s: String, separator: String?, maxSplit: Int, fromRight: Bool = false) throws -> [String] {
    let scalars = Array(s.unicodeScalars)
    func text(_ r: Range<Int>) -> String { String(String.UnicodeScalarView(scalars[r])) }
    let limit = maxSplit < 0 ? Int.max : maxSplit
    guard let separator else {
        // Runs of whitespace separate; leading/trailing whitespace gives no empty parts.
        var parts: [Range<Int>] = []
        if !fromRight {
            var i = 0
            while i < scalars.count {
                while i < scalars.count && isPythonWhitespace(scalars[i]) { i += 1 }
                if i == scalars.count { break }
                if parts.count == limit {
                    parts.append(i..<scalars.count)
                    break
                }
                var j = i
                while j < scalars.count && !isPythonWhitespace(scalars[j]) { j += 1 }
                parts.append(i..<j)
                i = j
            }
        } else {
            var j = scalars.count
            while j > 0 {
                while j > 0 && isPythonWhitespace(scalars[j - 1]) { j -= 1 }
                if j == 0 { break }
                if parts.count == limit {
                    parts.append(0..<j)
                    break
                }
                var i = j
                while i > 0 && !isPythonWhitespace(scalars[i - 1]) { i -= 1 }
                parts.append(i..<j)
                j = i
            }
            parts.reverse()
        }
        return parts.map(text)
    }
    let sep = Array(separator.unicodeScalars)
    if sep.isEmpty { throw JinjaRuntimeError("empty separator") }
    var hits = occurrences(of: sep, in: scalars, range: 0..<scalars.count)
    if fromRight {
        // Right-to-left matching can differ for overlapping separators; scan from the end.
        hits = []
        var i = scalars.count - sep.count
        while i >= 0 {
            if Array(scalars[i..<i + sep.count]) == sep { hits.append(i); i -= sep.count } else { i -= 1 }
        }
        hits.reverse()
        if hits.count > limit { hits = Array(hits.suffix(limit)) }
    } else if hits.count > limit {
        hits = Array(hits.prefix(limit))
    }
    var parts: [String] = []
    var start = 0
    for h in hits {
        parts.append(text(start..<h))
        start = h + sep.count
    }
    parts.append(text(start..<scalars.count))
    return parts
}

func pythonSplitLines(_ s: String, keepEnds: Bool) -> [String] {
    let breaks: Set<UInt32> = [0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029]
    let scalars = Array(s.unicodeScalars)
    var lines: [String] = []
    var start = 0, i = 0
    while i < scalars.count {
        if breaks.contains(scalars[i].value) {
            var end = i + 1
            if scalars[i] == "\r", end < scalars.count, scalars[end] == "\n" { end += 1 }
            lines.append(String(String.UnicodeScalarView(scalars[start..<(keepEnds ? end : i)])))
            start = end
            i = end
        } else {
            i += 1
        }
    }
    if start < scalars.count { lines.append(String(String.UnicodeScalarView(scalars[start...]))) }
    return lines
}

func pythonReplace(_ s: String, _ old: String, _ new: String, count: Int) throws -> String {
    let scalars = Array(s.unicodeScalars)
    let newCount = new.unicodeScalars.count, oldCount = old.unicodeScalars.count
    // Replacing "" inserts `new` between every character: check the size before building it.
    let possible = oldCount == 0 ? scalars.count + 1 : scalars.count / max(oldCount, 1)
    let most = count < 0 ? possible : min(count, possible)
    if newCount > oldCount {
        let (grow, o1) = most.multipliedReportingOverflow(by: newCount - oldCount)
        let (total, o2) = scalars.count.addingReportingOverflow(grow)
        if o1 || o2 || total > JinjaLimits.maxStringBytes {
            throw JinjaRuntimeError("replace() would build a string past the template budget of \(JinjaLimits.maxStringBytes)")
        }
    }
    let hits = occurrences(of: Array(old.unicodeScalars), in: scalars, range: 0..<scalars.count)
    let used = count < 0 ? hits : Array(hits.prefix(count))
    // UTF-8 bytes, built once (appending sequences to a UnicodeScalarView copies it every time).
    var out: [UInt8] = []
    out.reserveCapacity(s.utf8.count + used.count * new.utf8.count)
    let newBytes = Array(new.utf8)
    func put(_ range: Range<Int>) { for i in range { UTF8.encode(scalars[i]) { out.append($0) } } }
    var start = 0
    for h in used {
        put(start..<h)
        out.append(contentsOf: newBytes)
        if oldCount == 0 {
            if h < scalars.count { put(h..<(h + 1)) }
            start = min(h + 1, scalars.count)
        } else {
            start = h + oldCount
        }
    }
    if start < scalars.count { put(start..<scalars.count) }
    return String(decoding: out, as: UTF8.self)
}

/// Python's `str.title()`: a cased character after an uncased one starts a word.
func pythonTitle(_ s: String) -> String {
    var out = ""
    var previousCased = false
    for c in s.unicodeScalars {
        let p = c.properties
        out += previousCased ? p.lowercaseMapping : p.titlecaseMapping
        previousCased = p.isCased
    }
    return out
}

/// Python's `str.capitalize()`: first character title-cased, the rest lower-cased.
func pythonCapitalize(_ s: String) -> String {
    guard let first = s.unicodeScalars.first else { return s }
    return first.properties.titlecaseMapping + String(String.UnicodeScalarView(s.unicodeScalars.dropFirst())).lowercased()
}

func pythonIsLower(_ s: String) -> Bool {
    let cased = s.unicodeScalars.filter { $0.properties.isCased }
    return !cased.isEmpty && cased.allSatisfy { !$0.properties.isUppercase && !$0.properties.changesWhenLowercased }
}

func pythonIsUpper(_ s: String) -> Bool {
    let cased = s.unicodeScalars.filter { $0.properties.isCased }
    return !cased.isEmpty && cased.allSatisfy { !$0.properties.isLowercase && !$0.properties.changesWhenUppercased }
}

/// Pads to `width` code points; `align` is "<", ">", "^" (format's centering) or "c" (`str.center`,
/// which puts an odd extra fill character on the left when `width` is odd).
func pythonPad(_ s: String, width: Int, fill: String, align: Character) throws -> String {
    try JinjaLimits.checkWidth(width)
    let length = s.unicodeScalars.count
    guard width > length else { return s }
    let total = width - length
    let left: Int
    switch align {
    case "<": left = 0
    case ">": left = total
    case "c": left = total / 2 + (total & width & 1)
    default: left = total / 2
    }
    return String(repeating: fill, count: left) + s + String(repeating: fill, count: total - left)
}
