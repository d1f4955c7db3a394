import FinchKernels
import FinchIO

/// jinja2's built-in tests (jinja2/tests.py): `x is defined`, `x is string`, `x is divisibleby 3`, ...
enum JinjaPredicates {
    typealias Test = @Sendable (JinjaValue, [JinjaValue]) throws -> Bool

    static let table: [String: Test] = {
        @Sendable func argument(_ args: [JinjaValue], _ name: String) throws -> JinjaValue {
            guard let first = args.first else { throw JinjaRuntimeError("test '\(name)' needs an argument") }
            return first
        }
        var t: [String: Test] = [
            "boolean": { v, _ in if case .bool = v { return true } else { return false } },
            // Undefined defines __call__ (to raise), so jinja2 calls it callable.
            "callable": { v, _ in
                switch v {
                case .function, .undefined: return true
                default: return false
                }
            },
            "defined": { v, _ in !v.isUndefined },
            "undefined": { v, _ in v.isUndefined },
            "none": { v, _ in v == .none },
            "true": { v, _ in v == .bool(true) },
            "false": { v, _ in v == .bool(false) },
            "string": { v, _ in if case .string = v { return true } else { return false } },
            "mapping": { v, _ in if case .object = v { return true } else { return false } },
            "number": { v, _ in pythonNumericValue(v) != nil },
            "integer": { v, _ in if case .int = v { return true } else { return false } },
            "float": { v, _ in if case .double = v { return true } else { return false } },
            // Undefined is iterable (empty) and a sequence (it has __len__ and __getitem__) in jinja2.
            "iterable": { v, _ in
                switch v {
                case .string, .array, .tuple, .object, .undefined, .iterator: return true
                default: return false
                }
            },
            "sequence": { v, _ in
                switch v {
                case .string, .array, .tuple, .object, .undefined: return true
                default: return false
                }
            },
            "escaped": { _, _ in false },
            "lower": { v, _ in pythonIsLower(v.pyStr) },
            "upper": { v, _ in pythonIsUpper(v.pyStr) },
            // jinja2: `value % 2 == 0`, `value % 2 == 1`, `value % num == 0` (so "%s" is odd is "2" == 1).
            "even": { v, _ in pyEquals(try pythonBinaryOperation(.modulo, v, .int(2)), .int(0)) },
            "odd": { v, _ in pyEquals(try pythonBinaryOperation(.modulo, v, .int(2)), .int(1)) },
            "divisibleby": { v, args in pyEquals(try pythonBinaryOperation(.modulo, v, try argument(args, "divisibleby")), .int(0)) },
            "eq": { v, args in pyEquals(v, try argument(args, "eq")) },
            "ne": { v, args in !pyEquals(v, try argument(args, "ne")) },
            "lt": { v, args in try pythonCompare(.less, v, try argument(args, "lt")) },
            "le": { v, args in try pythonCompare(.lessOrEqual, v, try argument(args, "le")) },
            "gt": { v, args in try pythonCompare(.greater, v, try argument(args, "gt")) },
            "ge": { v, args in try pythonCompare(.greaterOrEqual, v, try argument(args, "ge")) },
            "in": { v, args in try pythonContains(try argument(args, "in"), v) },
            "sameas": { v, args in
                let other = try argument(args, "sameas")
                switch (v, other) {
                case (.none, .none), (.undefined, .undefined): return true
                case let (.bool(a), .bool(b)): return a == b
                case let (.namespace(a), .namespace(b)): return a === b
                case let (.function(a), .function(b)): return a === b
                default: return false
                }
            },
            "filter": { v, _ in v.stringValue.map { JinjaFilters.table[$0] != nil } ?? false },
            "test": { v, _ in v.stringValue.map { JinjaPredicates.table[$0] != nil || $0 == "test" } ?? false },
        ]
        t["=="] = t["eq"]
        t["equalto"] = t["eq"]
        t["!="] = t["ne"]
        t["<"] = t["lt"]
        t["lessthan"] = t["lt"]
        t["<="] = t["le"]
        t[">"] = t["gt"]
        t["greaterthan"] = t["gt"]
        t[">="] = t["ge"]
        return t
    }()
}

extension JinjaInterpreter {
    func applyTest(_ name: String, _ value: JinjaValue, _ args: JinjaArguments) throws -> Bool {
        guard let test = JinjaPredicates.table[name] else { throw JinjaRuntimeError("No test named '\(name)'.") }
        return try test(value, args.positional + args.keywords.map(\.1))
    }
}
