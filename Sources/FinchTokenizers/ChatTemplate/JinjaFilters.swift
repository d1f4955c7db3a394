import Foundation
import FinchKernels
import FinchIO

/// jinja2's built-in filters (jinja2/filters.py) plus transformers' `tojson` override.
enum JinjaFilters {
    typealias Filter = @Sendable (JinjaInterpreter, JinjaValue, JinjaArguments) throws -> JinjaValue

    /// Filters that see a Markup operand as Markup (the rest see its string).
    static let keepsMarkup: Set<String> = ["safe", "escape", "e", "forceescape"]

    static let table: [String: Filter] = {
        var t: [String: Filter] = [
            "abs": { _, v, _ in
                switch v {
                case .int(let i): return .int(i.magnitude > UInt(Int.max) ? Int.max : abs(i))
                case .bool(let b): return .int(b ? 1 : 0)
                case .double(let d): return .double(abs(d))
                default: throw JinjaRuntimeError("bad operand type for abs(): '\(v.typeName)'")
                }
            },
            "attr": { _, v, a in
                let p = try bindArguments(a, ["name"], function: "attr")
                guard case .string(let name)? = p[0] else { throw JinjaRuntimeError("attr() needs an attribute name") }
                if v.isUndefined { throw JinjaUndefinedUse() }
                if case .namespace(let ns) = v { return ns[name] ?? .undefined }
                return jinjaBoundMethod(v, name) ?? .undefined
            },
            "batch": { _, v, a in
                let p = try bindArguments(a, ["linecount", "fill_with"], function: "batch")
                guard let size = p[0].flatMap(pythonInt), size > 0 else { throw JinjaRuntimeError("batch() needs a positive size") }
                return .iterator(JinjaIterator(lazy: {
                    var rows: [JinjaValue] = []
                    var row: [JinjaValue] = []
                    for item in try pythonIterate(v) {
                        row.append(item)
                        if row.count == size { rows.append(.array(row)); row = [] }
                    }
                    if !row.isEmpty {
                        if let fill = p[1], !(fill == .none) { row += Array(repeating: fill, count: size - row.count) }
                        rows.append(.array(row))
                    }
                    return rows
                }))
            },
            "capitalize": { _, v, _ in .string(pythonCapitalize(v.pyStr)) },
            "center": { _, v, a in
                let width = try bindArguments(a, ["width"], function: "center")[0].flatMap(pythonInt) ?? 80
                return .string(try pythonPad(v.pyStr, width: width, fill: " ", align: "c"))
            },
            "default": { _, v, a in
                let p = try bindArguments(a, ["default_value", "boolean"], function: "default")
                if v.isUndefined || ((p[1]?.isTruthy ?? false) && !v.isTruthy) { return p[0] ?? .string("") }
                return v
            },
            "dictsort": { _, v, a in
                let p = try bindArguments(a, ["case_sensitive", "by", "reverse"], function: "dictsort")
                guard case .object(let o) = v else { throw JinjaRuntimeError("dictsort() needs a mapping") }
                let byValue: Bool
                switch p[1] {
                case nil, .string("key")?: byValue = false
                case .string("value")?: byValue = true
                default: throw JinjaRuntimeError("You can only sort by either \"key\" or \"value\"")
                }
                let caseSensitive = p[0]?.isTruthy ?? false
                let items = o.pairs.map { JinjaValue.tuple([$0.key.value, $0.value]) }
                return .array(try sortValues(items, reverse: p[2]?.isTruthy ?? false) { item in
                    guard case .tuple(let kv) = item else { return item }
                    return caseSensitive ? kv[byValue ? 1 : 0] : ignoreCase(kv[byValue ? 1 : 0])
                })
            },
            "escape": { _, v, _ in
                if case .markup = v { return v }  // already safe: not escaped twice
                return .markup(htmlEscape(v.pyStr))
            },
            "first": { _, v, _ in
                switch v {
                case .undefined: return .undefined
                case .iterator(let it): return try it.next() ?? .undefined
                default: return try pythonIterate(v).first ?? .undefined
                }
            },
            "float": { _, v, a in
                if v.isUndefined { throw JinjaUndefinedUse() }
                let fallback = try bindArguments(a, ["default"], function: "float")[0] ?? .double(0)
                return pythonFloat(v).map { .double($0) } ?? fallback
            },
            "format": { _, v, a in
                if !a.keywords.isEmpty { return .string(try pythonPercentFormat(v.pyStr, .object(JinjaObject(a.keywords)))) }
                return .string(try pythonPercentFormat(v.pyStr, .tuple(a.positional)))
            },
            "indent": { _, v, a in
                let p = try bindArguments(a, ["width", "first", "blank"], function: "indent")
                let indentation: String
                switch p[0] {
                case .string(let s)?: indentation = s
                case let w?:
                    let width = max(0, pythonInt(w) ?? 4)
                    try JinjaLimits.checkWidth(width)
                    indentation = String(repeating: " ", count: width)
                case nil: indentation = "    "
                }
                guard case .string(let s) = v else { throw JinjaUndefinedUse() }
                // jinja2 appends a newline before splitlines(), so a trailing newline yields an empty last line.
                var lines = pythonSplitLines(s + "\n", keepEnds: false)
                var result: String
                if p[2]?.isTruthy ?? false {
                    result = lines.joined(separator: "\n" + indentation)
                } else {
                    result = lines.removeFirst()
                    if !lines.isEmpty {
                        result += "\n" + lines.map { $0.isEmpty ? $0 : indentation + $0 }.joined(separator: "\n")
                    }
                }
                if p[1]?.isTruthy ?? false { result = indentation + result }
                return .string(result)
            },
            "int": { _, v, a in
                let p = try bindArguments(a, ["default", "base"], function: "int")
                if v.isUndefined { throw JinjaUndefinedUse() }
                return pythonIntConversion(v, base: p[1].flatMap(pythonInt) ?? 10).map { .int($0) } ?? p[0] ?? .int(0)
            },
            "items": { _, v, _ in
                switch v {
                case .undefined: return .iterator(JinjaIterator([]))
                case .object(let o): return .iterator(JinjaIterator(o.pairs.map { .tuple([$0.key.value, $0.value]) }))
                default: return .iterator(JinjaIterator(lazy: { throw JinjaRuntimeError("Can only get item pairs from a mapping.") }))
                }
            },
            "join": { interpreter, v, a in
                let p = try bindArguments(a, ["d", "attribute"], function: "join")
                var items = try pythonIterate(v)
                if let attribute = p[1], !(attribute == .none) { items = try items.map { try jinjaAttributePath($0, attribute) } }
                return .string(items.map(\.pyStr).joined(separator: p[0]?.pyStr ?? ""))
            },
            "last": { _, v, _ in
                switch v {
                case .undefined: return .undefined
                case .iterator(let it): throw JinjaRuntimeError("'\(it.typeName)' object is not reversible")
                default: return try pythonIterate(v).last ?? .undefined
                }
            },
            "length": { _, v, _ in .int(try pythonLength(v)) },
            "list": { _, v, _ in .array(try pythonIterate(v)) },
            "lower": { _, v, _ in .string(v.pyStr.lowercased()) },
            "map": { interpreter, v, a in
                if a.positional.isEmpty, let attribute = a.keywords.first(where: { $0.0 == "attribute" })?.1 {
                    let fallback = a.keywords.first(where: { $0.0 == "default" })?.1
                    if let extra = a.keywords.first(where: { $0.0 != "attribute" && $0.0 != "default" }) {
                        throw JinjaRuntimeError("Unexpected keyword argument '\(extra.0)'")
                    }
                    // jinja2's map yields nothing for a falsy value.
                    return .iterator(JinjaIterator(lazy: {
                        v.isTruthy ? try pythonIterate(v).map { try jinjaAttributePath($0, attribute, default: fallback) } : []
                    }))
                }
                guard case .string(let name)? = a.positional.first else { throw JinjaRuntimeError("map requires a filter argument") }
                let rest = JinjaArguments(Array(a.positional.dropFirst()), keywords: a.keywords)
                return .iterator(JinjaIterator(lazy: {
                    v.isTruthy ? try pythonIterate(v).map { try interpreter.applyFilter(name, $0, rest) } : []
                }))
            },
            "max": { _, v, a in try minOrMax(v, a, pickMax: true) },
            "min": { _, v, a in try minOrMax(v, a, pickMax: false) },
            // pformat sorts dict keys; its wrapping of reprs longer than 80 columns is not reproduced.
            "pprint": { _, v, _ in .string(sortedRepr(v)) },
            "reject": { interpreter, v, a in try interpreter.selectOrReject(v, a, keep: false, attribute: false) },
            "rejectattr": { interpreter, v, a in try interpreter.selectOrReject(v, a, keep: false, attribute: true) },
            "replace": { _, v, a in
                let p = try bindArguments(a, ["old", "new", "count"], function: "replace")
                guard let old = p[0], let new = p[1] else { throw JinjaRuntimeError("replace() needs old and new strings") }
                return .string(try pythonReplace(v.pyStr, old.pyStr, new.pyStr, count: p[2].flatMap(pythonInt) ?? -1))
            },
            "reverse": { _, v, _ in
                switch v {
                case .string(let s): return .string(String(String.UnicodeScalarView(s.unicodeScalars.reversed())))
                // reversed(list) is an iterator; a generator cannot be reversed, so jinja2 builds a list.
                case .array(let items), .tuple(let items): return .iterator(JinjaIterator(items.reversed(), typeName: "list_reverseiterator"))
                case .object(let o): return .iterator(JinjaIterator(o.keys.reversed().map(\.value), typeName: "dict_reversekeyiterator"))
                default: return .array(try pythonIterate(v).reversed())
                }
            },
            "round": { _, v, a in
                let p = try bindArguments(a, ["precision", "method"], function: "round")
                let precision = p[0].flatMap(pythonInt) ?? 0
                let method = p[1]?.pyStr ?? "common"
                guard let number = pythonNumericValue(v) else { throw JinjaRuntimeError("type \(v.typeName) doesn't define __round__ method") }
                switch method {
                case "common":
                    if case .int(let i) = number, precision >= 0 { return .int(i) }
                    return .double(pythonRound(number.asDouble, precision))
                case "ceil", "floor":
                    let scale = pow(10, Double(precision))
                    let scaled = number.asDouble * scale
                    return .double((method == "ceil" ? scaled.rounded(.up) : scaled.rounded(.down)) / scale)
                default: throw JinjaRuntimeError("method must be common, ceil or floor")
                }
            },
            "safe": { _, v, _ in .markup(v.pyStr) },
            "select": { interpreter, v, a in try interpreter.selectOrReject(v, a, keep: true, attribute: false) },
            "selectattr": { interpreter, v, a in try interpreter.selectOrReject(v, a, keep: true, attribute: true) },
            "sort": { _, v, a in
                let p = try bindArguments(a, ["reverse", "case_sensitive", "attribute"], function: "sort")
                let caseSensitive = p[1]?.isTruthy ?? false
                let attributes = p[2].map { attr -> [JinjaValue] in
                    if case .string(let s) = attr { return s.split(separator: ",", omittingEmptySubsequences: false).map { .string(String($0)) } }
                    return [attr]
                }
                return .array(try sortValues(try pythonIterate(v), reverse: p[0]?.isTruthy ?? false) { item in
                    guard let attributes else { return caseSensitive ? item : ignoreCase(item) }
                    let keys = try attributes.map { try jinjaAttributePath(item, $0) }
                    return .array(caseSensitive ? keys : keys.map(ignoreCase))
                })
            },
            "string": { _, v, _ in .string(v.pyStr) },
            "sum": { _, v, a in
                let p = try bindArguments(a, ["attribute", "start"], function: "sum")
                var total = p[1] ?? .int(0)
                for item in try pythonIterate(v) {
                    total = try pythonBinaryOperation(.add, total, try p[0].map { try jinjaAttributePath(item, $0) } ?? item)
                }
                return total
            },
            "title": { _, v, _ in .string(jinjaTitle(v.pyStr)) },
            // json.loads, as newer transformers add it for templates (DeepSeek V3.2's) that parse a
            // tool call's arguments string; objects keep their keys' order.
            "from_json": { _, v, _ in
                guard case .string(let text) = v else { throw JinjaRuntimeError("from_json expects a string, got \(v.typeName)") }
                do { return try JinjaValue(jsonText: text) } catch { throw JinjaRuntimeError("from_json: \(error)") }
            },
            "tojson": { _, v, a in
                let p = try bindArguments(a, ["ensure_ascii", "indent", "separators", "sort_keys"], function: "tojson")
                var options = JinjaJSONDumpOptions()
                options.ensureASCII = p[0]?.isTruthy ?? false
                switch p[1] {
                case nil, .none?: break
                case .string(let s)?: options.indent = s
                case let w?:
                    guard let n = pythonInt(w) else { throw JinjaRuntimeError("indent must be an int or a string") }
                    try JinjaLimits.checkWidth(n)
                    options.indent = String(repeating: " ", count: max(0, n))
                }
                switch p[2] {
                case nil, .none?: break
                case .array(let s)?, .tuple(let s)?:
                    guard s.count == 2, case .string(let item) = s[0], case .string(let key) = s[1] else {
                        throw JinjaRuntimeError("separators must be a pair of strings")
                    }
                    options.itemSeparator = item
                    options.keySeparator = key
                default: throw JinjaRuntimeError("separators must be a pair of strings")
                }
                options.sortKeys = p[3]?.isTruthy ?? false
                return .string(try pythonJSONDumps(v, options))
            },
            "trim": { _, v, a in
                let chars = try bindArguments(a, ["chars"], function: "trim")[0]
                return .string(pythonStrip(v.pyStr, chars: chars.flatMap { $0 == .none ? nil : $0.pyStr }))
            },
            "truncate": { _, v, a in
                let p = try bindArguments(a, ["length", "killwords", "end", "leeway"], function: "truncate")
                let length = p[0].flatMap(pythonInt) ?? 255
                let end = p[2]?.pyStr ?? "..."
                let leeway = p[3].flatMap(pythonInt) ?? 5
                // Short values come back unchanged, whatever their type.
                if try pythonLength(v) <= length + leeway { return v }
                guard case .string(let text) = v else { throw JinjaRuntimeError("truncate needs a string, got \(v.typeName)") }
                let cut = String(String.UnicodeScalarView(text.unicodeScalars.prefix(max(0, length - end.unicodeScalars.count))))
                if p[1]?.isTruthy ?? false { return .string(cut + end) }
                return .string((try pythonSplit(cut, separator: " ", maxSplit: 1, fromRight: true).first ?? "") + end)
            },
            "unique": { _, v, a in
                let p = try bindArguments(a, ["case_sensitive", "attribute"], function: "unique")
                return .iterator(JinjaIterator(lazy: {
                    var seen: [JinjaValue] = []
                    var result: [JinjaValue] = []
                    for item in try pythonIterate(v) {
                        var key = try p[1].map { try jinjaAttributePath(item, $0) } ?? item
                        if !(p[0]?.isTruthy ?? false) { key = ignoreCase(key) }
                        switch key {
                        case .array, .object: throw JinjaRuntimeError("unhashable type: '\(key.typeName)'")
                        default: break
                        }
                        if !seen.contains(where: { pyEquals($0, key) }) {
                            seen.append(key)
                            result.append(item)
                        }
                    }
                    return result
                }))
            },
            "upper": { _, v, _ in .string(v.pyStr.uppercased()) },
            "wordcount": { _, v, _ in
                var count = 0
                var inWord = false
                for c in v.pyStr.unicodeScalars {
                    let isWord = c == "_" || c.properties.isAlphabetic || c.properties.numericType != nil
                    if isWord && !inWord { count += 1 }
                    inWord = isWord
                }
                return .int(count)
            },
        ]
        t["d"] = t["default"]
        t["e"] = t["escape"]
        t["forceescape"] = { _, v, _ in .markup(htmlEscape(v.pyStr)) }
        t["count"] = t["length"]
        for name in ["filesizeformat", "groupby", "random", "slice", "striptags", "urlencode", "urlize", "wordwrap", "xmlattr"] {
            t[name] = { _, _, _ in throw JinjaRuntimeError("filter '\(name)' is not supported by Finch's chat template engine") }
        }
        return t
    }()
}

extension JinjaInterpreter {
    func applyFilter(_ name: String, _ value: JinjaValue, _ args: JinjaArguments) throws -> JinjaValue {
        guard let filter = JinjaFilters.table[name] else { throw JinjaRuntimeError("No filter named '\(name)'.") }
        return try filter(self, JinjaFilters.keepsMarkup.contains(name) ? value : value.demoted, args)
    }

    /// select / reject / selectattr / rejectattr.
    func selectOrReject(_ value: JinjaValue, _ args: JinjaArguments, keep: Bool, attribute: Bool) throws -> JinjaValue {
        var positional = args.positional
        var attributeName: JinjaValue? = nil
        if attribute {
            guard !positional.isEmpty else { throw JinjaRuntimeError("Missing parameter for attribute name") }
            attributeName = positional.removeFirst()
        }
        var testName: String? = nil
        if !positional.isEmpty {
            guard case .string(let n) = positional.removeFirst() else { throw JinjaRuntimeError("test name must be a string") }
            testName = n
        }
        let testArgs = JinjaArguments(positional, keywords: args.keywords)
        // jinja2's select_or_reject yields nothing for a falsy value (`none | selectattr(...)` is empty).
        guard value.isTruthy else { return .iterator(JinjaIterator([])) }
        return .iterator(JinjaIterator(lazy: {
            try pythonIterate(value).filter { item in
                let subject = try attributeName.map { try jinjaAttributePath(item, $0) } ?? item
                let passed = try testName.map { try applyTest($0, subject, testArgs) } ?? subject.isTruthy
                return passed == keep
            }
        }))
    }
}

/// jinja2's `make_attrgetter`: "a.b.0" looks up items (then attributes) part by part; digits are indices.
func jinjaAttributePath(_ item: JinjaValue, _ attribute: JinjaValue, default fallback: JinjaValue? = nil) throws -> JinjaValue {
    let parts: [JinjaValue]
    if case .string(let s) = attribute {
        parts = s.split(separator: ".", omittingEmptySubsequences: false).map { part in
            part.allSatisfy(\.isASCII) && !part.isEmpty && part.allSatisfy(\.isNumber) ? .int(Int(part)!) : .string(String(part))
        }
    } else {
        parts = [attribute]
    }
    var value = item
    for part in parts {
        value = try jinjaGetItem(value, part)
        if let fallback, !(fallback == .none), value.isUndefined { value = fallback }
    }
    return value
}

private func sortedRepr(_ v: JinjaValue) -> String {
    switch v {
    case .array(let items): return "[" + items.map(sortedRepr).joined(separator: ", ") + "]"
    case .tuple(let items) where items.count != 1: return "(" + items.map(sortedRepr).joined(separator: ", ") + ")"
    case .object(let o):
        let pairs = (try? sortValues(o.keys.map(\.value), reverse: false) { $0 }) ?? o.keys.map(\.value)
        return "{" + pairs.map { key in key.pyRepr + ": " + sortedRepr(JinjaKey(key).flatMap { o[$0] } ?? .none) }.joined(separator: ", ") + "}"
    default: return v.pyRepr
    }
}

private func ignoreCase(_ v: JinjaValue) -> JinjaValue {
    if case .string(let s) = v { return .string(s.lowercased()) }
    return v
}

/// Python's stable `sorted(values, key=key, reverse=reverse)`.
private func sortValues(_ values: [JinjaValue], reverse: Bool, key: (JinjaValue) throws -> JinjaValue) throws -> [JinjaValue] {
    let keyed = try values.enumerated().map { (offset: $0.offset, key: try key($0.element), value: $0.element) }
    var failure: Error? = nil
    let sorted = keyed.sorted { a, b in
        do {
            let c = try pythonOrder(a.key, b.key)
            if c != 0 { return reverse ? c > 0 : c < 0 }
        } catch {
            failure = failure ?? error
        }
        return a.offset < b.offset
    }
    if let failure { throw failure }
    return sorted.map(\.value)
}

private func minOrMax(_ value: JinjaValue, _ args: JinjaArguments, pickMax: Bool) throws -> JinjaValue {
    let p = try bindArguments(args, ["case_sensitive", "attribute"], function: pickMax ? "max" : "min")
    let items = try pythonIterate(value)
    guard var best = items.first else { return .undefined }
    func key(_ v: JinjaValue) throws -> JinjaValue {
        let k = try p[1].map { try jinjaAttributePath(v, $0) } ?? v
        return (p[0]?.isTruthy ?? false) ? k : ignoreCase(k)
    }
    var bestKey = try key(best)
    for item in items.dropFirst() {
        let k = try key(item)
        let c = try pythonOrder(k, bestKey)
        if pickMax ? c > 0 : c < 0 {
            best = item
            bestKey = k
        }
    }
    return best
}

/// jinja2's `title` filter: capitalises after runs of whitespace, '-', '(', '{', '[' or '<'.
func jinjaTitle(_ s: String) -> String {
    var out = ""
    var atWordStart = true
    for c in s.unicodeScalars {
        let isBoundary = isPythonWhitespace(c) || "-({[<".unicodeScalars.contains(c)
        if isBoundary {
            out.unicodeScalars.append(c)
            atWordStart = true
        } else {
            out += atWordStart ? c.properties.uppercaseMapping : c.properties.lowercaseMapping
            atWordStart = false
        }
    }
    return out
}

/// markupsafe's `escape`.
func htmlEscape(_ s: String) -> String {
    var out = ""
    for c in s.unicodeScalars {
        switch c {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&#34;"
        case "'": out += "&#39;"
        default: out.unicodeScalars.append(c)
        }
    }
    return out
}

/// Python's `float(value)`, or nil where it raises.
func pythonFloat(_ v: JinjaValue) -> Double? {
    switch v {
    case .int(let i): return Double(i)
    case .bool(let b): return b ? 1 : 0
    case .double(let d): return d
    case .string(let s):
        let t = pythonStrip(s, chars: nil).replacingOccurrences(of: "_", with: "").lowercased()
        switch t {
        case "inf", "+inf", "infinity", "+infinity": return .infinity
        case "-inf", "-infinity": return -.infinity
        case "nan", "+nan", "-nan": return .nan
        default:
            guard !t.isEmpty, t.allSatisfy({ "0123456789.e+-".contains($0) }) else { return nil }
            return Double(t)
        }
    default: return nil
    }
}

/// jinja2's `int` filter: `int(value, base)` for strings, `int(value)` otherwise, then `int(float(value))`.
func pythonIntConversion(_ v: JinjaValue, base: Int) -> Int? {
    switch v {
    case .int(let i): return i
    case .bool(let b): return b ? 1 : 0
    case .double(let d): return d.isFinite && abs(d) < 9.2e18 ? Int(d) : nil
    case .string(let s):
        var t = pythonStrip(s, chars: nil).replacingOccurrences(of: "_", with: "")
        var sign = 1
        if t.hasPrefix("-") { sign = -1; t.removeFirst() } else if t.hasPrefix("+") { t.removeFirst() }
        var radix = base
        let lower = t.lowercased()
        for (prefix, r) in [("0x", 16), ("0o", 8), ("0b", 2)] where lower.hasPrefix(prefix) && (base == r || base == 0) {
            t.removeFirst(2)
            radix = r
        }
        if radix == 0 { radix = 10 }
        if let i = Int(t, radix: radix) { return sign * i }
        if let d = pythonFloat(.string(s)), d.isFinite, abs(d) < 9.2e18 { return Int(d) }
        return nil
    default: return nil
    }
}

/// Python's `round(x, ndigits)` for floats: correctly rounded, ties to even on the exact binary value.
func pythonRound(_ x: Double, _ digits: Int) -> Double {
    guard x.isFinite else { return x }
    if digits >= 0 {
        return Double(String(format: "%.\(min(digits, 340))f", x)) ?? x
    }
    let scale = pow(10, Double(-digits))
    let q = (x / scale).rounded(.toNearestOrEven)
    return q * scale
}
