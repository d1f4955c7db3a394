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

/// `finch tokenize` end to end: ids and text per line, and one clear error line naming the
/// input line for bad input.
final class TokenizerCLITests: XCTestCase {
    var smolLM2: String { TokenizerFixtures.root.appendingPathComponent("hf/smollm2").path }
    /// A hand-written tokenizer that loads instantly, for the error paths.
    var tiny: String!
    var temporary: URL!

    override func setUpWithError() throws {
        temporary = FileManager.default.temporaryDirectory.appendingPathComponent("finch-cli-tok-\(UUID().uuidString)")
        let dir = temporary.appendingPathComponent("tiny")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try Data(TokenizerFixtures.tinyTokenizer.utf8).write(to: dir.appendingPathComponent("tokenizer.json"))
        tiny = dir.path
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: temporary) }

    /// Runs the built `finch` with `input` on stdin; returns exit status, stdout and stderr.
    func finch(_ arguments: [String], input: [UInt8], timeout: TimeInterval = 60) throws -> (status: Int32, out: String, err: String) {
        let binary = try FinchProcess.binary()
        let process = Process()
        process.executableURL = binary
        process.arguments = arguments
        let stdin = Pipe(), out = Pipe(), err = Pipe()
        process.standardInput = stdin
        process.standardOutput = out
        process.standardError = err
        try process.run()
        stdin.fileHandleForWriting.write(Data(input))
        try stdin.fileHandleForWriting.close()
        let output = out.fileHandleForReading.readDataToEndOfFile()
        let errors = err.fileHandleForReading.readDataToEndOfFile()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { process.terminate(); XCTFail("finch \(arguments) hung") }
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: output, as: UTF8.self), String(decoding: errors, as: UTF8.self))
    }

    func assertOneErrorLine(_ result: (status: Int32, out: String, err: String), mentions: [String],
                            file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(result.status, 1, "exit status", file: file, line: line)
        XCTAssertEqual(result.err.split(separator: "\n").count, 1, "one error line, got: \(result.err)", file: file, line: line)
        for word in mentions { XCTAssertTrue(result.err.contains(word), "'\(word)' missing from: \(result.err)", file: file, line: line) }
    }

    func testEncodeAndDecodeLines() throws {
        let tokenizer = try TokenizerFixtures.tokenizer(URL(fileURLWithPath: smolLM2))
        let texts = ["Hello world", "<|im_start|>user\nHi 🦙<|im_end|>", "", "tab\tquote\" back\\slash é"]
        let input = texts.map { text -> String in
            let data = try! JSONSerialization.data(withJSONObject: text, options: [.fragmentsAllowed])
            return String(decoding: data, as: UTF8.self)
        }.joined(separator: "\n") + "\n"
        for special in [false, true] {
            let result = try finch(["tokenize", "--tokenizer", smolLM2] + (special ? ["--add-special-tokens"] : []), input: Array(input.utf8))
            XCTAssertEqual(result.status, 0, result.err)
            let lines = result.out.split(separator: "\n").map(String.init)
            XCTAssertEqual(lines.count, texts.count)
            for (text, line) in zip(texts, lines) {
                XCTAssertEqual(try JSONDecoder().decode([Int].self, from: Data(line.utf8)), try tokenizer.encode(text, addSpecialTokens: special), text)
            }
        }
        let ids = try tokenizer.encode("<|im_start|>user\nHi 🦙\t\"<|im_end|>")
        let decoded = try finch(["tokenize", "--tokenizer", smolLM2, "--decode"], input: Array("\(ids)\n[]\n".utf8))
        XCTAssertEqual(decoded.status, 0, decoded.err)
        XCTAssertEqual(decoded.out, "\"<|im_start|>user\\nHi 🦙\\t\\\"<|im_end|>\"\n\"\"\n")
        let skipped = try finch(["tokenize", "--tokenizer", smolLM2, "--decode", "--skip-special-tokens"], input: Array("\(ids)\n".utf8))
        XCTAssertEqual(skipped.out, "\"user\\nHi 🦙\\t\\\"\"\n")
    }

    func testGGUFTokenizer() throws {
        let gguf = TokenizerFixtures.root.appendingPathComponent("llama.cpp/ggml-vocab-llama-spm.gguf").path
        let result = try finch(["tokenize", "--tokenizer", gguf, "--add-special-tokens"], input: Array("\"Hello\"\n".utf8))
        XCTAssertEqual(result.out, "[1,15043]\n", result.err)
    }

    func testInvalidUTF8NamesTheLine() throws {
        let input: [UInt8] = Array("\"ok\"\n\"a".utf8) + [0xFF] + Array("\"\n".utf8)
        let result = try finch(["tokenize", "--tokenizer", tiny], input: input)
        XCTAssertTrue(result.out.hasPrefix("["), "the first line is still answered: \(result.out)")
        assertOneErrorLine(result, mentions: ["stdin line 2", "invalid UTF-8 at byte 2", "FF"])
    }

    func testBadLinesNameTheLine() throws {
        assertOneErrorLine(try finch(["tokenize", "--tokenizer", tiny], input: Array("hello\n".utf8)),
                           mentions: ["stdin line 1", "expected a JSON string"])
        assertOneErrorLine(try finch(["tokenize", "--tokenizer", tiny], input: Array("\"a\"\n\"\\ud800\"\n".utf8)),
                           mentions: ["stdin line 2", "lone surrogate"])
        assertOneErrorLine(try finch(["tokenize", "--tokenizer", tiny, "--decode"], input: Array("[1, 2]\n[5, 99999]\n".utf8)),
                           mentions: ["stdin line 2", "99999", "outside the vocabulary"])
        assertOneErrorLine(try finch(["tokenize", "--tokenizer", tiny, "--decode"], input: Array("\"text\"\n".utf8)),
                           mentions: ["stdin line 1", "expected a JSON array of token ids"])
    }

    func testBadTokenizerIsOneErrorLine() throws {
        assertOneErrorLine(try finch(["tokenize", "--tokenizer", "/nonexistent/tok"], input: []), mentions: ["/nonexistent/tok", "no such file"])
        let dir = temporary.appendingPathComponent("bad")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try Data(TokenizerFixtures.tinyTokenizer.replacingOccurrences(of: #"{"type":"ByteLevel","add_prefix_space":false"#,
                                                                   with: #"{"type":"Foo","add_prefix_space":false"#).utf8)
            .write(to: dir.appendingPathComponent("tokenizer.json"))
        assertOneErrorLine(try finch(["tokenize", "--tokenizer", dir.path], input: Array("\"x\"\n".utf8)),
                           mentions: ["unknown pre-tokenizer type \"Foo\"", "pre_tokenizer.pretokenizers[1].type"])
    }
}
