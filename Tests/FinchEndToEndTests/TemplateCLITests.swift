import XCTest
import FinchTestSupport
@testable import FinchTokenizers

/// `finch template`: the text (or ids) a conversation becomes through a chat template, byte for
/// byte what transformers' `apply_chat_template` gives on the corpus of real templates with tool
/// calls (Fixtures/chat_templates, reference/make_chat_template_fixtures.py).
final class TemplateCLITests: TemporaryDirectoryTestCase {
    func run(_ arguments: [String]) throws -> FinchProcess.Result { try FinchProcess.run(arguments) }

    func testTheModelsTemplateAsTextAndIds() throws {
        let model = try tinyChatModel()
        let messages = try write("chat.json", #"[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]"#)
        let text = try run(["template", "--model", model, "--messages", messages, "--add-generation-prompt"])
        XCTAssertEqual(text.status, 0, text.err)
        let expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        XCTAssertEqual(text.out, expected)
        let ids = try run(["template", "--model", model, "--messages", messages, "--add-generation-prompt", "--ids"])
        XCTAssertEqual(ids.status, 0, ids.err)
        let tokenizer = try Tokenizer.load(from: model)
        XCTAssertEqual(ids.out.trimmingCharacters(in: .whitespacesAndNewlines), "[" + (try tokenizer.encode(expected, addSpecialTokens: false))
            .map(String.init).joined(separator: ", ") + "]")
    }

    /// Every tool-calling case of the corpus (Llama 3.1 / 3.2, Qwen2.5, Qwen3, Hermes 3, Mistral,
    /// SmolLM3, granite, gpt-oss, ...), given as a messages file, a tools file and --var for the rest.
    func testToolConversationsMatchTransformers() throws {
        let root = TestSupport.fixtures.appendingPathComponent("chat_templates")
        // Parsed in key order (tool schemas render in the order they were written) and written back as json.dumps would.
        let text = try String(contentsOf: root.appendingPathComponent("cases.json"), encoding: .utf8)
        guard case .object(let corpus) = try JinjaValue(jsonText: text), case .array(let all)? = corpus["cases"],
              case .array(let now)? = corpus["now"] else { return XCTFail("malformed cases.json") }
        let n = now.compactMap { if case .int(let i) = $0 { return i } else { return nil } }
        let date = String(format: "%04d-%02d-%02dT%02d:%02d:%02d", n[0], n[1], n[2], n[3], n[4], n[5])
        func dump(_ value: JinjaValue) throws -> String { try pythonJSONDumps(value, JinjaJSONDumpOptions()) }
        var checked = 0, templates: Set<String> = []
        for (i, raw) in all.enumerated() {
            guard case .object(let c) = raw, case .object(let context)? = c["context"], case .string(let expected)? = c["expected"],
                  case .string(let template)? = c["template"], case .string(let name)? = c["name"],
                  case .array(let tools)? = context["tools"], !tools.isEmpty, let messages = context["messages"] else { continue }
            let path = temporary.appendingPathComponent("case\(i).json").path
            try dump(.object(JinjaObject([("messages", messages), ("tools", .array(tools))]))).write(toFile: path, atomically: true, encoding: .utf8)
            var arguments = ["template", "--template", root.appendingPathComponent("templates/\(template)").path, "--messages", path, "--date", date]
            for key in context.keys {
                guard case .string(let k) = key, !["messages", "tools"].contains(k), let value = context[key] else { continue }
                if k == "add_generation_prompt" {
                    if case .bool(true) = value { arguments.append("--add-generation-prompt") }
                    continue
                }
                arguments += ["--var", "\(k)=\(try dump(value))"]
            }
            let result = try run(arguments)
            XCTAssertEqual(result.status, 0, "\(name): \(result.err)")
            XCTAssertEqual(result.out, expected, name)
            checked += 1
            templates.insert(template)
        }
        XCTAssertGreaterThanOrEqual(checked, 20)
        XCTAssertGreaterThanOrEqual(templates.count, 5, "\(templates)")
    }

    func testBadInputIsNamed() throws {
        let model = try tinyChatModel()
        let broken = try write("broken.json", #"[{"role": "user", "content": "Hi"}"#)
        let result = try run(["template", "--model", model, "--messages", broken])
        XCTAssertEqual(result.status, 1)
        XCTAssertTrue(result.err.contains("broken.json") && result.err.contains("JSON"), result.err)
        let messages = try write("m.json", #"[{"role": "user", "content": "Hi"}]"#)
        let raising = try write("raise.jinja", "{{ raise_exception('System role not supported') }}")
        let raised = try run(["template", "--template", raising, "--messages", messages])
        XCTAssertEqual(raised.status, 1)
        XCTAssertTrue(raised.err.contains("System role not supported"), raised.err)
        let badVar = try run(["template", "--model", model, "--messages", messages, "--var", "enable_thinking=maybe"])
        XCTAssertNotEqual(badVar.status, 0)
        XCTAssertTrue(badVar.err.contains("enable_thinking") && badVar.err.contains("not JSON"), badVar.err)
    }
}
