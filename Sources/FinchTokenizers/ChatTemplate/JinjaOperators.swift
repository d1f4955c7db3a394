import Foundation
import FinchKernels
import FinchIO

// Python semantics of the operators, subscripts and attribute lookups that templates use,
// with jinja2's sandbox rules (ImmutableSandboxedEnvironment) for attribute access.

// MARK: - Arithmetic

func pythonBinaryOperation(_ op: JinjaBinaryOperator, _ a: JinjaValue, _ b: JinjaValue) throws -> JinjaValue {
    // markupsafe: Markup + str escapes the str and stays Markup (either order).
    switch (op, a, b) {
    case let (.add, .markup(x), .markup(y)): return .markup(x + y)
    case let (.add, .markup(x), .string(y)): return .markup(x + htmlEscape(y))
    case let (.add, .string(x), .markup(y)): return .markup(htmlEscape(x) + y)
    default: break
    }
    let a = a.demoted, b = b.demoted
    if let x = pythonNumericValue(a), let y = pythonNumericValue(b) {
        return try arithmetic(op, x, y)
    }
    switch (op, a, b) {
    case let (.add, .string(x), .string(y)): return .string(x + y)
    case let (.add, .array(x), .array(y)): return .array(x + y)
    case let (.add, .tuple(x), .tuple(y)): return .tuple(x + y)
    case (.multiply, .string, _), (.multiply, .array, _), (.multiply, .tuple, _):
        return try repeatSequence(a, b)
    case (.multiply, _, .string), (.multiply, _, .array), (.multiply, _, .tuple):
        return try repeatSequence(b, a)
    case let (.modulo, .string(format), _):
        return .string(try pythonPercentFormat(format, b))
    case (.add, .string, _):
        throw JinjaRuntimeError("can only concatenate str (not \"\(b.typeName)\") to str")
    case (.add, .array, _):
        throw JinjaRuntimeError("can only concatenate list (not \"\(b.typeName)\") to list")
    default:
        throw JinjaRuntimeError("unsupported operand type(s) for \(op.rawValue): '\(a.typeName)' and '\(b.typeName)'")
    }
}

private func repeatSequence(_ sequence: JinjaValue, _ count: JinjaValue) throws -> JinjaValue {
    guard let n = pythonInt(count) else {
        throw JinjaRuntimeError("can't multiply sequence by non-int of type '\(count.typeName)'")
    }
    let times = max(0, n)
    switch sequence {
    case .string(let s):
        try JinjaLimits.checkSize(s.utf8.count, times: times, limit: JinjaLimits.maxStringBytes, what: "string")
        return .string(String(repeating: s, count: times))
    case .array(let a):
        try JinjaLimits.checkSize(a.count, times: times, limit: JinjaLimits.maxItems, what: "list")
        return .array(Array([[JinjaValue]](repeating: a, count: times).joined()))
    case .tuple(let a):
        try JinjaLimits.checkSize(a.count, times: times, limit: JinjaLimits.maxItems, what: "tuple")
        return .tuple(Array([[JinjaValue]](repeating: a, count: times).joined()))
    default:
        throw JinjaRuntimeError("can't multiply sequence by non-int")
    }
}

private func arithmetic(_ op: JinjaBinaryOperator, _ x: PythonNumber, _ y: PythonNumber) throws -> JinjaValue {
    if case .int(let i) = x, case .int(let j) = y {
        switch op {
        case .add: return try checked(i.addingReportingOverflow(j))
        case .subtract: return try checked(i.subtractingReportingOverflow(j))
        case .multiply: return try checked(i.multipliedReportingOverflow(by: j))
        case .divide:
            if j == 0 { throw JinjaRuntimeError("division by zero") }
            return .double(Double(i) / Double(j))
        case .floorDivide:
            if j == 0 { throw JinjaRuntimeError("integer division or modulo by zero") }
            if i == .min && j == -1 { throw JinjaRuntimeError("integer overflow") }
            let q = i / j
            return .int((i % j != 0 && (i < 0) != (j < 0)) ? q - 1 : q)
        case .modulo:
            if j == 0 { throw JinjaRuntimeError("integer division or modulo by zero") }
            if j == -1 { return .int(0) }
            let r = i % j
            return .int(r != 0 && (r < 0) != (j < 0) ? r + j : r)
        case .power:
            if j < 0 { return .double(pow(Double(i), Double(j))) }
            var result = 1, base = i, e = j
            while e > 0 {
                if e & 1 == 1 { result = try checkedInt(result.multipliedReportingOverflow(by: base)) }
                e >>= 1
                if e > 0 { base = try checkedInt(base.multipliedReportingOverflow(by: base)) }
            }
            return .int(result)
        }
    }
    let a = x.asDouble, b = y.asDouble
    switch op {
    case .add: return .double(a + b)
    case .subtract: return .double(a - b)
    case .multiply: return .double(a * b)
    case .divide:
        if b == 0 { throw JinjaRuntimeError("float division by zero") }
        return .double(a / b)
    case .floorDivide:
        if b == 0 { throw JinjaRuntimeError("float floor division by zero") }
        return .double(pythonFloatDivMod(a, b).quotient)
    case .modulo:
        if b == 0 { throw JinjaRuntimeError("float modulo") }
        return .double(pythonFloatDivMod(a, b).remainder)
    case .power:
        if a == 0 && b < 0 { throw JinjaRuntimeError("0.0 cannot be raised to a negative power") }
        return .double(pow(a, b))
    }
}

/// CPython's float `divmod` (Objects/floatobject.c): `1 // 0.1` is 9.0, not 10.0.
private func pythonFloatDivMod(_ a: Double, _ b: Double) -> (quotient: Double, remainder: Double) {
    var mod = fmod(a, b)
    var div = (a - mod) / b
    if mod != 0 {
        if (b < 0) != (mod < 0) {
            mod += b
            div -= 1
        }
    } else {
        mod = b.sign == .minus ? -0.0 : 0.0
    }
    var floorDiv: Double
    if div != 0 {
        floorDiv = div.rounded(.down)
        if div - floorDiv > 0.5 { floorDiv += 1 }
    } else {
        floorDiv = (a / b).sign == .minus ? -0.0 : 0.0
    }
    return (floorDiv, mod)
}

private func checked(_ result: (partialValue: Int, overflow: Bool)) throws -> JinjaValue {
    .int(try checkedInt(result))
}

private func checkedInt(_ result: (partialValue: Int, overflow: Bool)) throws -> Int {
    if result.overflow { throw JinjaRuntimeError("integer overflow (Python integers are unbounded, Finch's are 64-bit)") }
    return result.partialValue
}

/// An int or bool as a Python int.
func pythonInt(_ v: JinjaValue) -> Int? {
    switch v {
    case .int(let i): return i
    case .bool(let b): return b ? 1 : 0
    default: return nil
    }
}

// MARK: - Comparison

func pythonCompare(_ op: JinjaCompareOperator, _ a: JinjaValue, _ b: JinjaValue) throws -> Bool {
    switch op {
    case .equal: return pyEquals(a, b)
    case .notEqual: return !pyEquals(a, b)
    case .contains: return try pythonContains(b, a)
    case .notContains: return !(try pythonContains(b, a))
    case .less: return try pythonOrder(a, b, op) < 0
    case .lessOrEqual: return try pythonOrder(a, b, op) <= 0
    case .greater: return try pythonOrder(a, b, op) > 0
    case .greaterOrEqual: return try pythonOrder(a, b, op) >= 0
    }
}

/// Python ordering: -1, 0 or 1; NaN compares false both ways, as in Python.
func pythonOrder(_ a: JinjaValue, _ b: JinjaValue, _ op: JinjaCompareOperator = .less) throws -> Int {
    if let x = pythonNumericValue(a), let y = pythonNumericValue(b) {
        if case .int(let i) = x, case .int(let j) = y { return i < j ? -1 : i == j ? 0 : 1 }
        let (p, q) = (x.asDouble, y.asDouble)
        if p.isNaN || q.isNaN { return op == .less || op == .lessOrEqual ? 1 : -1 }
        return p < q ? -1 : p == q ? 0 : 1
    }
    switch (a, b) {
    case let (.string(x), .string(y)):
        if x == y { return 0 }
        return x.unicodeScalars.lexicographicallyPrecedes(y.unicodeScalars) ? -1 : 1
    case let (.array(x), .array(y)), let (.tuple(x), .tuple(y)):
        for (p, q) in zip(x, y) where !pyEquals(p, q) { return try pythonOrder(p, q, op) }
        return x.count < y.count ? -1 : x.count == y.count ? 0 : 1
    default:
        throw JinjaRuntimeError("'\(op.rawValue)' not supported between instances of '\(a.typeName)' and '\(b.typeName)'")
    }
}

/// Python's `needle in container`.
func pythonContains(_ container: JinjaValue, _ needle: JinjaValue) throws -> Bool {
    switch container {
    case .string(let s):
        guard case .string(let n) = needle else {
            throw JinjaRuntimeError("'in <string>' requires string as left operand, not \(needle.typeName)")
        }
        return utf8Contains(s, n)
    case .array(let items), .tuple(let items):
        return items.contains { pyEquals($0, needle) }
    case .object(let o):
        guard let key = JinjaKey(needle) else {
            switch needle {
            case .array, .object: throw JinjaRuntimeError("unhashable type: '\(needle.typeName)'")
            default: return false
            }
        }
        return o[key] != nil
    case .iterator(let it):
        return try it.drain().contains { pyEquals($0, needle) }
    case .undefined:
        return false
    default:
        throw JinjaRuntimeError("argument of type '\(container.typeName)' is not iterable")
    }
}

/// Substring test on UTF-8 bytes, which is a code point match as in Python (not a grapheme match).
func utf8Contains(_ haystack: String, _ needle: String) -> Bool {
    if needle.isEmpty { return true }
    var h = haystack, n = needle
    return h.withUTF8 { hb in
        n.withUTF8 { nb in
            guard nb.count <= hb.count else { return false }
            let first = nb[0]
            for i in 0...(hb.count - nb.count) where hb[i] == first {
                if memcmp(hb.baseAddress! + i, nb.baseAddress!, nb.count) == 0 { return true }
            }
            return false
        }
    }
}

// MARK: - Iteration and length

/// Python's `iter(value)` materialised: dicts give their keys, strings their characters, Undefined nothing.
func pythonIterate(_ value: JinjaValue) throws -> [JinjaValue] {
    switch value {
    case .array(let items), .tuple(let items): return items
    case .object(let o): return o.keys.map(\.value)
    case .string(let s): return s.unicodeScalars.map { .string(String($0)) }
    case .undefined: return []
    case .iterator(let it): return try it.drain()
    default: throw JinjaRuntimeError("'\(value.typeName)' object is not iterable")
    }
}

/// Python's `len(value)`; strings count code points.
func pythonLength(_ value: JinjaValue) throws -> Int {
    switch value {
    case .string(let s): return s.unicodeScalars.count
    case .array(let items), .tuple(let items): return items.count
    case .object(let o): return o.count
    case .undefined: return 0
    default: throw JinjaRuntimeError("object of type '\(value.typeName)' has no len()")
    }
}

// MARK: - Attributes and items

/// `value.name` with jinja2's sandbox rules: Python attributes (methods) first, then items.
/// List and dict methods that mutate are unsafe in the immutable sandbox and read as Undefined.
func jinjaGetAttribute(_ value: JinjaValue, _ name: String) throws -> JinjaValue {
    switch value {
    case .undefined:
        throw JinjaUndefinedUse()
    case .namespace(let ns):
        return ns[name] ?? .undefined
    case .object(let o):
        if let method = jinjaBoundMethod(value, name) { return method }
        return o[name] ?? .undefined
    default:
        return jinjaBoundMethod(value, name) ?? .undefined
    }
}

/// `value[key]`: items first, then attributes (jinja2's `Environment.getitem`).
func jinjaGetItem(_ value: JinjaValue, _ key: JinjaValue) throws -> JinjaValue {
    switch (value, key) {
    case (.undefined, _):
        throw JinjaUndefinedUse()
    case let (.object(o), _):
        if let k = JinjaKey(key), let found = o[k] { return found }
        if case .string(let k) = key { return jinjaBoundMethod(value, k) ?? .undefined }
        return .undefined
    case let (.namespace(ns), .string(k)):
        return ns[k] ?? .undefined
    case let (.array(items), _), let (.tuple(items), _):
        if case .string(let k) = key { return jinjaBoundMethod(value, k) ?? .undefined }
        guard let index = integerIndex(key, count: items.count) else { return .undefined }
        return items[index]
    case let (.string(s), _):
        if case .string(let k) = key { return jinjaBoundMethod(value, k) ?? .undefined }
        let scalars = Array(s.unicodeScalars)
        guard let index = integerIndex(key, count: scalars.count) else { return .undefined }
        return .string(String(scalars[index]))
    default:
        if case .string(let k) = key { return jinjaBoundMethod(value, k) ?? .undefined }
        return .undefined
    }
}

/// A valid position for a Python index (negative counts from the end), or nil when out of range.
private func integerIndex(_ key: JinjaValue, count: Int) -> Int? {
    guard var i = pythonInt(key) else { return nil }
    if i < 0 { i += count }
    return (0..<count).contains(i) ? i : nil
}

/// Python's `sequence[start:stop:step]`.
func pythonSlice(_ value: JinjaValue, start: JinjaValue?, stop: JinjaValue?, step: JinjaValue?) throws -> JinjaValue {
    func bound(_ v: JinjaValue?) throws -> Int? {
        guard let v, !(v == .none) else { return nil }
        guard let i = pythonInt(v) else { throw JinjaRuntimeError("slice indices must be integers or None") }
        return i
    }
    let stepValue = try bound(step) ?? 1
    if stepValue == 0 { throw JinjaRuntimeError("slice step cannot be zero") }
    func indices(_ count: Int) throws -> [Int] {
        func clamp(_ v: Int?, _ defaultValue: Int, low: Int, high: Int) -> Int {
            guard var i = v else { return defaultValue }
            if i < 0 { i += count }
            return min(max(i, low), high)
        }
        if stepValue > 0 {
            let a = clamp(try bound(start), 0, low: 0, high: count)
            let b = clamp(try bound(stop), count, low: 0, high: count)
            return a < b ? Array(stride(from: a, to: b, by: stepValue)) : []
        }
        let a = clamp(try bound(start), count - 1, low: -1, high: count - 1)
        let b = clamp(try bound(stop), -1, low: -1, high: count - 1)
        return a > b ? Array(stride(from: a, to: b, by: stepValue)) : []
    }
    switch value {
    case .array(let items): return .array(try indices(items.count).map { items[$0] })
    case .tuple(let items): return .tuple(try indices(items.count).map { items[$0] })
    case .string(let s):
        let scalars = Array(s.unicodeScalars)
        var out = String.UnicodeScalarView()
        for i in try indices(scalars.count) { out.append(scalars[i]) }
        return .string(String(out))
    case .object:
        throw JinjaRuntimeError("unhashable type: 'slice'")
    default:
        // Slices bypass jinja2's getitem, so Python's TypeError is not turned into Undefined.
        throw JinjaRuntimeError("'\(value.typeName)' object is not subscriptable")
    }
}
