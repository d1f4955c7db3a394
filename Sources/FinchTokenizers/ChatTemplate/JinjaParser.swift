import FinchKernels
import FinchIO

/// Builds the AST from tokens with jinja2's grammar and precedence (jinja2/parser.py).
/// Unknown filters and tests are reported here, as jinja2 reports them when compiling.
struct JinjaParser {
    private let source: JinjaSource
    private let tokens: [JinjaToken]
    private var index = 0
    /// Statement names that end the blocks being parsed, innermost last (for error messages).
    private var endTagStack: [[String]] = []
    private var openTags: [String] = []
    private var loopDepth = 0
    private var depth = 0
    /// Bounds on statement nesting and expression height. Real templates stay far below; the bounds
    /// keep the recursive interpreter inside a 512 KiB thread stack.
    private static let maxDepth = 100
    private static let maxExpressionDepth = 100

    static func parse(_ source: JinjaSource) throws -> [JinjaStmt] {
        var parser = JinjaParser(source: source, tokens: try JinjaLexer.tokenize(source))
        let body = try parser.subparse(endTags: nil)
        return body
    }

    private init(source: JinjaSource, tokens: [JinjaToken]) {
        self.source = source
        self.tokens = tokens
    }

    // MARK: - Token stream

    private var current: JinjaToken { tokens[index] }
    private var next: JinjaToken { tokens[min(index + 1, tokens.count - 1)] }

    private mutating func advance() {
        if index < tokens.count - 1 { index += 1 }
    }

    private func isName(_ name: String, _ token: JinjaToken? = nil) -> Bool {
        if case .name(let n) = (token ?? current).kind { return n == name }
        return false
    }

    private func isOp(_ op: String, _ token: JinjaToken? = nil) -> Bool {
        if case .op(let o) = (token ?? current).kind { return o == op }
        return false
    }

    private mutating func skipName(_ name: String) -> Bool {
        guard isName(name) else { return false }
        advance()
        return true
    }

    private mutating func skipOp(_ op: String) -> Bool {
        guard isOp(op) else { return false }
        advance()
        return true
    }

    private func describe(_ token: JinjaToken) -> String {
        switch token.kind {
        case .data: return "template data"
        case .variableBegin: return "'{{'"
        case .variableEnd: return "end of print statement '}}'"
        case .blockBegin: return "'{%'"
        case .blockEnd: return "end of statement block '%}'"
        case .name(let n): return "'\(n)'"
        case .string(let s): return "string \(pythonStringRepr(s))"
        case .integer(let i): return "integer \(i)"
        case .float(let d): return "float \(pythonFloatRepr(d))"
        case .op(let o): return "'\(o)'"
        case .eof: return "end of template"
        }
    }

    private func fail(_ message: String, at token: JinjaToken? = nil) -> ChatTemplateError {
        .syntax(message: message, location: source.location(of: (token ?? current).offset))
    }

    private func unexpected(expected: String) -> ChatTemplateError {
        fail("expected \(expected), found \(describe(current))")
    }

    private mutating func expectOp(_ op: String) throws {
        guard skipOp(op) else { throw unexpected(expected: "'\(op)'") }
    }

    private mutating func expectName() throws -> String {
        guard case .name(let n) = current.kind else { throw unexpected(expected: "a name") }
        advance()
        return n
    }

    private mutating func expectBlockEnd() throws {
        guard current.kind == .blockEnd else { throw unexpected(expected: "end of statement block '%}'") }
        advance()
    }

    private func make(_ kind: JinjaExpr.Kind, offset: Int) throws -> JinjaExpr {
        let expr = JinjaExpr(kind: kind, offset: offset)
        if expr.depth > Self.maxExpressionDepth {
            throw ChatTemplateError.syntax(message: "expression nested too deeply (more than \(Self.maxExpressionDepth) levels)",
                                           location: source.location(of: offset))
        }
        return expr
    }

    /// Counts one level of recursion; pair with `defer { depth -= 1 }`.
    private mutating func enter() throws {
        if depth >= Self.maxDepth { throw fail("template nested too deeply (more than \(Self.maxDepth) levels)") }
        depth += 1
    }

    // MARK: - Statements

    /// Parses until a `{% name %}` with a name in `endTags`; leaves that name as the current token.
    private mutating func subparse(endTags: [String]?) throws -> [JinjaStmt] {
        if let endTags { endTagStack.append(endTags) }
        defer { if endTags != nil { endTagStack.removeLast() } }
        var body: [JinjaStmt] = []
        while true {
            let token = current
            switch token.kind {
            case .eof:
                return body
            case .data(let text):
                body.append(JinjaStmt(kind: .data(text), offset: token.offset))
                advance()
            case .variableBegin:
                advance()
                let expr = try parseTuple()
                guard current.kind == .variableEnd else { throw unexpected(expected: "end of print statement '}}'") }
                advance()
                body.append(JinjaStmt(kind: .output(expr), offset: token.offset))
            case .blockBegin:
                advance()
                if let endTags, case .name(let n) = current.kind, endTags.contains(n) { return body }
                try enter()
                let stmt = try parseStatement(openedAt: token)
                depth -= 1
                if let stmt { body.append(stmt) }
                try expectBlockEnd()
            default:
                throw fail("unexpected \(describe(token)) outside of a tag")
            }
        }
    }

    /// Body of a block statement: `%}`, statements, up to one of `endTags`.
    private mutating func parseBody(until endTags: [String], dropEndTag: Bool) throws -> [JinjaStmt] {
        _ = skipOp(":")
        try expectBlockEnd()
        let body = try subparse(endTags: endTags)
        if current.kind == .eof { throw failEndOfTemplate(expecting: endTags) }
        if dropEndTag { advance() }
        return body
    }

    private func quotedList(_ names: [String]) -> String {
        names.map { "'\($0)'" }.joined(separator: " or ")
    }

    private func failEndOfTemplate(expecting endTags: [String]) -> ChatTemplateError {
        var message = "unexpected end of template, expected \(quotedList(endTags))"
        if let open = openTags.last { message += " (the innermost block that needs to be closed is '\(open)')" }
        return fail(message)
    }

    private func failUnknownTag(_ name: String, at token: JinjaToken) -> ChatTemplateError {
        var message = "unknown tag '\(name)'"
        if let expected = endTagStack.last {
            let allExpected = endTagStack.flatMap { $0 }
            message += allExpected.contains(name)
                ? "; probably a nesting mistake: expected \(quotedList(expected)) here"
                : ", expected \(quotedList(expected))"
        }
        if let open = openTags.last { message += " (the innermost block that needs to be closed is '\(open)')" }
        return fail(message, at: token)
    }

    private mutating func parseStatement(openedAt begin: JinjaToken) throws -> JinjaStmt? {
        let token = current
        guard case .name(let tag) = token.kind else { throw fail("expected a tag name, found \(describe(token))") }
        openTags.append(tag)
        defer { openTags.removeLast() }
        let offset = begin.offset
        switch tag {
        case "if": return try parseIf(offset)
        case "for": return try parseFor(offset)
        case "set": return try parseSet(offset)
        case "macro": return try parseMacro(offset)
        case "filter":
            advance()
            guard let filter = try parseFilters(nil, startInline: true) else { throw unexpected(expected: "a filter name") }
            return JinjaStmt(kind: .filterBlock(filter, body: try parseBody(until: ["endfilter"], dropEndTag: true)), offset: offset)
        case "with": return try parseWith(offset)
        case "generation":
            advance()
            return JinjaStmt(kind: .generation(try parseBody(until: ["endgeneration"], dropEndTag: true)), offset: offset)
        case "break", "continue":
            advance()
            if loopDepth == 0 { throw fail("'\(tag)' outside of a for loop", at: token) }
            return JinjaStmt(kind: tag == "break" ? .breakLoop : .continueLoop, offset: offset)
        case "print":
            advance()
            var items: [JinjaExpr] = []
            while current.kind != .blockEnd {
                if !items.isEmpty { try expectOp(",") }
                items.append(try parseExpression())
            }
            // Each expression is printed in turn, like `{{ a }}{{ b }}`.
            return JinjaStmt(kind: .output(items.count == 1 ? items[0] : try make(.concat(items), offset: offset)), offset: offset)
        case "block", "extends", "include", "import", "from", "call", "autoescape":
            throw fail("tag '\(tag)' is not supported in chat templates", at: token)
        default:
            openTags.removeLast()
            defer { openTags.append(tag) }
            throw failUnknownTag(tag, at: token)
        }
    }

    private mutating func parseIf(_ offset: Int) throws -> JinjaStmt {
        advance()
        var branches: [(test: JinjaExpr, body: [JinjaStmt])] = []
        var otherwise: [JinjaStmt] = []
        while true {
            let test = try parseTuple(withConditional: false)
            let body = try parseBody(until: ["elif", "else", "endif"], dropEndTag: false)
            branches.append((test, body))
            let end = try expectName()
            if end == "elif" { continue }
            if end == "else" { otherwise = try parseBody(until: ["endif"], dropEndTag: true) }
            break
        }
        return JinjaStmt(kind: .ifChain(branches: branches, otherwise: otherwise), offset: offset)
    }

    private mutating func parseFor(_ offset: Int) throws -> JinjaStmt {
        advance()
        let target = try parseAssignTarget(extraEnd: ["in"], allowNamespace: false)
        guard skipName("in") else { throw unexpected(expected: "'in'") }
        let iterable = try parseTuple(withConditional: false, extraEnd: ["recursive"])
        var condition: JinjaExpr? = nil
        if skipName("if") { condition = try parseExpression() }
        if isName("recursive") { throw fail("recursive for loops are not supported in chat templates") }
        loopDepth += 1
        let body = try parseBody(until: ["endfor", "else"], dropEndTag: false)
        loopDepth -= 1
        var otherwise: [JinjaStmt] = []
        if try expectName() == "else" {
            otherwise = try parseBody(until: ["endfor"], dropEndTag: true)
        }
        let loop = JinjaForLoop(target: target, iterable: iterable, condition: condition, body: body, otherwise: otherwise)
        return JinjaStmt(kind: .forLoop(loop), offset: offset)
    }

    private mutating func parseSet(_ offset: Int) throws -> JinjaStmt {
        advance()
        let target = try parseAssignTarget(extraEnd: [], allowNamespace: true)
        if skipOp("=") {
            return JinjaStmt(kind: .set(target, try parseTuple()), offset: offset)
        }
        let filter = try parseFilters(nil, startInline: false)
        let body = try parseBody(until: ["endset"], dropEndTag: true)
        return JinjaStmt(kind: .setBlock(target, filter: filter, body: body), offset: offset)
    }

    private mutating func parseMacro(_ offset: Int) throws -> JinjaStmt {
        advance()
        let name = try expectName()
        try expectOp("(")
        var parameters: [JinjaMacroParameter] = []
        while !isOp(")") {
            if !parameters.isEmpty { try expectOp(",") }
            if isOp(")") { break }
            let parameter = try expectName()
            if skipOp("=") {
                parameters.append(JinjaMacroParameter(name: parameter, defaultValue: try parseExpression()))
            } else if parameters.contains(where: { $0.defaultValue != nil }) {
                throw fail("non-default argument follows default argument")
            } else {
                parameters.append(JinjaMacroParameter(name: parameter, defaultValue: nil))
            }
        }
        try expectOp(")")
        let savedLoopDepth = loopDepth
        loopDepth = 0
        defer { loopDepth = savedLoopDepth }
        let body = try parseBody(until: ["endmacro"], dropEndTag: true)
        return JinjaStmt(kind: .macro(name: name, parameters: parameters, body: body), offset: offset)
    }

    private mutating func parseWith(_ offset: Int) throws -> JinjaStmt {
        advance()
        var assignments: [(JinjaAssignTarget, JinjaExpr)] = []
        while current.kind != .blockEnd {
            if !assignments.isEmpty { try expectOp(",") }
            let target = try parseAssignTarget(extraEnd: [], allowNamespace: false)
            try expectOp("=")
            assignments.append((target, try parseExpression()))
        }
        return JinjaStmt(kind: .with(assignments: assignments, body: try parseBody(until: ["endwith"], dropEndTag: true)), offset: offset)
    }

    /// Names, `ns.attr` (in `set`), or a comma-separated tuple of them.
    private mutating func parseAssignTarget(extraEnd: [String], allowNamespace: Bool) throws -> JinjaAssignTarget {
        var items: [JinjaAssignTarget] = []
        var isTuple = false
        while true {
            if !items.isEmpty { try expectOp(",") }
            if isTupleEnd(extraEnd) { break }
            if skipOp("(") {
                // `{% for (k, v) in ... %}`
                try enter()
                items.append(try parseAssignTarget(extraEnd: [], allowNamespace: allowNamespace))
                depth -= 1
                try expectOp(")")
                if isOp(",") { isTuple = true; continue } else { break }
            }
            guard case .name(let name) = current.kind, !["true", "false", "none", "True", "False", "None"].contains(name) else {
                throw unexpected(expected: "a variable name to assign to")
            }
            advance()
            if allowNamespace && isOp(".") {
                advance()
                items.append(.namespaceAttribute(name, try expectName()))
            } else {
                items.append(.name(name))
            }
            if isOp(",") { isTuple = true } else { break }
        }
        if !isTuple, let only = items.first { return only }
        if items.isEmpty { throw unexpected(expected: "a variable name to assign to") }
        return .tuple(items)
    }

    // MARK: - Expressions

    private func isTupleEnd(_ extraEnd: [String]) -> Bool {
        switch current.kind {
        case .variableEnd, .blockEnd, .eof: return true
        case .op(")"): return true
        case .name(let n): return extraEnd.contains(n)
        default: return false
        }
    }

    private mutating func parseTuple(withConditional: Bool = true, extraEnd: [String] = [], explicitParentheses: Bool = false) throws -> JinjaExpr {
        let offset = current.offset
        var items: [JinjaExpr] = []
        var isTuple = false
        while true {
            if !items.isEmpty { try expectOp(",") }
            if isTupleEnd(extraEnd) { break }
            items.append(withConditional ? try parseExpression() : try parseOr())
            if isOp(",") { isTuple = true } else { break }
        }
        if !isTuple {
            if let only = items.first { return only }
            if !explicitParentheses { throw unexpected(expected: "an expression") }
        }
        return try make(.tuple(items), offset: offset)
    }

    private mutating func parseExpression() throws -> JinjaExpr {
        try enter()
        defer { depth -= 1 }
        let offset = current.offset
        var expr = try parseOr()
        while skipName("if") {
            let test = try parseOr()
            let otherwise = skipName("else") ? try parseExpression() : nil
            expr = try make(.conditional(test: test, then: expr, otherwise: otherwise), offset: offset)
        }
        return expr
    }

    private mutating func parseOr() throws -> JinjaExpr {
        var left = try parseAnd()
        while isName("or") {
            let offset = current.offset
            advance()
            left = try make(.or(left, try parseAnd()), offset: offset)
        }
        return left
    }

    private mutating func parseAnd() throws -> JinjaExpr {
        var left = try parseNot()
        while isName("and") {
            let offset = current.offset
            advance()
            left = try make(.and(left, try parseNot()), offset: offset)
        }
        return left
    }

    private mutating func parseNot() throws -> JinjaExpr {
        if isName("not") {
            let offset = current.offset
            advance()
            try enter()
            defer { depth -= 1 }
            return try make(.not(try parseNot()), offset: offset)
        }
        return try parseCompare()
    }

    private mutating func parseCompare() throws -> JinjaExpr {
        let offset = current.offset
        let first = try parseMath1()
        var operations: [(JinjaCompareOperator, JinjaExpr)] = []
        while true {
            if case .op(let o) = current.kind, let op = JinjaCompareOperator(rawValue: o), op != .contains {
                advance()
                operations.append((op, try parseMath1()))
            } else if skipName("in") {
                operations.append((.contains, try parseMath1()))
            } else if isName("not") && isName("in", next) {
                advance()
                advance()
                operations.append((.notContains, try parseMath1()))
            } else {
                break
            }
        }
        return operations.isEmpty ? first : try make(.compare(first, operations), offset: offset)
    }

    private mutating func parseMath1() throws -> JinjaExpr {
        var left = try parseConcat()
        while case .op(let o) = current.kind, o == "+" || o == "-" {
            let offset = current.offset
            advance()
            left = try make(.binary(JinjaBinaryOperator(rawValue: o)!, left, try parseConcat()), offset: offset)
        }
        return left
    }

    private mutating func parseConcat() throws -> JinjaExpr {
        let offset = current.offset
        var items = [try parseMath2()]
        while skipOp("~") { items.append(try parseMath2()) }
        return items.count == 1 ? items[0] : try make(.concat(items), offset: offset)
    }

    private mutating func parseMath2() throws -> JinjaExpr {
        var left = try parsePower()
        while case .op(let o) = current.kind, ["*", "/", "//", "%"].contains(o) {
            let offset = current.offset
            advance()
            left = try make(.binary(JinjaBinaryOperator(rawValue: o)!, left, try parsePower()), offset: offset)
        }
        return left
    }

    private mutating func parsePower() throws -> JinjaExpr {
        var left = try parseUnary()
        while isOp("**") {
            let offset = current.offset
            advance()
            left = try make(.binary(.power, left, try parseUnary()), offset: offset)
        }
        return left
    }

    private mutating func parseUnary(withFilters: Bool = true) throws -> JinjaExpr {
        try enter()
        defer { depth -= 1 }
        let offset = current.offset
        var node: JinjaExpr
        if skipOp("-") {
            node = try make(.negate(try parseUnary(withFilters: false)), offset: offset)
        } else if skipOp("+") {
            node = try make(.plus(try parseUnary(withFilters: false)), offset: offset)
        } else {
            node = try parsePrimary()
        }
        node = try parsePostfix(node)
        if withFilters { node = try parseFilterExpression(node) }
        return node
    }

    private mutating func parsePrimary() throws -> JinjaExpr {
        let token = current
        switch token.kind {
        case .name(let n):
            advance()
            switch n {
            case "true", "True": return try make(.literal(.bool(true)), offset: token.offset)
            case "false", "False": return try make(.literal(.bool(false)), offset: token.offset)
            case "none", "None": return try make(.literal(.none), offset: token.offset)
            default: return try make(.name(n), offset: token.offset)
            }
        case .string(var s):
            advance()
            while case .string(let more) = current.kind {
                s += more
                advance()
            }
            return try make(.literal(.string(s)), offset: token.offset)
        case .integer(let i):
            advance()
            return try make(.literal(.int(i)), offset: token.offset)
        case .float(let d):
            advance()
            return try make(.literal(.double(d)), offset: token.offset)
        case .op("("):
            advance()
            let inner = try parseTuple(explicitParentheses: true)
            try expectOp(")")
            return inner
        case .op("["):
            advance()
            var items: [JinjaExpr] = []
            while !isOp("]") {
                if !items.isEmpty { try expectOp(",") }
                if isOp("]") { break }
                items.append(try parseExpression())
            }
            try expectOp("]")
            return try make(.list(items), offset: token.offset)
        case .op("{"):
            advance()
            var pairs: [(key: JinjaExpr, value: JinjaExpr)] = []
            while !isOp("}") {
                if !pairs.isEmpty { try expectOp(",") }
                if isOp("}") { break }
                let key = try parseExpression()
                try expectOp(":")
                pairs.append((key, try parseExpression()))
            }
            try expectOp("}")
            return try make(.dict(pairs), offset: token.offset)
        default:
            throw unexpected(expected: "an expression")
        }
    }

    private mutating func parsePostfix(_ start: JinjaExpr) throws -> JinjaExpr {
        var node = start
        while true {
            if isOp(".") || isOp("[") {
                node = try parseSubscript(node)
            } else if isOp("(") {
                node = try make(.call(node, try parseCallArguments()), offset: node.offset)
            } else {
                return node
            }
        }
    }

    private mutating func parseFilterExpression(_ start: JinjaExpr) throws -> JinjaExpr {
        var node = start
        while true {
            if isOp("|") {
                node = try parseFilters(node, startInline: false)!
            } else if isName("is") {
                node = try parseTest(node)
            } else if isOp("(") {
                node = try make(.call(node, try parseCallArguments()), offset: node.offset)
            } else {
                return node
            }
        }
    }

    private mutating func parseSubscript(_ node: JinjaExpr) throws -> JinjaExpr {
        let token = current
        advance()
        if case .op(".") = token.kind {
            let attribute = current
            advance()
            switch attribute.kind {
            case .name(let n): return try make(.getAttribute(node, n), offset: node.offset)
            case .integer(let i): return try make(.getItem(node, try make(.literal(.int(i)), offset: attribute.offset)), offset: node.offset)
            default: throw fail("expected a name or number after '.', found \(describe(attribute))", at: attribute)
            }
        }
        var items: [JinjaExpr] = []
        while !isOp("]") {
            if !items.isEmpty { try expectOp(",") }
            items.append(try parseSubscribed())
        }
        try expectOp("]")
        let index = items.count == 1 ? items[0] : try make(.tuple(items), offset: token.offset)
        return try make(.getItem(node, index), offset: node.offset)
    }

    private mutating func parseSubscribed() throws -> JinjaExpr {
        let offset = current.offset
        var start: JinjaExpr? = nil
        if !isOp(":") {
            let expr = try parseExpression()
            if !isOp(":") { return expr }
            start = expr
        }
        advance()  // ':'
        var stop: JinjaExpr? = nil
        if !isOp(":") && !isOp("]") && !isOp(",") { stop = try parseExpression() }
        var step: JinjaExpr? = nil
        if skipOp(":") {
            if !isOp("]") && !isOp(",") { step = try parseExpression() }
        }
        return try make(.slice(start: start, stop: stop, step: step), offset: offset)
    }

    private mutating func parseCallArguments() throws -> JinjaCallArguments {
        try expectOp("(")
        var arguments = JinjaCallArguments()
        var first = true
        while !isOp(")") {
            if !first {
                try expectOp(",")
                if isOp(")") { break }
            }
            first = false
            if isOp("*") || isOp("**") { throw fail("*args and **kwargs in calls are not supported in chat templates") }
            if case .name(let n) = current.kind, isOp("=", next) {
                advance()
                advance()
                arguments.keywords.append((n, try parseExpression()))
            } else {
                if !arguments.keywords.isEmpty { throw fail("positional argument follows keyword argument") }
                arguments.positional.append(try parseExpression())
            }
        }
        try expectOp(")")
        return arguments
    }

    private mutating func parseDottedName() throws -> (String, JinjaToken) {
        let token = current
        var name = try expectName()
        while skipOp(".") { name += "." + (try expectName()) }
        return (name, token)
    }

    /// `| name(args) | name ...`; with `startInline` the first `|` is already consumed (`{% filter %}`).
    private mutating func parseFilters(_ operand: JinjaExpr?, startInline: Bool) throws -> JinjaExpr? {
        var node = operand
        var inline = startInline
        while isOp("|") || inline {
            if !inline { advance() }
            inline = false
            let (name, token) = try parseDottedName()
            guard JinjaFilters.table[name] != nil else {
                throw ChatTemplateError.unknownFilter(name: name, location: source.location(of: token.offset))
            }
            let arguments = isOp("(") ? try parseCallArguments() : JinjaCallArguments()
            node = try make(.filter(node, name: name, arguments), offset: token.offset)
        }
        return node
    }

    private mutating func parseTest(_ operand: JinjaExpr) throws -> JinjaExpr {
        let isToken = current
        advance()
        let negated = skipName("not")
        let (name, token) = try parseDottedName()
        guard JinjaPredicates.table[name] != nil else {
            throw ChatTemplateError.unknownTest(name: name, location: source.location(of: token.offset))
        }
        var arguments = JinjaCallArguments()
        if isOp("(") {
            arguments = try parseCallArguments()
        } else {
            switch current.kind {
            case .name("else"), .name("or"), .name("and"): break
            case .name("is"): throw fail("you cannot chain multiple tests with 'is'")
            case .name, .string, .integer, .float, .op("["), .op("{"):
                arguments.positional = [try parsePostfix(try parsePrimary())]
            default: break
            }
        }
        let test = try make(.test(operand, name: name, arguments), offset: isToken.offset)
        return negated ? try make(.not(test), offset: isToken.offset) : test
    }
}
