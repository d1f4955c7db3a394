import Foundation
import FinchKernels
import FinchIO

/// A value seen by a chat template: the data model of Python's jinja2 as transformers feeds it
/// (JSON-like data, plus the few runtime objects templates create).
public indirect enum JinjaValue: Sendable {
    /// jinja2's default `Undefined`: prints as "", is falsy, iterates as empty; using it any other way is an error.
    case undefined
    /// Python's `None` (JSON null).
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    /// markupsafe's `Markup`, a string marked safe (what the `safe` and `escape` filters return):
    /// `+` with a plain string escapes the plain one (`&`, `<`, `>`, `"`, `'`), as in jinja2 with
    /// transformers' settings; elsewhere it acts as the string.
    case markup(String)
    /// A Python list (JSON array).
    case array([JinjaValue])
    /// A Python tuple (from `dict.items()`, `(a, b)` literals); prints with parentheses.
    case tuple([JinjaValue])
    /// A Python dict with string keys, in insertion order.
    case object(JinjaObject)
    /// A mutable attribute bag: `namespace(...)` and the `loop` variable.
    case namespace(JinjaNamespace)
    /// A callable: a global, a macro or a bound method.
    case function(JinjaFunction)
    /// A one-shot Python iterator: what `select`, `map`, `unique`, `items` and `reverse` return.
    /// Always truthy, has no length, and is empty once iterated, as in jinja2.
    case iterator(JinjaIterator)
}

/// A dict key. JSON gives string keys; template literals such as `{0: 'a'}` give int keys
/// (Python's `True` and `1.0` hash like `1` and are stored as it).
public enum JinjaKey: Hashable, Sendable, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral {
    case string(String)
    case int(Int)

    /// A string key from a literal: `"role"`.
    public init(stringLiteral value: String) { self = .string(value) }
    /// An int key from a literal: `0`.
    public init(integerLiteral value: Int) { self = .int(value) }

    /// The key of `value` in a dict, or nil when Python could not hash it the same way.
    init?(_ value: JinjaValue) {
        switch value {
        case .string(let s): self = .string(s)
        case .int(let i): self = .int(i)
        case .bool(let b): self = .int(b ? 1 : 0)
        case .double(let d) where d == d.rounded() && abs(d) < 9e18: self = .int(Int(d))
        default: return nil
        }
    }

    /// The key as a template value (`dict.items()` and iteration hand keys out as values).
    public var value: JinjaValue {
        switch self {
        case .string(let s): return .string(s)
        case .int(let i): return .int(i)
        }
    }
}

/// An ordered dictionary: Python's dict as templates see it, in insertion order.
public struct JinjaObject: Sendable, Equatable, ExpressibleByDictionaryLiteral {
    /// Keys in insertion order, the order iteration sees.
    public private(set) var keys: [JinjaKey] = []
    private var storage: [JinjaKey: JinjaValue] = [:]

    /// An empty dict.
    public init() {}

    /// A dict of string keys in the given order; a repeated key keeps its first position and last value.
    public init(_ pairs: [(String, JinjaValue)]) {
        for (key, value) in pairs { self[key] = value }
    }

    /// A dict of string or int keys in the given order, as `init(_:)`.
    public init(keyed pairs: [(JinjaKey, JinjaValue)]) {
        for (key, value) in pairs { self[key] = value }
    }

    /// A dict from a literal, keeping the literal's key order.
    public init(dictionaryLiteral elements: (String, JinjaValue)...) {
        self.init(elements)
    }

    /// Number of keys.
    public var count: Int { keys.count }
    /// True for `{}` (falsy in a template).
    public var isEmpty: Bool { keys.isEmpty }
    /// Values in key order.
    public var values: [JinjaValue] { keys.map { storage[$0]! } }
    /// Key-value pairs in insertion order.
    public var pairs: [(key: JinjaKey, value: JinjaValue)] { keys.map { ($0, storage[$0]!) } }

    /// Assigning keeps the key's first position, as Python dicts do; assigning nil removes it.
    public subscript(key: JinjaKey) -> JinjaValue? {
        get { storage[key] }
        set {
            if let newValue {
                if storage.updateValue(newValue, forKey: key) == nil { keys.append(key) }
            } else if storage.removeValue(forKey: key) != nil {
                keys.removeAll { $0 == key }
            }
        }
    }

    /// The value of a string key; nil when absent. Assigning behaves as with a `JinjaKey`.
    public subscript(key: String) -> JinjaValue? {
        get { self[.string(key)] }
        set { self[.string(key)] = newValue }
    }

    /// Python dict equality: same keys with `==` values, whatever their order.
    public static func == (a: JinjaObject, b: JinjaObject) -> Bool {
        // Python dict equality ignores order.
        a.count == b.count && a.keys.allSatisfy { key in b[key].map { pyEquals(a[key]!, $0) } ?? false }
    }
}

/// `namespace()` objects and loop contexts: reference semantics, so `{% set ns.x = ... %}` inside a
/// loop body is visible after the loop.
public final class JinjaNamespace: @unchecked Sendable {
    /// What Python would call its type, for printing ("Namespace", "LoopContext").
    let typeName: String
    private var attributes: JinjaObject
    /// For `loop`: attributes are computed on access rather than stored for every iteration.
    private let loop: JinjaLoopState?
    private let lock = NSLock()

    init(attributes: JinjaObject = JinjaObject()) {
        self.typeName = "Namespace"
        self.attributes = attributes
        self.loop = nil
    }

    init(loop: JinjaLoopState) {
        self.typeName = "LoopContext"
        self.attributes = JinjaObject()
        self.loop = loop
    }

    var isNamespace: Bool { loop == nil }
    var storedAttributes: JinjaObject { lock.lock(); defer { lock.unlock() }; return attributes }

    subscript(name: String) -> JinjaValue? {
        get {
            if let loop { return loop.attribute(name) }
            lock.lock(); defer { lock.unlock() }
            return attributes[name]
        }
        set {
            lock.lock(); defer { lock.unlock() }
            attributes[name] = newValue
        }
    }
}

/// jinja2's `LoopContext` for one iteration.
struct JinjaLoopState {
    /// Remembers the last `loop.changed(...)` arguments across iterations.
    final class ChangedMemory { var last: [JinjaValue]? = nil }

    let index: Int
    let items: [JinjaValue]
    let changed: ChangedMemory

    func attribute(_ name: String) -> JinjaValue? {
        let n = items.count, i = index
        switch name {
        case "index0": return .int(i)
        case "index": return .int(i + 1)
        case "revindex0": return .int(n - i - 1)
        case "revindex": return .int(n - i)
        case "first": return .bool(i == 0)
        case "last": return .bool(i == n - 1)
        case "length": return .int(n)
        case "depth": return .int(1)
        case "depth0": return .int(0)
        case "previtem": return i > 0 ? items[i - 1] : .undefined
        case "nextitem": return i + 1 < n ? items[i + 1] : .undefined
        case "cycle":
            return .function(JinjaFunction(name: "cycle") { args in
                guard !args.positional.isEmpty else { throw JinjaRuntimeError("no items for cycling given") }
                return args.positional[i % args.positional.count]
            })
        case "changed":
            let memory = changed
            return .function(JinjaFunction(name: "changed") { args in
                if let last = memory.last, last.count == args.positional.count,
                   zip(last, args.positional).allSatisfy({ pyEquals($0, $1) }) {
                    return .bool(false)
                }
                memory.last = args.positional
                return .bool(true)
            })
        default: return nil
        }
    }
}

/// The remaining items of a Python generator or iterator.
public final class JinjaIterator: @unchecked Sendable {
    /// Python's type name: "generator", "list_reverseiterator", ...
    let typeName: String
    private var remaining: [JinjaValue]
    /// A generator fails when consumed, not when made (`true | map('upper')` is a truthy generator).
    private var failure: Error?
    private let lock = NSLock()

    init(_ items: [JinjaValue], typeName: String = "generator") {
        self.typeName = typeName
        self.remaining = items
    }

    /// A generator over `make()`'s items, or one that raises `make()`'s error when consumed.
    init(lazy make: () throws -> [JinjaValue]) {
        typeName = "generator"
        do {
            remaining = try make()
        } catch {
            remaining = []
            failure = error
        }
    }

    /// Everything not yet consumed; the iterator is exhausted afterwards.
    func drain() throws -> [JinjaValue] {
        lock.lock(); defer { lock.unlock() }
        if let failure { throw failure }
        defer { remaining = [] }
        return remaining
    }

    /// The next item, or nil when exhausted.
    func next() throws -> JinjaValue? {
        lock.lock(); defer { lock.unlock() }
        if let failure { throw failure }
        return remaining.isEmpty ? nil : remaining.removeFirst()
    }
}

/// Arguments of a call: positional then keyword, as written in the template.
public struct JinjaArguments: Sendable {
    /// Arguments without a name, in call order.
    public var positional: [JinjaValue]
    /// `name=value` arguments, in call order.
    public var keywords: [(String, JinjaValue)]

    /// The arguments of one call.
    public init(_ positional: [JinjaValue] = [], keywords: [(String, JinjaValue)] = []) {
        self.positional = positional
        self.keywords = keywords
    }
}

/// A callable value: globals such as `raise_exception` or `range`, macros, bound methods.
public final class JinjaFunction: @unchecked Sendable {
    /// The name it was defined under; it prints as `<function name>`.
    public let name: String
    let body: (JinjaArguments) throws -> JinjaValue

    /// A function that runs `body` when a template calls it; a thrown error stops rendering.
    public init(name: String, _ body: @escaping (JinjaArguments) throws -> JinjaValue) {
        self.name = name
        self.body = body
    }

    func call(_ arguments: JinjaArguments) throws -> JinjaValue { try body(arguments) }
}

// MARK: - Literals and structural equality

extension JinjaValue: Equatable {
    /// Structural equality (Python's `==` semantics live in `pyEquals`); reference values compare by identity.
    public static func == (a: JinjaValue, b: JinjaValue) -> Bool {
        switch (a, b) {
        case (.undefined, .undefined), (.none, .none): return true
        case let (.bool(x), .bool(y)): return x == y
        case let (.int(x), .int(y)): return x == y
        case let (.double(x), .double(y)): return x == y
        case let (.string(x), .string(y)): return x == y
        case let (.array(x), .array(y)), let (.tuple(x), .tuple(y)): return x == y
        case let (.object(x), .object(y)): return x.pairs.elementsEqual(y.pairs) { $0.key == $1.key && $0.value == $1.value }
        case let (.namespace(x), .namespace(y)): return x === y
        case let (.function(x), .function(y)): return x === y
        case let (.iterator(x), .iterator(y)): return x === y
        default: return false
        }
    }
}

extension JinjaValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
    ExpressibleByBooleanLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral
{
    /// `.string` from a literal.
    public init(stringLiteral value: String) { self = .string(value) }
    /// `.int` from a literal.
    public init(integerLiteral value: Int) { self = .int(value) }
    /// `.double` from a literal.
    public init(floatLiteral value: Double) { self = .double(value) }
    /// `.bool` from a literal.
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    /// `.array` from a literal.
    public init(arrayLiteral elements: JinjaValue...) { self = .array(elements) }
    /// `.object` from a literal, in the literal's key order.
    public init(dictionaryLiteral elements: (String, JinjaValue)...) { self = .object(JinjaObject(elements)) }
    /// `nil` is Python's `None`, not `.undefined`.
    public init(nilLiteral: ()) { self = .none }
}

// MARK: - Conversions

extension JinjaValue {
    /// Converts Foundation JSON objects (from `JSONSerialization`). `NSDictionary` has no key order, so
    /// keys are sorted; use `init(jsonText:)` where the order must match the source (tool schemas).
    public init(json: Any) {
        switch json {
        case is NSNull: self = .none
        case let value as JinjaValue: self = value
        case let value as String: self = .string(value)
        case let value as NSNumber:
            self = JinjaValue(number: value)
        case let value as [Any]: self = .array(value.map { JinjaValue(json: $0) })
        case let value as [String: Any]:
            self = .object(JinjaObject(value.keys.sorted().map { ($0, JinjaValue(json: value[$0]!)) }))
        case let value as Bool: self = .bool(value)
        case let value as Int: self = .int(value)
        case let value as Double: self = .double(value)
        default: self = .string(String(describing: json))
        }
    }

    private init(number: NSNumber) {
        switch String(cString: number.objCType) {
        case "c", "B": self = .bool(number.boolValue)
        case "f", "d": self = .double(number.doubleValue)
        default: self = .int(number.intValue)
        }
    }

    /// Parses JSON text keeping object keys in source order, as Python's `json.loads` does.
    public init(jsonText: String) throws {
        var parser = JinjaJSONParser(text: jsonText)
        self = try parser.parseDocument()
    }

    /// True for `.undefined` only (`None` is defined).
    public var isUndefined: Bool { if case .undefined = self { return true } else { return false } }

    /// The string, when this is one.
    public var stringValue: String? {
        switch self {
        case .string(let s), .markup(let s): return s
        default: return nil
        }
    }

    /// Python's type name, for error messages.
    var typeName: String {
        switch self {
        case .undefined: return "Undefined"
        case .none: return "NoneType"
        case .bool: return "bool"
        case .int: return "int"
        case .double: return "float"
        case .string: return "str"
        case .markup: return "Markup"
        case .array: return "list"
        case .tuple: return "tuple"
        case .object: return "dict"
        case .namespace(let ns): return ns.typeName
        case .iterator(let it): return it.typeName
        case .function: return "function"
        }
    }

    /// Python truthiness.
    var isTruthy: Bool {
        switch self {
        case .undefined, .none: return false
        case .bool(let b): return b
        case .int(let i): return i != 0
        case .double(let d): return d != 0
        case .string(let s), .markup(let s): return !s.isEmpty
        case .array(let a), .tuple(let a): return !a.isEmpty
        case .object(let o): return !o.isEmpty
        case .namespace, .function, .iterator: return true
        }
    }
}

// MARK: - Python's str() and repr()

extension JinjaValue {
    /// A Markup as the plain string it holds; any other value as it is. Operations other than
    /// `+`, printing and passing values along see Markup as a string.
    var demoted: JinjaValue {
        if case .markup(let s) = self { return .string(s) }
        return self
    }

    /// Python's `str(value)`: what `{{ value }}` prints.
    var pyStr: String {
        switch self {
        case .undefined: return ""
        case .string(let s), .markup(let s): return s
        default: return pyRepr
        }
    }

    /// Python's `repr(value)`: how values print inside containers.
    var pyRepr: String {
        switch self {
        case .undefined: return "Undefined"
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let i): return String(i)
        case .double(let d): return pythonFloatRepr(d)
        case .string(let s): return pythonStringRepr(s)
        case .markup(let s): return "Markup(" + pythonStringRepr(s) + ")"
        case .array(let a): return "[" + a.map(\.pyRepr).joined(separator: ", ") + "]"
        case .tuple(let a):
            return a.count == 1 ? "(\(a[0].pyRepr),)" : "(" + a.map(\.pyRepr).joined(separator: ", ") + ")"
        case .object(let o):
            return "{" + o.pairs.map { $0.key.value.pyRepr + ": " + $0.value.pyRepr }.joined(separator: ", ") + "}"
        case .namespace(let ns):
            if ns.isNamespace { return "<Namespace \(JinjaValue.object(ns.storedAttributes).pyRepr)>" }
            return "<\(ns.typeName)>"
        case .function(let f): return "<function \(f.name)>"
        case .iterator(let it): return "<\(it.typeName) object>"
        }
    }
}

/// Python's `repr(str)`: single quotes unless the text has a single quote and no double quote.
func pythonStringRepr(_ s: String) -> String {
    let quote: Character = s.contains("'") && !s.contains("\"") ? "\"" : "'"
    var out = String(quote)
    for scalar in s.unicodeScalars {
        switch scalar {
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if Character(scalar) == quote {
                out += "\\" + String(quote)
            } else if scalar.value < 0x20 || scalar.value == 0x7F {
                out += "\\x" + hexDigits(scalar.value, width: 2)
            } else if scalar.value >= 0x80 && !isPythonPrintable(scalar) {
                out += scalar.value <= 0xFF ? "\\x" + hexDigits(scalar.value, width: 2)
                    : scalar.value <= 0xFFFF ? "\\u" + hexDigits(scalar.value, width: 4) : "\\U" + hexDigits(scalar.value, width: 8)
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    out.append(quote)
    return out
}

/// Approximates Python's `str.isprintable` for non-ASCII scalars: not a control, format, separator
/// (other than the ASCII space), surrogate, private-use or unassigned character.
private func isPythonPrintable(_ scalar: Unicode.Scalar) -> Bool {
    switch scalar.properties.generalCategory {
    case .control, .format, .surrogate, .privateUse, .unassigned, .lineSeparator, .paragraphSeparator, .spaceSeparator:
        return false
    default:
        return true
    }
}


/// Python's `repr(float)`: shortest round-trip digits, fixed notation for exponents -4...15,
/// scientific (`1e+16`, `1.5e-05`) otherwise.
func pythonFloatRepr(_ d: Double) -> String {
    if d.isNaN { return "nan" }
    if d.isInfinite { return d < 0 ? "-inf" : "inf" }
    if d == 0 { return d.sign == .minus ? "-0.0" : "0.0" }
    // Swift's description also gives the shortest round-trip digits; only the layout differs.
    var text = "\(d.magnitude)"
    var exponent = 0
    if let e = text.firstIndex(where: { $0 == "e" || $0 == "E" }) {
        exponent = Int(text[text.index(after: e)...])!
        text = String(text[..<e])
    }
    let parts = text.split(separator: ".", omittingEmptySubsequences: false)
    let intPart = String(parts[0])
    let fracPart = parts.count > 1 ? String(parts[1]) : ""
    var digits = intPart + fracPart
    var pointPosition = intPart.count + exponent  // digits before the decimal point
    let leadingZeros = digits.prefix { $0 == "0" }.count
    digits.removeFirst(leadingZeros)
    pointPosition -= leadingZeros
    while digits.count > 1 && digits.hasSuffix("0") { digits.removeLast() }
    if digits.isEmpty { digits = "0" }
    let sci = pointPosition - 1
    let sign = d < 0 ? "-" : ""
    if sci < -4 || sci >= 16 {
        var mantissa = String(digits.first!)
        if digits.count > 1 { mantissa += "." + digits.dropFirst() }
        let expText = String(abs(sci))
        return sign + mantissa + "e" + (sci < 0 ? "-" : "+") + (expText.count < 2 ? "0" + expText : expText)
    }
    if pointPosition <= 0 {
        return sign + "0." + String(repeating: "0", count: -pointPosition) + digits
    }
    if pointPosition >= digits.count {
        return sign + digits + String(repeating: "0", count: pointPosition - digits.count) + ".0"
    }
    let cut = digits.index(digits.startIndex, offsetBy: pointPosition)
    return sign + digits[..<cut] + "." + digits[cut...]
}

// MARK: - Python's ==

/// Python's `==`: numbers compare across int/float/bool, lists and tuples never equal each other,
/// Undefined equals only Undefined.
func pyEquals(_ a: JinjaValue, _ b: JinjaValue) -> Bool {
    if let x = pythonNumericValue(a), let y = pythonNumericValue(b) {
        switch (x, y) {
        case let (.int(i), .int(j)): return i == j
        default: return x.asDouble == y.asDouble
        }
    }
    switch (a, b) {
    case (.undefined, .undefined), (.none, .none): return true
    case let (.string(x), .string(y)): return x == y
    case let (.array(x), .array(y)), let (.tuple(x), .tuple(y)):
        return x.count == y.count && zip(x, y).allSatisfy { pyEquals($0, $1) }
    case let (.object(x), .object(y)): return x == y
    case let (.namespace(x), .namespace(y)): return x === y
    case let (.function(x), .function(y)): return x === y
    case let (.iterator(x), .iterator(y)): return x === y
    default: return false
    }
}

/// A number as Python sees it (bool is an int).
enum PythonNumber {
    case int(Int)
    case double(Double)

    var asDouble: Double {
        switch self {
        case .int(let i): return Double(i)
        case .double(let d): return d
        }
    }
}

func pythonNumericValue(_ v: JinjaValue) -> PythonNumber? {
    switch v {
    case .bool(let b): return .int(b ? 1 : 0)
    case .int(let i): return .int(i)
    case .double(let d): return .double(d)
    default: return nil
    }
}

/// Python's `str.isspace` for one scalar (Unicode White_Space plus the ASCII separators 0x1C-0x1F).
func isPythonWhitespace(_ scalar: Unicode.Scalar) -> Bool {
    scalar.properties.isWhitespace || (0x1C...0x1F).contains(scalar.value)
}
