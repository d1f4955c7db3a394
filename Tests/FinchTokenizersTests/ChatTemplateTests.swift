import Foundation
import XCTest
import FinchTestSupport

@testable import FinchKernels
@testable import FinchIO
@testable import FinchTokenizers

/// Chat templates against transformers' `apply_chat_template` (fixtures from
/// reference/make_chat_template_fixtures.py), plus error reporting and robustness.
final class ChatTemplateTests: XCTestCase {
    private static var fixtureDirectory: URL {
        TestSupport.fixtures.appendingPathComponent("chat_templates")
    }

    private static func templateSource(_ file: String) throws -> String {
        try String(contentsOf: fixtureDirectory.appendingPathComponent("templates").appendingPathComponent(file), encoding: .utf8)
    }

    private struct Case {
        let name: String
        let template: String?
        let source: String?
        let context: [String: JinjaValue]
        let expected: String?
        let error: JinjaObject?
    }

    private static func loadCases() throws -> (now: Date, cases: [Case]) {
        let text = try String(contentsOf: fixtureDirectory.appendingPathComponent("cases.json"), encoding: .utf8)
        guard case .object(let root) = try JinjaValue(jsonText: text),
              case .array(let nowParts)? = root["now"], case .array(let rawCases)? = root["cases"]
        else { throw XCTSkip("malformed cases.json") }
        let n = nowParts.compactMap { if case .int(let i) = $0 { return i } else { return nil } }
        var components = DateComponents(year: n[0], month: n[1], day: n[2], hour: n[3], minute: n[4], second: n[5])
        components.timeZone = TimeZone.current
        let now = Calendar(identifier: .gregorian).date(from: components)!
        let cases = rawCases.compactMap { raw -> Case? in
            guard case .object(let c) = raw, case .object(let context)? = c["context"] else { return nil }
            var errorObject: JinjaObject? = nil
            if case .object(let e)? = c["error"] { errorObject = e }
            return Case(
                name: c["name"]?.stringValue ?? "?", template: c["template"]?.stringValue, source: c["source"]?.stringValue,
                context: Dictionary(uniqueKeysWithValues: context.pairs.map { (key: JinjaKey, value) -> (String, JinjaValue) in
                    guard case .string(let name) = key else { return ("", value) }
                    return (name, value)
                }),
                expected: c["expected"]?.stringValue, error: errorObject)
        }
        return (now, cases)
    }

    /// Every fixture case renders byte for byte as transformers does, or fails as it does.
    func testTransformersParity() throws {
        let (now, cases) = try Self.loadCases()
        XCTAssertGreaterThan(cases.count, 150)
        var templates: [String: ChatTemplate] = [:]
        var failures: [String] = []
        var passedByTemplate: [String: (passed: Int, total: Int)] = [:]
        for c in cases {
            let family = c.template ?? "snippets"
            passedByTemplate[family, default: (0, 0)].total += 1
            let template: ChatTemplate
            do {
                if let file = c.template {
                    if templates[file] == nil { templates[file] = try ChatTemplate(try Self.templateSource(file), name: file) }
                    template = templates[file]!
                } else {
                    template = try ChatTemplate(c.source ?? "", name: c.name)
                }
            } catch {
                failures.append("\(c.name): does not parse: \(error)")
                continue
            }
            template.now = { now }
            let result = Result { try template.render(context: c.context) }
            switch (result, c.expected, c.error) {
            case (.success(let got), let expected?, _):
                if got == expected {
                    passedByTemplate[family]!.passed += 1
                } else {
                    failures.append("\(c.name): output differs\n  expected: \(expected.debugDescription)\n  got:      \(got.debugDescription)")
                }
            case (.failure(let error), _, let expectedError?):
                let kind = expectedError["kind"]?.stringValue
                let message = expectedError["message"]?.stringValue ?? ""
                if kind == "raise" {
                    guard case ChatTemplateError.raised(let got, _) = error, got == message else {
                        failures.append("\(c.name): expected raise_exception(\(message.debugDescription)), got \(error)")
                        continue
                    }
                } else if !(error is ChatTemplateError) {
                    failures.append("\(c.name): expected a ChatTemplateError (\(message)), got \(error)")
                    continue
                }
                passedByTemplate[family]!.passed += 1
            case (.success(let got), nil, let expectedError?):
                failures.append("\(c.name): expected error \(expectedError["message"]?.stringValue ?? ""), rendered \(got.debugDescription)")
            case (.failure(let error), _, nil):
                failures.append("\(c.name): unexpected error \(error)")
            default:
                failures.append("\(c.name): malformed case")
            }
        }
        let summary = passedByTemplate.keys.sorted().map { "\($0): \(passedByTemplate[$0]!.passed)/\(passedByTemplate[$0]!.total)" }
        print("chat template parity:\n  " + summary.joined(separator: "\n  "))
        XCTAssert(failures.isEmpty, "\(failures.count) of \(cases.count) cases fail:\n" + failures.joined(separator: "\n"))
    }

    // MARK: - Public API

    func testRenderMessagesAPI() throws {
        let template = try ChatTemplate(try Self.templateSource("google-gemma-2-2b-it.jinja"), name: "gemma")
        let messages = [ChatMessage(role: "user", content: " Hi "), ChatMessage(role: "assistant", content: "Hello!")]
        XCTAssertEqual(
            try template.render(messages: messages, addGenerationPrompt: true, bosToken: "<bos>", eosToken: "<eos>"),
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>model\n")
        XCTAssertThrowsError(try template.render(messages: [ChatMessage(role: "system", content: "x")], addGenerationPrompt: false)) { error in
            guard case ChatTemplateError.raised(let message, let location) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(message, "System role not supported")
            XCTAssertEqual(location.template, "gemma")
        }
    }

    func testToolsAndExtraVariablesThroughRenderMessages() throws {
        let template = try ChatTemplate(try Self.templateSource("meta-llama-Llama-3.1-8B-Instruct.jinja"))
        let text = try template.render(
            messages: [ChatMessage(role: "user", content: "hi")], addGenerationPrompt: true, bosToken: "<|begin_of_text|>",
            extra: ["date_string": "02 Feb 2025"])
        XCTAssertEqual(text, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 02 Feb 2025\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    }

    func testJSONConversions() throws {
        let ordered = try JinjaValue(jsonText: #"{"z": 1, "a": [1.0, true, null, "é\u00e9\ud83c\udf89"], "m": {}}"#)
        guard case .object(let o) = ordered else { return XCTFail() }
        XCTAssertEqual(o.keys, ["z", "a", "m"])
        XCTAssertEqual(o["a"], [.double(1), true, .none, "éé🎉"])
        let foundation = try JSONSerialization.jsonObject(with: Data(#"{"b": [1, 2.5, false, null], "a": "x"}"#.utf8))
        XCTAssertEqual(JinjaValue(json: foundation), ["a": "x", "b": [1, 2.5, false, .none]])
        XCTAssertThrowsError(try JinjaValue(jsonText: "{\"a\": }"))
    }

    /// `from_json` is json.loads (newer transformers register it; DeepSeek V3.2's template parses a
    /// tool call's arguments with it): the expected text is Python jinja2's with that filter.
    func testFromJSONFilter() throws {
        let template = try ChatTemplate("{% set call = args | from_json %}{{ call.city }}|{{ call.days | length }}|{% for k in call %}{{ k }},{% endfor %}|{{ call.nested.x }}")
        XCTAssertEqual(try template.render(context: ["args": .string(#"{"city": "Paris", "days": [1, 2, 3], "nested": {"x": 1.5}}"#)]),
                       "Paris|3|city,days,nested,|1.5")
        XCTAssertThrowsError(try ChatTemplate("{{ 3 | from_json }}").render(context: [:])) { XCTAssertTrue("\($0)".contains("from_json"), "\($0)") }
        XCTAssertThrowsError(try ChatTemplate("{{ '{' | from_json }}").render(context: [:])) { XCTAssertTrue("\($0)".contains("from_json"), "\($0)") }
    }

    func testPythonFloatRepr() {
        let cases: [(Double, String)] = [
            (1, "1.0"), (0.1, "0.1"), (1e16, "1e+16"), (1e15, "1000000000000000.0"), (1e-4, "0.0001"), (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"), (123456.789, "123456.789"), (-2.5, "-2.5"), (1.0 / 3.0, "0.3333333333333333"),
            (Double.leastNonzeroMagnitude, "5e-324"), (1.7976931348623157e308, "1.7976931348623157e+308"), (-0.0, "-0.0"), (2.5e16, "2.5e+16"),
        ]
        for (value, text) in cases { XCTAssertEqual(pythonFloatRepr(value), text) }
    }

    // MARK: - Errors

    private func syntaxError(_ source: String, file: StaticString = #filePath, line: UInt = #line) -> ChatTemplateError? {
        do {
            _ = try ChatTemplate(source, name: "bad.jinja")
            XCTFail("parsed: \(source)", file: file, line: line)
            return nil
        } catch let error as ChatTemplateError {
            return error
        } catch {
            XCTFail("\(error)", file: file, line: line)
            return nil
        }
    }

    func testSyntaxErrorsNameLineColumnFoundAndExpected() throws {
        let error = syntaxError("{% for m in messages %}\n{{ m.content }\n{% endfor %}")
        XCTAssertEqual(error?.location.template, "bad.jinja")
        XCTAssertEqual(error?.location.line, 2)
        XCTAssertEqual(error?.location.column, 14)
        XCTAssertEqual(error?.message, "unexpected '}'")
        XCTAssert(error?.description.contains("bad.jinja, line 2, column 14") ?? false, "\(String(describing: error))")

        let unclosed = syntaxError("{% if x %}\nyes\n")
        XCTAssertEqual(unclosed?.message, "unexpected end of template, expected 'elif' or 'else' or 'endif' (the innermost block that needs to be closed is 'if')")

        let missingEnd = syntaxError("{{ 1 + }}")
        XCTAssertEqual(missingEnd?.message, "expected an expression, found end of print statement '}}'")
        XCTAssertEqual(missingEnd?.location.column, 8)

        XCTAssertEqual(syntaxError("{% for x in y %}{% endif %}")?.message,
                       "unknown tag 'endif', expected 'endfor' or 'else' (the innermost block that needs to be closed is 'for')")
        XCTAssertEqual(syntaxError("{% do x %}")?.message, "unknown tag 'do'")
        XCTAssertEqual(syntaxError("{% include 'x' %}")?.message, "tag 'include' is not supported in chat templates")
        XCTAssertEqual(syntaxError("{{ 'abc }}")?.message, "unterminated string: found the end of the template, expected '")
        XCTAssertEqual(syntaxError("{# never closed")?.message, "missing end of comment tag: found the end of the template, expected '#}'")
        XCTAssertEqual(syntaxError("{% break %}")?.message, "'break' outside of a for loop")
        XCTAssertEqual(syntaxError("{{ x ? y }}")?.message, "unexpected character '?'")
        XCTAssertEqual(syntaxError("{% set = 1 %}")?.message, "expected a variable name to assign to, found '='")
    }

    func testUnknownFilterAndTestAreNamed() throws {
        let filter = syntaxError("line one\n{{ messages | shout }}")
        XCTAssertEqual(filter, .unknownFilter(name: "shout", location: ChatTemplateLocation(template: "bad.jinja", line: 2, column: 15)))
        XCTAssertEqual(filter?.description, "bad.jinja, line 2, column 15: no filter named 'shout'")
        let test = syntaxError("{% if x is loud %}{% endif %}")
        XCTAssertEqual(test, .unknownTest(name: "loud", location: ChatTemplateLocation(template: "bad.jinja", line: 1, column: 12)))
    }

    func testRuntimeErrorsCarryLocation() throws {
        let template = try ChatTemplate("ok\n{{ messages[0].content.missing.attr }}", name: "t")
        XCTAssertThrowsError(try template.render(messages: [ChatMessage(role: "user", content: "x")], addGenerationPrompt: false)) { error in
            guard case ChatTemplateError.runtime(let message, let location) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(message, "'messages[0].content.missing' is undefined")
            XCTAssertEqual(location.line, 2)
        }
    }

    // MARK: - Robustness

    /// Every prefix of real templates either parses or throws a ChatTemplateError; what parses
    /// renders or throws, and nothing traps or hangs.
    func testTruncatedTemplatesParseOrThrow() throws {
        let files = ["meta-llama-Llama-3.2-3B-Instruct.jinja", "Qwen-Qwen2.5-7B-Instruct.jinja", "mistralai-Mistral-Nemo-Instruct-2407.jinja"]
        let messages: JinjaValue = [["role": "system", "content": "s"], ["role": "user", "content": "u"], ["role": "assistant", "content": "a"]]
        var parsed = 0, rejected = 0
        for file in files {
            let scalars = Array(try Self.templateSource(file).unicodeScalars)
            for cut in stride(from: 0, through: scalars.count, by: 11) {
                let source = String(String.UnicodeScalarView(scalars[..<cut]))
                do {
                    let template = try ChatTemplate(source, name: file)
                    parsed += 1
                    _ = try? template.render(context: ["messages": messages, "tools": .none, "add_generation_prompt": true])
                } catch is ChatTemplateError {
                    rejected += 1
                }
            }
        }
        XCTAssertGreaterThan(parsed, 5)
        XCTAssertGreaterThan(rejected, 50)
    }

    func testGarbageAndDeepNestingThrowCleanly() {
        let inputs = [
            String(repeating: "(", count: 5000), "{{" + String(repeating: "(", count: 5000) + "1" + String(repeating: ")", count: 5000) + "}}",
            String(repeating: "{% if x %}", count: 1000), "{{ [" + String(repeating: "[", count: 3000) + " }}",
            "{{ not " + String(repeating: "not ", count: 5000) + "x }}", "{{ x" + String(repeating: "|trim", count: 3000) + " }}",
            "{%", "{{", "{#", "{% for %}", "{% if %}", "{{ 'a' ~ }}", "{{ a. }}", "{{ a[ }}", "{% set x %}", "{% macro m( %}",
            "{{ 1 if }}", "{{ x is }}", "{% raw %}", "}}", "%}", "{{ 0b }}", "{{ 1e }}", "{{ '\\u12' }}", "{{ \u{0} }}",
        ]
        for input in inputs {
            do {
                let template = try ChatTemplate(input)
                _ = try? template.render(context: ["x": true])
            } catch {
                XCTAssert(error is ChatTemplateError, "\(error)")
            }
        }
    }

    func testRunawayTemplatesStop() throws {
        let recursive = try ChatTemplate("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}")
        XCTAssertThrowsError(try recursive.render(context: [:])) { error in
            XCTAssert(error is ChatTemplateError, "\(error)")
        }
        let endless = try ChatTemplate("{% for i in range(2000) %}{% for j in range(2000) %}{% endfor %}{% endfor %}")
        XCTAssertThrowsError(try endless.render(context: [:])) { error in
            XCTAssertEqual((error as? ChatTemplateError)?.message, "more than 1000000 loop iterations in one render")
        }
    }
}

final class GenerationSpanTests: XCTestCase {
    func testGenerationBlocksReportTheAssistantText() throws {
        let source = "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}{% generation %}{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>{% endif %}\n{% endfor %}"
        let template = try ChatTemplate(source)
        XCTAssertTrue(template.marksGeneration)
        XCTAssertFalse(try ChatTemplate("{{ messages[0].content }}").marksGeneration)
        let (text, spans) = try template.renderWithGenerationSpans(messages: [
            ChatMessage(role: "user", content: "Hi"), ChatMessage(role: "assistant", content: "Hello!"),
            ChatMessage(role: "user", content: "Bye"), ChatMessage(role: "assistant", content: "Bye."),
        ])
        let bytes = Array(text.utf8)
        XCTAssertEqual(spans.map { String(decoding: bytes[$0], as: UTF8.self) }, ["Hello!<|im_end|>", "Bye.<|im_end|>"])
    }
}
