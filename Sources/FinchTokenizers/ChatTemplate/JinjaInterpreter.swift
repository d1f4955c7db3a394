import Foundation
import FinchKernels
import FinchIO

/// An error raised while rendering, before the interpreter attaches the source location.
struct JinjaRuntimeError: Error {
    let message: String
    init(_ message: String) { self.message = message }
}

/// Thrown by helpers that were handed an Undefined they cannot use; the interpreter names the
/// expression that produced it ("'foo.bar' is undefined").
struct JinjaUndefinedUse: Error {}

/// `raise_exception(message)` from the template.
struct JinjaRaise: Error {
    let message: String
}

/// Variables of one frame. jinja2 gives each for-loop iteration, macro call and `with` block its own
/// frame; `if` does not. Assignments go to the innermost frame, lookups walk outwards.
final class JinjaScope {
    private(set) var variables: [String: JinjaValue] = [:]
    let parent: JinjaScope?

    init(parent: JinjaScope?, variables: [String: JinjaValue] = [:]) {
        self.parent = parent
        self.variables = variables
    }

    func lookup(_ name: String) -> JinjaValue? {
        var scope: JinjaScope? = self
        while let s = scope {
            if let v = s.variables[name] { return v }
            scope = s.parent
        }
        return nil
    }

    func set(_ name: String, _ value: JinjaValue) { variables[name] = value }
}

/// The sandbox's budgets for values, as jinja2's sandbox bounds ranges: a template that builds a
/// string of more than 64 MB, a list of more than a million items, or pads to a width past a
/// million fails with a runtime error naming its line, instead of exhausting memory.
enum JinjaLimits {
    static let maxStringBytes = 16 << 20
    static let maxItems = 1 << 20
    static let maxWidth = 1 << 20

    static func check(_ value: JinjaValue) throws {
        switch value {
        case .string(let s) where s.utf8.count > maxStringBytes:
            throw JinjaRuntimeError("a string of \(s.utf8.count) bytes is past the template budget of \(maxStringBytes)")
        case .array(let a) where a.count > maxItems, .tuple(let a) where a.count > maxItems:
            throw JinjaRuntimeError("a list of \(a.count) items is past the template budget of \(maxItems)")
        default: break
        }
    }

    /// `count * times` within `limit`, without overflow.
    static func checkSize(_ count: Int, times: Int, limit: Int, what: String) throws {
        let (total, overflow) = count.multipliedReportingOverflow(by: times)
        if overflow || total > limit { throw JinjaRuntimeError("repeated \(what) too large (past the template budget of \(limit))") }
    }

    static func checkWidth(_ width: Int) throws {
        if width > maxWidth { throw JinjaRuntimeError("width or precision \(width) is past the template budget of \(maxWidth)") }
    }
}

/// Executes a parsed template. One instance per render call.
final class JinjaInterpreter {
    let source: JinjaSource
    let now: () -> Date
    private var macroDepth = 0
    private static let maxMacroDepth = 50
    /// Guards against runaway templates (nested `range` loops): bounds on output and loop iterations.
    private static let maxOutputBytes = 64 << 20
    private static let maxIterations = 1_000_000
    private var iterations = 0
    /// Statements executed in one render (every macro call runs some): exponential recursion
    /// (`f(n-1)` twice) stops here instead of running for hours.
    static let maxSteps = 2_000_000
    private var steps = 0
    /// UTF-8 ranges of the top-level output written inside `{% generation %}` blocks
    /// (transformers' assistant masks); blocks inside captured output are not recorded.
    private(set) var generationSpans: [Range<Int>] = []
    private var captureDepth = 0

    init(source: JinjaSource, now: @escaping () -> Date) {
        self.source = source
        self.now = now
    }

    private enum Flow { case normal, breakLoop, continueLoop }

    func render(_ body: [JinjaStmt], context: [String: JinjaValue]) throws -> String {
        var globalVariables = Self.sharedGlobals
        let now = self.now
        globalVariables["strftime_now"] = .function(JinjaFunction(name: "strftime_now") { args in
            guard case .string(let format)? = args.positional.first?.demoted else {
                throw JinjaRuntimeError("strftime_now() needs a format string")
            }
            return .string(pythonStrftime(format, now()))
        })
        let globals = JinjaScope(parent: nil, variables: globalVariables)
        let contextScope = JinjaScope(parent: globals, variables: context)
        let root = JinjaScope(parent: contextScope)
        var out = ""
        _ = try execute(body, scope: root, into: &out)
        return out
    }

    private func located(_ error: Error, at offset: Int) -> Error {
        switch error {
        case let e as JinjaRuntimeError: return ChatTemplateError.runtime(message: e.message, location: source.location(of: offset))
        case let e as JinjaRaise: return ChatTemplateError.raised(message: e.message, location: source.location(of: offset))
        case is JinjaUndefinedUse: return ChatTemplateError.runtime(message: "undefined value used", location: source.location(of: offset))
        default: return error
        }
    }

    // MARK: - Statements

    private func execute(_ body: [JinjaStmt], scope: JinjaScope, into out: inout String) throws -> Flow {
        for stmt in body {
            let flow = try execute(stmt, scope: scope, into: &out)
            if flow != .normal { return flow }
        }
        return .normal
    }

    private func execute(_ stmt: JinjaStmt, scope: JinjaScope, into out: inout String) throws -> Flow {
        steps += 1
        if steps > Self.maxSteps {
            throw located(JinjaRuntimeError("the template ran more than \(Self.maxSteps) steps in one render (runaway loop or recursion)"), at: stmt.offset)
        }
        switch stmt.kind {
        case .data(let text):
            out += text
            try checkOutputSize(out, at: stmt.offset)
        case .output(let expr):
            out += try evaluate(expr, scope).pyStr
            try checkOutputSize(out, at: stmt.offset)
        case .ifChain(let branches, let otherwise):
            for branch in branches {
                if try evaluate(branch.test, scope).isTruthy { return try execute(branch.body, scope: scope, into: &out) }
            }
            return try execute(otherwise, scope: scope, into: &out)
        case .forLoop(let loop):
            try executeFor(loop, scope: scope, into: &out, offset: stmt.offset)
        case .set(let target, let expr):
            let value = try evaluate(expr, scope)
            try assign(value, to: target, in: scope, offset: stmt.offset)
        case .setBlock(let target, let filter, let body):
            var captured = ""
            captureDepth += 1
            defer { captureDepth -= 1 }
            _ = try execute(body, scope: scope, into: &captured)
            var value = JinjaValue.string(captured)
            if let filter { value = try evaluate(filter, scope, piped: value) }
            try assign(value, to: target, in: scope, offset: stmt.offset)
        case .macro(let name, let parameters, let body):
            scope.set(name, .function(makeMacro(name: name, parameters: parameters, body: body, definedIn: scope)))
        case .filterBlock(let filter, let body):
            var captured = ""
            captureDepth += 1
            defer { captureDepth -= 1 }
            _ = try execute(body, scope: JinjaScope(parent: scope), into: &captured)
            out += try evaluate(filter, scope, piped: .string(captured)).pyStr
        case .with(let assignments, let body):
            let inner = JinjaScope(parent: scope)
            for (target, expr) in assignments {
                try assign(try evaluate(expr, scope), to: target, in: inner, offset: stmt.offset)
            }
            return try execute(body, scope: inner, into: &out)
        case .generation(let body):
            let start = out.utf8.count
            _ = try execute(body, scope: JinjaScope(parent: scope), into: &out)
            if captureDepth == 0 && out.utf8.count > start { generationSpans.append(start..<out.utf8.count) }
        case .breakLoop:
            return .breakLoop
        case .continueLoop:
            return .continueLoop
        }
        return .normal
    }

    private func checkOutputSize(_ out: String, at offset: Int) throws {
        if out.utf8.count > Self.maxOutputBytes {
            throw located(JinjaRuntimeError("rendered output is larger than \(Self.maxOutputBytes) bytes"), at: offset)
        }
    }

    private func assign(_ value: JinjaValue, to target: JinjaAssignTarget, in scope: JinjaScope, offset: Int) throws {
        switch target {
        case .name(let name):
            scope.set(name, value)
        case .tuple(let targets):
            let items: [JinjaValue]
            do { items = try pythonIterate(value) } catch { throw located(error, at: offset) }
            guard items.count == targets.count else {
                let problem = items.count < targets.count ? "not enough" : "too many"
                throw located(JinjaRuntimeError("\(problem) values to unpack (expected \(targets.count), got \(items.count))"), at: offset)
            }
            for (t, v) in zip(targets, items) { try assign(v, to: t, in: scope, offset: offset) }
        case .namespaceAttribute(let name, let attribute):
            guard case .namespace(let ns)? = scope.lookup(name), ns.isNamespace else {
                throw located(JinjaRuntimeError("cannot assign attribute on non-namespace object"), at: offset)
            }
            if attribute.hasPrefix("_") {
                throw located(JinjaRuntimeError(
                    "Chat templates cannot store underscore-prefixed attributes on a namespace, but got '\(attribute)'. Please rename the attribute."
                ), at: offset)
            }
            ns[attribute] = value
        }
    }

    private func executeFor(_ loop: JinjaForLoop, scope: JinjaScope, into out: inout String, offset: Int) throws {
        var items: [JinjaValue]
        do { items = try pythonIterate(try evaluate(loop.iterable, scope).demoted) } catch { throw located(error, at: loop.iterable.offset) }
        if let condition = loop.condition {
            items = try items.filter { item in
                let probe = JinjaScope(parent: scope)
                try assign(item, to: loop.target, in: probe, offset: offset)
                return try evaluate(condition, probe).isTruthy
            }
        }
        if items.isEmpty {
            _ = try execute(loop.otherwise, scope: JinjaScope(parent: scope), into: &out)
            return
        }
        let changed = JinjaLoopState.ChangedMemory()
        for (i, item) in items.enumerated() {
            iterations += 1
            if iterations > Self.maxIterations {
                throw located(JinjaRuntimeError("more than \(Self.maxIterations) loop iterations in one render"), at: offset)
            }
            let frame = JinjaScope(parent: scope)
            frame.set("loop", .namespace(JinjaNamespace(loop: JinjaLoopState(index: i, items: items, changed: changed))))
            try assign(item, to: loop.target, in: frame, offset: offset)
            if try execute(loop.body, scope: frame, into: &out) == .breakLoop { break }
        }
    }

    private func makeMacro(name: String, parameters: [JinjaMacroParameter], body: [JinjaStmt], definedIn scope: JinjaScope) -> JinjaFunction {
        JinjaFunction(name: name) { args in
            guard self.macroDepth < Self.maxMacroDepth else {
                throw JinjaRuntimeError("macro '\(name)' nested more than \(Self.maxMacroDepth) calls deep")
            }
            self.macroDepth += 1
            defer { self.macroDepth -= 1 }
            let frame = JinjaScope(parent: scope)
            var extraKeywords = JinjaObject()
            for (i, parameter) in parameters.enumerated() {
                if i < args.positional.count {
                    frame.set(parameter.name, args.positional[i])
                } else if let kw = args.keywords.last(where: { $0.0 == parameter.name }) {
                    frame.set(parameter.name, kw.1)
                } else if let defaultValue = parameter.defaultValue {
                    frame.set(parameter.name, try self.evaluate(defaultValue, frame))
                } else {
                    frame.set(parameter.name, .undefined)
                }
            }
            for (key, value) in args.keywords where !parameters.contains(where: { $0.name == key }) {
                extraKeywords[key] = value
            }
            frame.set("varargs", .array(Array(args.positional.dropFirst(parameters.count))))
            frame.set("kwargs", .object(extraKeywords))
            var out = ""
            _ = try self.execute(body, scope: frame, into: &out)
            return .string(out)
        }
    }

    // MARK: - Expressions

    /// Evaluates `expr`; `piped` is the operand of a filter chain whose first filter has none
    /// (`{% filter %}` and `{% set x | f %}` blocks).
    func evaluate(_ expr: JinjaExpr, _ scope: JinjaScope, piped: JinjaValue? = nil) throws -> JinjaValue {
        do {
            let value = try evaluateUnlocated(expr, scope, piped: piped)
            try JinjaLimits.check(value)
            return value
        } catch let e where e is JinjaRuntimeError || e is JinjaRaise || e is JinjaUndefinedUse {
            if e is JinjaUndefinedUse {
                throw located(JinjaRuntimeError("'\(describe(expr))' is undefined"), at: expr.offset)
            }
            throw located(e, at: expr.offset)
        }
    }

    /// Evaluates an operand that must not be Undefined.
    private func defined(_ expr: JinjaExpr, _ scope: JinjaScope) throws -> JinjaValue {
        let value = try evaluate(expr, scope)
        if value.isUndefined { throw JinjaRuntimeError("'\(describe(expr))' is undefined") }
        return value
    }

    // Each case lives in its own small function: the recursive path then keeps small stack frames.
    private func evaluateUnlocated(_ expr: JinjaExpr, _ scope: JinjaScope, piped: JinjaValue?) throws -> JinjaValue {
        switch expr.kind {
        case .literal(let v): return v
        case .name(let name): return scope.lookup(name) ?? .undefined
        case .list(let items): return .array(try evaluateAll(items, scope))
        case .tuple(let items): return .tuple(try evaluateAll(items, scope))
        case .dict(let pairs): return try evaluateDict(pairs, scope)
        case .getAttribute(let base, let name): return try jinjaGetAttribute(try defined(base, scope).demoted, name)
        case .getItem(let base, let index): return try evaluateGetItem(base, index, scope)
        case .slice: throw JinjaRuntimeError("a slice can only be used as an index")
        case .call(let callee, let arguments): return try evaluateCall(callee, arguments, scope)
        case .filter(let operand, let name, let arguments): return try evaluateFilter(operand, name, arguments, scope, piped: piped)
        case .test(let operand, let name, let arguments):
            return .bool(try applyTest(name, try evaluate(operand, scope).demoted, try evaluateArguments(arguments, scope)))
        case .not(let operand): return .bool(!(try evaluate(operand, scope).isTruthy))
        case .negate(let operand): return try negate(try defined(operand, scope).demoted)
        case .plus(let operand): return try unaryPlus(try defined(operand, scope).demoted)
        case .binary(let op, let left, let right): return try pythonBinaryOperation(op, try defined(left, scope), try defined(right, scope))
        case .concat(let items): return try evaluateConcat(items, scope)
        case .and(let left, let right): return try evaluateAnd(left, right, scope)
        case .or(let left, let right): return try evaluateOr(left, right, scope)
        case .compare(let first, let operations): return try evaluateCompare(first, operations, scope)
        case .conditional(let test, let then, let otherwise): return try evaluateConditional(test, then, otherwise, scope)
        }
    }

    private func evaluateAll(_ items: [JinjaExpr], _ scope: JinjaScope) throws -> [JinjaValue] {
        try items.map { try evaluate($0, scope) }
    }

    private func evaluateDict(_ pairs: [(key: JinjaExpr, value: JinjaExpr)], _ scope: JinjaScope) throws -> JinjaValue {
        var object = JinjaObject()
        for pair in pairs {
            let key = try evaluate(pair.key, scope).demoted
            guard let k = JinjaKey(key) else {
                throw JinjaRuntimeError("dict keys must be strings or integers in chat templates, got \(key.typeName)")
            }
            object[k] = try evaluate(pair.value, scope)
        }
        return .object(object)
    }

    private func evaluateGetItem(_ base: JinjaExpr, _ index: JinjaExpr, _ scope: JinjaScope) throws -> JinjaValue {
        let container = try defined(base, scope).demoted
        if case .slice(let start, let stop, let step) = index.kind {
            return try pythonSlice(container,
                             start: try start.map { try evaluate($0, scope) },
                             stop: try stop.map { try evaluate($0, scope) },
                             step: try step.map { try evaluate($0, scope) })
        }
        return try jinjaGetItem(container, try evaluate(index, scope).demoted)
    }

    private func evaluateFilter(_ operand: JinjaExpr?, _ name: String, _ arguments: JinjaCallArguments, _ scope: JinjaScope,
                                piped: JinjaValue?) throws -> JinjaValue {
        let value = try operand.map { try evaluate($0, scope) } ?? piped ?? .undefined
        let args = try evaluateArguments(arguments, scope)
        do {
            return try applyFilter(name, value, args)
        } catch is JinjaUndefinedUse {
            throw JinjaRuntimeError("'\(operand.map(describe) ?? "block")' is undefined")
        }
    }

    private func negate(_ value: JinjaValue) throws -> JinjaValue {
        switch value {
        case .int(let i): return .int(-i)
        case .bool(let b): return .int(b ? -1 : 0)
        case .double(let d): return .double(-d)
        default: throw JinjaRuntimeError("bad operand type for unary -: '\(value.typeName)'")
        }
    }

    private func unaryPlus(_ value: JinjaValue) throws -> JinjaValue {
        if case .bool(let b) = value { return .int(b ? 1 : 0) }
        guard pythonNumericValue(value) != nil else { throw JinjaRuntimeError("bad operand type for unary +: '\(value.typeName)'") }
        return value
    }

    private func evaluateConcat(_ items: [JinjaExpr], _ scope: JinjaScope) throws -> JinjaValue {
        .string(try items.map { try evaluate($0, scope).pyStr }.joined())
    }

    private func evaluateAnd(_ left: JinjaExpr, _ right: JinjaExpr, _ scope: JinjaScope) throws -> JinjaValue {
        let l = try evaluate(left, scope)
        return l.isTruthy ? try evaluate(right, scope) : l
    }

    private func evaluateOr(_ left: JinjaExpr, _ right: JinjaExpr, _ scope: JinjaScope) throws -> JinjaValue {
        let l = try evaluate(left, scope)
        return l.isTruthy ? l : try evaluate(right, scope)
    }

    private func evaluateCompare(_ first: JinjaExpr, _ operations: [(JinjaCompareOperator, JinjaExpr)], _ scope: JinjaScope) throws -> JinjaValue {
        var leftExpr = first
        var left = try evaluate(first, scope).demoted
        for (op, rightExpr) in operations {
            let right = try evaluate(rightExpr, scope).demoted
            if op != .equal && op != .notEqual && op != .contains && op != .notContains {
                if left.isUndefined { throw JinjaRuntimeError("'\(describe(leftExpr))' is undefined") }
                if right.isUndefined { throw JinjaRuntimeError("'\(describe(rightExpr))' is undefined") }
            }
            if !(try pythonCompare(op, left, right)) { return .bool(false) }
            left = right
            leftExpr = rightExpr
        }
        return .bool(true)
    }

    private func evaluateConditional(_ test: JinjaExpr, _ then: JinjaExpr, _ otherwise: JinjaExpr?, _ scope: JinjaScope) throws -> JinjaValue {
        if try evaluate(test, scope).isTruthy { return try evaluate(then, scope) }
        return try otherwise.map { try evaluate($0, scope) } ?? .undefined
    }

    /// Filters, tests and methods see a Markup argument as its string (`demote`); a macro or
    /// global function gets it as it is, as in jinja2.
    private func evaluateArguments(_ arguments: JinjaCallArguments, _ scope: JinjaScope, demote: Bool = true) throws -> JinjaArguments {
        func value(_ expr: JinjaExpr) throws -> JinjaValue {
            let v = try evaluate(expr, scope)
            return demote ? v.demoted : v
        }
        return JinjaArguments(try arguments.positional.map(value), keywords: try arguments.keywords.map { ($0.name, try value($0.value)) })
    }

    private func evaluateCall(_ callee: JinjaExpr, _ arguments: JinjaCallArguments, _ scope: JinjaScope) throws -> JinjaValue {
        // obj.method(...) calls the method directly, without building a bound-method value.
        if case .getAttribute(let base, let name) = callee.kind {
            let receiver = try defined(base, scope).demoted
            let args = try evaluateArguments(arguments, scope)
            if let result = try jinjaCallMethod(receiver, name, args) { return result }
            let attribute = try jinjaGetAttribute(receiver, name)
            guard case .function(let f) = attribute else {
                if attribute.isUndefined { throw JinjaRuntimeError("'\(describe(callee))' is undefined") }
                throw JinjaRuntimeError("'\(attribute.typeName)' object is not callable")
            }
            return try f.call(args)
        }
        let function = try defined(callee, scope)
        guard case .function(let f) = function else {
            throw JinjaRuntimeError("'\(function.typeName)' object is not callable")
        }
        return try f.call(try evaluateArguments(arguments, scope, demote: false))
    }

    /// The expression as source-like text, for "'x.y' is undefined" messages.
    private func describe(_ expr: JinjaExpr) -> String {
        switch expr.kind {
        case .name(let n): return n
        case .literal(let v): return v.pyRepr
        case .getAttribute(let base, let name): return describe(base) + "." + name
        case .getItem(let base, let index):
            if case .slice = index.kind { return describe(base) + "[...]" }
            return describe(base) + "[" + describe(index) + "]"
        case .call(let callee, _): return describe(callee) + "(...)"
        case .filter(let operand, let name, _): return (operand.map(describe) ?? "") + " | " + name
        default: return "expression"
        }
    }

    // MARK: - Globals

    /// transformers' globals (`strftime_now` is added per render, it reads the template's clock).
    private static let sharedGlobals: [String: JinjaValue] = [
        "raise_exception": .function(JinjaFunction(name: "raise_exception") { args in
            throw JinjaRaise(message: args.positional.first?.pyStr ?? args.keywords.first?.1.pyStr ?? "")
        }),
        "namespace": .function(JinjaFunction(name: "namespace") { args in
            var attributes = JinjaObject()
            for value in args.positional {
                guard case .object(let o) = value else { throw JinjaRuntimeError("namespace() takes a dict or keyword arguments") }
                for (k, v) in o.pairs { attributes[k] = v }
            }
            for (k, v) in args.keywords { attributes[k] = v }
            if case .string(let bad)? = attributes.keys.first(where: { if case .string(let k) = $0 { return k.hasPrefix("_") } else { return false } }) {
                throw JinjaRuntimeError("Chat templates cannot store underscore-prefixed attributes on a namespace, but got '\(bad)'. Please rename the attribute.")
            }
            return .namespace(JinjaNamespace(attributes: attributes))
        }),
        "dict": .function(JinjaFunction(name: "dict") { args in
            var object = JinjaObject()
            for value in args.positional {
                switch value {
                case .object(let o): for (k, v) in o.pairs { object[k] = v }
                default:
                    for pair in try pythonIterate(value) {
                        let kv = try pythonIterate(pair)
                        guard kv.count == 2, let k = JinjaKey(kv[0]) else { throw JinjaRuntimeError("dict() needs key/value pairs") }
                        object[k] = kv[1]
                    }
                }
            }
            for (k, v) in args.keywords { object[k] = v }
            return .object(object)
        }),
        "range": .function(JinjaFunction(name: "range") { args in try pythonRange(args) }),
    ]
}

/// Python's `range(stop)` / `range(start, stop[, step])` as a list, capped like jinja2's sandbox (100,000 items).
func pythonRange(_ args: JinjaArguments) throws -> JinjaValue {
    let numbers = try args.positional.map { value -> Int in
        guard case .int(let i) = value else {
            if case .bool(let b) = value { return b ? 1 : 0 }
            throw JinjaRuntimeError("'\(value.typeName)' object cannot be interpreted as an integer")
        }
        return i
    }
    var start = 0, stop = 0, step = 1
    switch numbers.count {
    case 1: stop = numbers[0]
    case 2: (start, stop) = (numbers[0], numbers[1])
    case 3: (start, stop, step) = (numbers[0], numbers[1], numbers[2])
    default: throw JinjaRuntimeError("range expected 1 to 3 arguments, got \(numbers.count)")
    }
    if step == 0 { throw JinjaRuntimeError("range() arg 3 must not be zero") }
    let count = step > 0 ? max(0, (stop - start + step - 1) / step) : max(0, (start - stop - step - 1) / -step)
    if count > 100_000 { throw JinjaRuntimeError("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).") }
    return .array((0..<count).map { .int(start + $0 * step) })
}

/// Python's `datetime.now().strftime(format)`: C `strftime` in the local time zone, except that a
/// naive datetime prints `%z` and `%Z` as empty and `%f` as microseconds.
func pythonStrftime(_ format: String, _ date: Date) -> String {
    let seconds = date.timeIntervalSince1970.rounded(.down)
    var pythonFormat = ""
    var chars = format.makeIterator()
    while let c = chars.next() {
        guard c == "%" else { pythonFormat.append(c); continue }
        guard let d = chars.next() else { pythonFormat.append(c); break }
        switch d {
        case "z", "Z": break
        case "f": pythonFormat += String(format: "%06d", Int((date.timeIntervalSince1970 - seconds) * 1_000_000))
        default: pythonFormat += "%" + String(d)
        }
    }
    var time = time_t(seconds)
    var parts = tm()
    localtime_r(&time, &parts)
    var size = 256
    while size <= 1 << 16 {
        var buffer = [CChar](repeating: 0, count: size)
        let written = Foundation.strftime(&buffer, size, pythonFormat, &parts)
        if written > 0 || pythonFormat.isEmpty {
            return String(decoding: buffer[0..<written].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        size *= 4
    }
    return ""
}
