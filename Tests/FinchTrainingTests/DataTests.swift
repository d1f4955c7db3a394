import XCTest
import FinchTestSupport
@testable import FinchKernels
@testable import FinchIO
@testable import FinchTokenizers
@testable import FinchModels
@testable import FinchGeneration
@testable import FinchDistributed
@testable import FinchTraining

/// Bad data gets a clear error with file and line; rows that can be skipped are counted.
final class DataTests: TemporaryDirectoryTestCase {
    func tokenizer() throws -> Tokenizer {
        try Tokenizer.load(from: TestSupport.fixtures.appendingPathComponent("trainers/tokenizer").path)
    }

    /// Agent rows (an assistant turn of tool calls with null content, a tool result, the answer)
    /// through the real Qwen2.5 and Llama 3.1 templates with `tools`: the ids transformers'
    /// apply_chat_template gives, and the loss on every assistant turn's tokens, tool calls
    /// included, and on nothing else (reference/make_tool_training_fixtures.py).
    func testToolCallConversationsMatchTransformersTokenByToken() throws {
        let root = TestSupport.fixtures.appendingPathComponent("chat_templates")
        let fixture = try JSONSerialization.jsonObject(with: Data(contentsOf: root.appendingPathComponent("tool_training.json"))) as! [String: Any]
        let rows = try DataFile.read(root.appendingPathComponent("tool_training.jsonl").path)
        let base = TestSupport.fixtures.appendingPathComponent("trainers/tokenizer")
        for c in fixture["cases"] as! [[String: Any]] {
            let name = c["template"] as! String
            // The fixture tokenizer with this template in place of its own.
            let folder = temporary.appendingPathComponent("\(name)-\(c["row"]!)")
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            try FileManager.default.copyItem(at: base.appendingPathComponent("tokenizer.json"), to: folder.appendingPathComponent("tokenizer.json"))
            var config = try JSONSerialization.jsonObject(with: Data(contentsOf: base.appendingPathComponent("tokenizer_config.json"))) as! [String: Any]
            config["chat_template"] = try String(contentsOf: root.appendingPathComponent("templates/\(name)"), encoding: .utf8)
            try JSONSerialization.data(withJSONObject: config).write(to: folder.appendingPathComponent("tokenizer_config.json"))
            let tokenizer = try Tokenizer.load(from: folder.path)
            let row = rows[c["row"] as! Int]
            let (examples, _) = try TrainingData.examples(rows: [row], method: "sft", format: nil, tokenizer: tokenizer, maxLength: 4096)
            let e = try XCTUnwrap(examples.first, name)
            XCTAssertEqual(e["input_ids"].map(Int.init), c["input_ids"] as? [Int], "\(name) row \(c["row"]!): ids")
            XCTAssertEqual(e["labels"].map(Int.init), c["labels"] as? [Int], "\(name) row \(c["row"]!): loss mask")
            // As a GRPO prompt: the turns before the first assistant turn, tools included, with the generation prompt.
            // (A row of its own JSON text, in the file's key order, as a JSONL line gives it.)
            guard case .object(let original) = try JinjaValue(jsonText: row.text!), case .array(let messages)? = original["messages"] else {
                return XCTFail("fixture row")
            }
            let text = try pythonJSONDumps(.object(JinjaObject([("prompt", .array(Array(messages.prefix(c["prompt_turns"] as! Int)))),
                                                                 ("tools", original["tools"]!)])), JinjaJSONDumpOptions())
            let fields = try JSONSerialization.jsonObject(with: Data(text.utf8)) as! [String: Any]
            let prompt = DataFile.Row(location: row.location, fields: fields, text: text)
            let (grpo, _) = try TrainingData.examples(rows: [prompt], method: "grpo", format: nil, tokenizer: tokenizer, maxLength: 4096)
            XCTAssertEqual(grpo.first?["prompt_ids"].map(Int.init), c["prompt_ids"] as? [Int], "\(name) row \(c["row"]!): GRPO prompt with tools")
        }
        // The same rows without their tools field take --tools instead; a tool-call turn without tool_calls is named.
        let plain = DataFile.Row(location: "agent.jsonl:1", fields: ["messages": [["role": "user", "content": "Hi"], ["role": "assistant", "content": NSNull()]]])
        XCTAssertThrowsError(try TrainingData.examples(rows: [plain], method: "sft", format: nil, tokenizer: try tokenizer(), maxLength: 64)) {
            XCTAssertTrue("\($0)".hasPrefix("agent.jsonl:1: field 'messages[1].content': found nothing, expected text, or tool_calls"), "\($0)")
        }
    }

    /// `--data a.jsonl:2,b.jsonl:0.5`: every row of a twice, a seeded half of b, numbered anew.
    func testSeveralFilesMixedWithWeights() throws {
        let files = try TrainingData.dataFiles("a.jsonl:2, runs/b.jsonl:0.5,c.csv")
        XCTAssertEqual(files.map(\.path), ["a.jsonl", "runs/b.jsonl", "c.csv"])
        XCTAssertEqual(files.map(\.weight), [2, 0.5, 1])
        XCTAssertThrowsError(try TrainingData.dataFiles("a.jsonl:0")) { XCTAssertTrue("\($0)".contains("a positive weight"), "\($0)") }
        let a = (0..<3).map { Example(id: $0, fields: ["input_ids": [Int32($0)]]) }
        let b = (0..<10).map { Example(id: $0, fields: ["input_ids": [Int32(100 + $0)]]) }
        let mixed = TrainingData.mix([(a, 2), (b, 0.5)], seed: 7)
        XCTAssertEqual(mixed.count, 3 * 2 + 5)
        XCTAssertEqual(mixed.map(\.id), Array(0..<11))
        let tokens = mixed.map { $0["input_ids"][0] }
        XCTAssertEqual(Array(tokens.prefix(6)), [0, 1, 2, 0, 1, 2])
        XCTAssertEqual(Set(tokens.suffix(5)).count, 5, "five different rows of b")
        XCTAssertTrue(tokens.suffix(5).allSatisfy { $0 >= 100 })
        XCTAssertEqual(TrainingData.mix([(a, 2), (b, 0.5)], seed: 7).map { $0["input_ids"] }, mixed.map { $0["input_ids"] }, "seeded")
        XCTAssertNotEqual(TrainingData.mix([(a, 2), (b, 0.5)], seed: 8).map { $0["input_ids"] }, mixed.map { $0["input_ids"] })
    }

    func testErrorsNameFileAndLine() throws {
        XCTAssertThrowsError(try DataFile.read(try write("a.jsonl", "{\"text\": \"ok\"}\nnot json\n"))) {
            XCTAssertTrue("\($0)".hasPrefix("a.jsonl:2: found invalid JSON"), "\($0)")
        }
        XCTAssertThrowsError(try DataFile.read(try write("b.csv", "prompt,chosen,rejected\na,b,c\nd,e\n"))) {
            XCTAssertEqual("\($0)", "b.csv:3: found 2 fields, expected 3 (prompt, chosen, rejected)")
        }
        XCTAssertThrowsError(try DataFile.read(temporary.appendingPathComponent("missing.jsonl").path)) {
            XCTAssertTrue("\($0)".contains("missing.jsonl: cannot read: no such file"), "\($0)")
        }
        let rows = try DataFile.read(try write("c.jsonl", "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{\"prompt\": \"p\", \"rejected\": \"b\"}\n"))
        XCTAssertThrowsError(try TrainingData.examples(rows: rows, method: "orpo", format: nil, tokenizer: try tokenizer(), maxLength: 64)) {
            XCTAssertTrue("\($0)".hasPrefix("c.jsonl:2: cannot tell the dataset format"), "\($0)")
        }
    }

    /// Alpaca rows (instruction, optional input, output): through the chat template as a user
    /// turn and the answer (loss on the answer only), or without a template as the Alpaca prompt
    /// then the output; ShareGPT rows as messages; `--field` reads other names as these.
    func testAlpacaShareGPTAndFieldMapping() throws {
        let chat = try tokenizer()
        let rows = try DataFile.read(try write("alpaca.jsonl", """
            {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
            {"instruction": "Say hi.", "output": "Hi!"}
            """ + "\n"))
        let (examples, _) = try TrainingData.examples(rows: rows, method: "sft", format: nil, tokenizer: chat, maxLength: 256)
        let (expected, _) = try TrainingData.examples(rows: try DataFile.read(try write("msgs.jsonl", """
            {"messages": [{"role": "user", "content": "Add the numbers.\\n\\n2 and 3"}, {"role": "assistant", "content": "5"}]}
            {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]}
            """ + "\n")), method: "sft", format: nil, tokenizer: chat, maxLength: 256)
        XCTAssertEqual(examples.map { $0["input_ids"] }, expected.map { $0["input_ids"] })
        XCTAssertEqual(examples.map { $0["labels"] }, expected.map { $0["labels"] })

        // No chat template: the Alpaca prompt as text, the output learned.
        let bare = temporary.appendingPathComponent("bare")
        try FileManager.default.createDirectory(at: bare, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: TestSupport.fixtures.appendingPathComponent("trainers/tokenizer/tokenizer.json"),
                                         to: bare.appendingPathComponent("tokenizer.json"))
        let plain = try Tokenizer.load(from: bare.path)
        XCTAssertNil(plain.chatTemplate)
        let (text, _) = try TrainingData.examples(rows: rows, method: "sft", format: nil, tokenizer: plain, maxLength: 256)
        let prompt = TrainingData.alpacaPrompt(instruction: "Add the numbers.", input: "2 and 3")
        XCTAssertTrue(prompt.hasSuffix("### Input:\n2 and 3\n\n### Response:\n"))
        let learned = zip(text[0]["input_ids"], text[0]["labels"]).filter { $1 >= 0 }.map { $0.0 }
        XCTAssertEqual(plain.decode(learned.map(Int.init)), "5" + (plain.eosToken ?? ""))

        let shared = try DataFile.read(try write("sharegpt.jsonl", """
            {"conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi!"}]}
            """ + "\n"))
        let (sharegpt, _) = try TrainingData.examples(rows: shared, method: "sft", format: .sharegpt, tokenizer: chat, maxLength: 256)
        XCTAssertEqual(sharegpt[0]["input_ids"], expected[1]["input_ids"])

        let renamed = try DataFile.read(try write("qa.jsonl", "{\"question\": \"Say hi.\", \"answer\": \"Hi!\"}\n{\"question\": \"x\"}\n"))
        let mapped = try TrainingData.mapFields(Array(renamed.prefix(1)), ["prompt=question", "completion=answer"])
        XCTAssertEqual(try TrainingData.detect(mapped[0]), .promptCompletion)
        XCTAssertThrowsError(try TrainingData.mapFields(renamed, ["prompt=question", "completion=answer"])) {
            XCTAssertTrue("\($0)".hasPrefix("qa.jsonl:2: field 'answer': found nothing"), "\($0)")
        }
        XCTAssertThrowsError(try TrainingData.mapFields(renamed, ["prompt"])) { XCTAssertTrue("\($0)".contains("name=source"), "\($0)") }
    }

    /// Files written on Windows (CRLF line ends) read as the same rows; a byte that is not UTF-8
    /// is named with its line.
    func testCRLFLinesAndInvalidUTF8Line() throws {
        let rows = try DataFile.read(try write("crlf.jsonl", "{\"text\": \"a\"}\r\n{\"text\": \"b\"}\r\n\r\n{\"text\": \"c\"}\r\n"))
        XCTAssertEqual(rows.map { $0.fields["text"] as? String }, ["a", "b", "c"])
        XCTAssertEqual(rows.map(\.location), ["crlf.jsonl:1", "crlf.jsonl:2", "crlf.jsonl:4"])
        let csvRows = try DataFile.read(try write("crlf.csv", "prompt,completion\r\nhi,there\r\n"))
        XCTAssertEqual(csvRows.first?.fields["completion"] as? String, "there")
        let bad = temporary.appendingPathComponent("bad.jsonl")
        try Data("{\"text\": \"a\"}\n{\"text\": \"\u{00}".utf8 + [0xFF] + Data("\"}\n".utf8)).write(to: bad)
        XCTAssertThrowsError(try DataFile.read(bad.path)) {
            XCTAssertTrue("\($0)".contains("bad.jsonl:2: found a byte that is not UTF-8 (0xFF)"), "\($0)")
        }
    }

    func testCSVQuotedFieldsAndJSONArrays() throws {
        let rows = try DataFile.read(try write("d.csv", "prompt,completion\n\"Hello, \"\"you\"\"\",\"line\nbreak\"\n"))
        XCTAssertEqual(rows[0].fields["prompt"] as? String, "Hello, \"you\"")
        XCTAssertEqual(rows[0].fields["completion"] as? String, "line\nbreak")
        XCTAssertEqual(try DataFile.read(try write("e.json", "[{\"text\": \"a\"}, {\"text\": \"b\"}]")).count, 2)
    }

    func testRowsWithNothingLeftAfterTruncationAreDroppedAndCounted() throws {
        let long = String(repeating: "word ", count: 80)
        let rows = try DataFile.read(try write("f.jsonl", """
        {"prompt": "\(long)", "chosen": "yes", "rejected": "no"}
        {"prompt": "short", "chosen": "yes", "rejected": "no"}

        """))
        let (examples, report) = try TrainingData.examples(rows: rows, method: "orpo", format: nil, tokenizer: try tokenizer(), maxLength: 32)
        XCTAssertEqual(report.rows, 2)
        XCTAssertEqual(report.dropped, 1, "the long prompt leaves no completion tokens")
        XCTAssertEqual(examples.count, 1)
    }
}

/// Token ids a tokenizer can produce are checked against the model's embedding rows (issue 18:
/// an added token with id 5,000,000 or a special token past the vocabulary read outside the table).
final class TokenizerModelCheckTests: XCTestCase {
    func testTokensPastTheEmbeddingAreNamed() throws {
        let tokenizer = try Tokenizer.load(from: TestSupport.fixtures.appendingPathComponent("trainers/tokenizer").path)
        let rows = try ModelFiles.open(TestSupport.fixtures.appendingPathComponent("trainers/model").path).config.vocabSize
        XCTAssertNoThrow(try tokenizer.checkIDs(below: rows, model: "model"))
        XCTAssertThrowsError(try tokenizer.checkIDs(below: 200, model: "small")) {
            XCTAssertTrue("\($0)".contains("tokenizer") && "\($0)".contains("below 200") && "\($0)".contains("token '"), "\($0)")
        }
    }
}
