import XCTest
@testable import Finch

/// `finch generate` on a tiny model: defined results and clear errors for the edge cases.
final class GenerateCLITests: XCTestCase {
    var temporary: URL!
    override func setUpWithError() throws {
        temporary = FileManager.default.temporaryDirectory.appendingPathComponent("finch-gen-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: temporary, withIntermediateDirectories: true)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: temporary) }

    func model() throws -> String {
        let fixtures = TestSupport.fixtures.appendingPathComponent("trainers")
        let folder = temporary.appendingPathComponent("model")
        try FileManager.default.copyItem(at: fixtures.appendingPathComponent("model"), to: folder)
        for name in ["tokenizer.json", "tokenizer_config.json"] {
            try FileManager.default.copyItem(at: fixtures.appendingPathComponent("tokenizer/\(name)"), to: folder.appendingPathComponent(name))
        }
        return folder.path
    }

    func finch(_ arguments: [String]) throws -> (status: Int32, out: String, err: String) {
        let binary = Bundle.module.bundleURL.deletingLastPathComponent().appendingPathComponent("finch")
        guard FileManager.default.isExecutableFile(atPath: binary.path) else { throw XCTSkip("finch is not built next to the tests") }
        let process = Process()
        process.executableURL = binary
        process.arguments = arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    func testEdgeCases() throws {
        let model = try model()
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
}
