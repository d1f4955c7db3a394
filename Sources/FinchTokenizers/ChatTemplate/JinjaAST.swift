import FinchKernels
import FinchIO

/// The parsed form of a template: jinja2's `nodes` module, reduced to what chat templates use.
/// Every node keeps the source offset of its first token, for error locations.
struct JinjaExpr {
    indirect enum Kind {
        case literal(JinjaValue)
        case name(String)
        case list([JinjaExpr])
        case tuple([JinjaExpr])
        case dict([(key: JinjaExpr, value: JinjaExpr)])
        case getAttribute(JinjaExpr, String)
        case getItem(JinjaExpr, JinjaExpr)
        /// `a[start:stop:step]`; only appears as the index of `getItem`.
        case slice(start: JinjaExpr?, stop: JinjaExpr?, step: JinjaExpr?)
        case call(JinjaExpr, JinjaCallArguments)
        /// `value | name(args)`; the operand is nil in `{% filter %}` and `{% set x | f %}` blocks.
        case filter(JinjaExpr?, name: String, JinjaCallArguments)
        case test(JinjaExpr, name: String, JinjaCallArguments)
        case not(JinjaExpr)
        case negate(JinjaExpr)
        case plus(JinjaExpr)
        case binary(JinjaBinaryOperator, JinjaExpr, JinjaExpr)
        /// `a ~ b ~ c`
        case concat([JinjaExpr])
        case and(JinjaExpr, JinjaExpr)
        case or(JinjaExpr, JinjaExpr)
        /// `a < b <= c`: Python's chained comparison.
        case compare(JinjaExpr, [(JinjaCompareOperator, JinjaExpr)])
        /// `then if test else otherwise`; without `else` the result is Undefined when the test fails.
        case conditional(test: JinjaExpr, then: JinjaExpr, otherwise: JinjaExpr?)
    }

    let kind: Kind
    let offset: Int
    /// Height of the tree below this node; the parser bounds it so evaluation cannot exhaust the stack.
    let depth: Int

    init(kind: Kind, offset: Int) {
        self.kind = kind
        self.offset = offset
        self.depth = 1 + (kind.children.lazy.map(\.depth).max() ?? 0)
    }
}

extension JinjaExpr.Kind {
    var children: [JinjaExpr] {
        switch self {
        case .literal, .name: return []
        case .list(let items), .tuple(let items), .concat(let items): return items
        case .dict(let pairs): return pairs.flatMap { [$0.key, $0.value] }
        case .getAttribute(let base, _): return [base]
        case .getItem(let base, let index): return [base, index]
        case .slice(let a, let b, let c): return [a, b, c].compactMap { $0 }
        case .call(let callee, let args): return [callee] + args.all
        case .filter(let operand, _, let args): return (operand.map { [$0] } ?? []) + args.all
        case .test(let operand, _, let args): return [operand] + args.all
        case .not(let e), .negate(let e), .plus(let e): return [e]
        case .binary(_, let a, let b), .and(let a, let b), .or(let a, let b): return [a, b]
        case .compare(let first, let rest): return [first] + rest.map(\.1)
        case .conditional(let test, let then, let otherwise): return [test, then] + (otherwise.map { [$0] } ?? [])
        }
    }
}

enum JinjaBinaryOperator: String {
    case add = "+", subtract = "-", multiply = "*", divide = "/", floorDivide = "//", modulo = "%", power = "**"
}

enum JinjaCompareOperator: String {
    case equal = "==", notEqual = "!=", less = "<", lessOrEqual = "<=", greater = ">", greaterOrEqual = ">="
    case contains = "in", notContains = "not in"
}

struct JinjaCallArguments {
    var positional: [JinjaExpr] = []
    var keywords: [(name: String, value: JinjaExpr)] = []

    var all: [JinjaExpr] { positional + keywords.map(\.value) }
}

/// What `{% set %}`, `{% for %}` and `{% with %}` assign to.
indirect enum JinjaAssignTarget {
    case name(String)
    case tuple([JinjaAssignTarget])
    /// `{% set ns.attribute = ... %}`
    case namespaceAttribute(String, String)
}

struct JinjaMacroParameter {
    let name: String
    let defaultValue: JinjaExpr?
}

struct JinjaStmt {
    indirect enum Kind {
        case data(String)
        case output(JinjaExpr)
        case ifChain(branches: [(test: JinjaExpr, body: [JinjaStmt])], otherwise: [JinjaStmt])
        case forLoop(JinjaForLoop)
        case set(JinjaAssignTarget, JinjaExpr)
        /// `{% set x %}...{% endset %}`, optionally through filters: `{% set x | trim %}`.
        case setBlock(JinjaAssignTarget, filter: JinjaExpr?, body: [JinjaStmt])
        case macro(name: String, parameters: [JinjaMacroParameter], body: [JinjaStmt])
        /// `{% filter upper %}...{% endfilter %}`
        case filterBlock(JinjaExpr, body: [JinjaStmt])
        case with(assignments: [(JinjaAssignTarget, JinjaExpr)], body: [JinjaStmt])
        /// transformers' `{% generation %}` tag: renders its body unchanged.
        case generation([JinjaStmt])
        case breakLoop
        case continueLoop
    }

    let kind: Kind
    let offset: Int

    /// The statements nested in this one.
    var children: [JinjaStmt] {
        switch kind {
        case .data, .output, .set, .breakLoop, .continueLoop: return []
        case let .ifChain(branches, otherwise): return branches.flatMap(\.body) + otherwise
        case let .forLoop(loop): return loop.body + loop.otherwise
        case let .setBlock(_, _, body), let .macro(_, _, body), let .filterBlock(_, body), let .with(_, body), let .generation(body): return body
        }
    }
}

struct JinjaForLoop {
    let target: JinjaAssignTarget
    let iterable: JinjaExpr
    /// `{% for x in xs if cond %}`: filters items before `loop` counts them.
    let condition: JinjaExpr?
    let body: [JinjaStmt]
    let otherwise: [JinjaStmt]
}
