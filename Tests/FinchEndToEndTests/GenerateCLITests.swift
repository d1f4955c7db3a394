import XCTest
import FinchTestSupport
@testable import Finch
@testable import FinchKernels
@testable import FinchIO
@testable import FinchTokenizers
@testable import FinchModels
@testable import FinchGeneration
@testable import FinchDistributed
@testable import FinchTraining
@testable import FinchExport

/// `finch generate` on a tiny model: defined results and clear errors for the edge cases.
final class GenerateCLITests: TemporaryDirectoryTestCase {
    func finch(_ arguments: [String]) throws -> FinchProcess.Result { try FinchProcess.run(arguments) }

    func testEdgeCases() throws {
        let model = try tinyChatModel()
        let greedy = try finch(["generate", "--model", model, "--prompt", "hello there", "--max-new-tokens", "6", "--json"])
        XCTAssertEqual(greedy.status, 0, greedy.err)
        let json = try JSONSerialization.jsonObject(with: Data(greedy.out.utf8)) as! [String: Any]
        XCTAssertEqual(json["completion_tokens"] as? Int, 6)
        let again = try finch(["generate", "--model", model, "--prompt", "hello there", "--max-new-tokens", "6", "--json"])
        XCTAssertEqual((try JSONSerialization.jsonObject(with: Data(again.out.utf8)) as! [String: Any])["text"] as? String,
                       json["text"] as? String, "greedy output repeats")

        let none = try finch(["generate", "--model", model, "--prompt", "hello", "--max-new-tokens", "0", "--json"])
        XCTAssertEqual(none.status, 0, none.err)
        XCTAssertEqual((try JSONSerialization.jsonObject(with: Data(none.out.utf8)) as! [String: Any])["text"] as? String, "")

        let empty = try finch(["generate", "--model", model, "--prompt", ""])
        XCTAssertEqual(empty.status, 1)
        XCTAssertTrue(empty.err.contains("the prompt is empty"), empty.err)

        let long = try finch(["generate", "--model", model, "--prompt", String(repeating: "word ", count: 300), "--max-new-tokens", "4"])
        XCTAssertEqual(long.status, 1)
        XCTAssertTrue(long.err.contains("context of 256"), long.err)

        let otherAdapter = TestSupport.fixtures.appendingPathComponent("parity/llama_tied/adapter").path
        let wrong = try finch(["generate", "--model", model, "--adapter", otherAdapter, "--prompt", "hi"])
        XCTAssertEqual(wrong.status, 1)
        XCTAssertTrue(wrong.err.contains("lora_A.weight' has shape"), wrong.err)
    }

    /// `--prompts` in batches of 3 (left-padded) print, per prompt and in order, what one at a time prints.
    func testBatchedPromptsGiveTheTextsOfOneAtATime() throws {
        let model = try tinyChatModel()
        let texts = ["hello there", "a", "the cat sat on the mat and", "why"]
        let prompts = try write("prompts.jsonl", texts.map { "{\"prompt\": \"\($0)\"}" }.joined(separator: "\n"))
        func run(_ batch: String) throws -> [[String: Any]] {
            let r = try finch(["generate", "--model", model, "--prompts", prompts, "--max-new-tokens", "5", "--json", "--batch-size", batch])
            XCTAssertEqual(r.status, 0, r.err)
            return try r.out.split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        }
        let single = try run("1"), batched = try run("3")
        XCTAssertEqual(batched.count, texts.count)
        XCTAssertEqual(batched.map { $0["prompt"] as? String }, texts)
        XCTAssertEqual(batched.map { $0["text"] as? String }, single.map { $0["text"] as? String })
        XCTAssertEqual(batched.map { $0["completion_tokens"] as? Int }, single.map { $0["completion_tokens"] as? Int })
    }

    /// `--tools` goes into the chat template as apply_chat_template's `tools`: the prompt `finch
    /// generate --chat` decodes after is exactly what `finch template --tools --add-generation-prompt
    /// --ids` prints, and holds the schema (a short template of Qwen's shape: the tiny model's
    /// context is 256 tokens); bad tool files are clear errors.
    func testToolsReachTheChatTemplate() throws {
        let model = try tinyChatModel()
        let configPath = model + "/tokenizer_config.json"
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: configPath))) as! [String: Any]
        config["chat_template"] = "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }}({{ t.function.parameters.required | join(', ') }}){% endfor %}</tools>{% endif %}"
            + "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: configPath))
        let tools = try write("tools.json", #"[{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]"#)
        let messages = try write("messages.json", #"[{"role": "user", "content": "Weather in Paris?"}]"#)
        let ids = try finch(["template", "--model", model, "--messages", messages, "--tools", tools, "--add-generation-prompt", "--ids"])
        XCTAssertEqual(ids.status, 0, ids.err)
        let expected = ids.out.filter { $0 == "," }.count + 1
        let text = try finch(["template", "--model", model, "--messages", messages, "--tools", tools, "--add-generation-prompt"])
        XCTAssertTrue(text.out.hasPrefix("<tools>get_weather(city)</tools><|user|>"), text.out)
        let with = try finch(["generate", "--model", model, "--chat", "--tools", tools, "--prompt", "Weather in Paris?", "--max-new-tokens", "2", "--json"])
        XCTAssertEqual(with.status, 0, with.err)
        let object = try JSONSerialization.jsonObject(with: Data(with.out.utf8)) as! [String: Any]
        XCTAssertEqual(object["prompt_tokens"] as? Int, expected)
        let without = try finch(["generate", "--model", model, "--chat", "--prompt", "Weather in Paris?", "--max-new-tokens", "2", "--json"])
        let plain = try JSONSerialization.jsonObject(with: Data(without.out.utf8)) as! [String: Any]
        XCTAssertLessThan(plain["prompt_tokens"] as! Int, expected - 5, "the schema is in the prompt only with --tools")
        let bad = try write("bad.json", #"{"name": "get_weather"}"#)
        let refused = try finch(["generate", "--model", model, "--chat", "--tools", bad, "--prompt", "hi"])
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.err.contains("bad.json") && refused.err.contains("a list of tool schemas"), refused.err)
        let noChat = try finch(["generate", "--model", model, "--tools", tools, "--prompt", "hi"])
        XCTAssertTrue(noChat.err.contains("--tools goes with --chat"), noChat.err)
    }
}
