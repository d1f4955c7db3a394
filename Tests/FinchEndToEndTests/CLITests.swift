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

/// The `finch` executable end to end: results, and one clear error line for bad input.
final class CLITests: TemporaryDirectoryTestCase {
    func finch(_ arguments: [String]) throws -> FinchProcess.Result { try FinchProcess.run(arguments, timeout: 60) }

    func copyOfFixtureModel() throws -> URL {
        let source = TestSupport.fixtures.appendingPathComponent("parity/llama_tied")
        let copy = temporary.appendingPathComponent("model")
        try FileManager.default.copyItem(at: source, to: copy)
        return copy
    }

    func writeTokenIDs() throws -> String {
        let path = temporary.appendingPathComponent("ids.jsonl").path
        try "[1, 5, 9, 3, 7]\n[4, 4, 2]\n".write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func assertOneClearErrorLine(_ result: FinchProcess.Result, mentions: [String],
                                 file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(result.status, 1, "exit status", file: file, line: line)
        let lines = result.err.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, "one error line, got: \(result.err)", file: file, line: line)
        for word in mentions { XCTAssertTrue(result.err.contains(word), "'\(word)' missing from: \(result.err)", file: file, line: line) }
    }

    func testPerplexityMatchesTheLibrary() throws {
        let model = try copyOfFixtureModel(), ids = try writeTokenIDs()
        let result = try finch(["perplexity", "--model", model.path, "--token-ids", ids, "--json"])
        XCTAssertEqual(result.status, 0, result.err)
        let json = try JSONSerialization.jsonObject(with: Data(result.out.utf8)) as! [String: Any]
        let transformer = try Transformer(files: ModelFiles.open(model.path))
        let expected = Perplexity.evaluate(model: transformer, sequences: [[1, 5, 9, 3, 7], [4, 4, 2]], maxLength: 2048)
        XCTAssertEqual(json["tokens"] as? Int, 6)
        XCTAssertEqual(json["nll"] as! Double, expected.nll, accuracy: 1e-9)
        XCTAssertEqual(json["perplexity"] as! Double, exp(expected.nll), accuracy: 1e-6)
    }

    /// `finch imatrix` then `finch export --imatrix`, as a user runs them: the matrix has an entry
    /// per projection, the export weights every quantized projection and records the file, and
    /// bad input is one clear line.
    func testImatrixThenQuantizedExport() throws {
        let model = try tinyChatModel()
        let text = try write("calibration.txt", String(repeating: "The cat sat on the mat. What does the fox say? It makes its own sound. ", count: 12))
        let matrix = temporary.appendingPathComponent("imatrix.gguf").path
        let made = try finch(["imatrix", "--model", model, "--data", text, "--output", matrix, "--chunk-size", "32"])
        XCTAssertEqual(made.status, 0, made.err)
        XCTAssertTrue(made.out.contains("14 entries"), made.out)   // 2 layers x q, k, v, o, gate, up, down
        let read = try ImportanceMatrix.read(path: matrix)
        XCTAssertEqual(read.entries["blk.1.ffn_down.weight"]?.count, 64)
        XCTAssertEqual(read.datasets, ["calibration.txt"])
        let output = temporary.appendingPathComponent("q4_0.gguf").path
        let exported = try finch(["export", "--model", model, "--format", "gguf", "--quant", "q4_0", "--imatrix", matrix, "--output", output])
        XCTAssertEqual(exported.status, 0, exported.err)
        XCTAssertTrue(exported.out.contains("importance matrix: 14 of 14 quantized tensors weighted"), exported.out)
        XCTAssertEqual(try GGUFFile(path: output).metadata["quantize.imatrix.file"]?.string, matrix)

        assertOneClearErrorLine(try finch(["imatrix", "--model", model, "--data", temporary.appendingPathComponent("none.txt").path, "--output", matrix,
                                           "--overwrite"]), mentions: ["none.txt"])
        let short = try write("short.txt", "Too short.")
        assertOneClearErrorLine(try finch(["imatrix", "--model", model, "--data", short, "--output", temporary.appendingPathComponent("m2.gguf").path]),
                                mentions: ["short.txt", "tokens", "chunk of 512"])
        assertOneClearErrorLine(try finch(["export", "--model", model, "--format", "gguf", "--quant", "q4_0", "--imatrix", text,
                                           "--output", temporary.appendingPathComponent("x.gguf").path]), mentions: ["calibration.txt"])
    }

    func testTruncatedSafetensors() throws {
        let model = try copyOfFixtureModel(), ids = try writeTokenIDs()
        let weights = model.appendingPathComponent("model.safetensors")
        let data = try Data(contentsOf: weights)
        try data.prefix(data.count / 2).write(to: weights)
        assertOneClearErrorLine(try finch(["perplexity", "--model", model.path, "--token-ids", ids]),
                                mentions: ["model.safetensors"])
    }

    func testSafetensorsHeaderOffsetsPastTheEnd() throws {
        let model = try copyOfFixtureModel(), ids = try writeTokenIDs()
        let path = temporary.appendingPathComponent("bad.safetensors")
        let header = #"{"model.embed_tokens.weight":{"dtype":"F32","shape":[128,64],"data_offsets":[0,32768]}}"#
        var bytes = Data()
        var length = UInt64(header.utf8.count).littleEndian
        withUnsafeBytes(of: &length) { bytes.append(contentsOf: $0) }
        bytes.append(Data(header.utf8))
        bytes.append(Data(count: 100))
        try bytes.write(to: path)
        try FileManager.default.removeItem(at: model.appendingPathComponent("model.safetensors"))
        try FileManager.default.moveItem(at: path, to: model.appendingPathComponent("model.safetensors"))
        assertOneClearErrorLine(try finch(["perplexity", "--model", model.path, "--token-ids", ids]),
                                mentions: ["model.safetensors", "model.embed_tokens.weight"])
    }

    func testGGUFWithUnknownTensorType() throws {
        let gguf = TestSupport.fixtures.appendingPathComponent("gguf/bad_tensor_type.gguf").path
        assertOneClearErrorLine(try finch(["perplexity", "--model", gguf, "--token-ids", try writeTokenIDs()]),
                                mentions: ["bad_tensor_type.gguf", "99"])
    }

    func testConfigWithoutHiddenSize() throws {
        let model = try copyOfFixtureModel()
        let configURL = model.appendingPathComponent("config.json")
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: configURL)) as! [String: Any]
        config.removeValue(forKey: "hidden_size")
        try JSONSerialization.data(withJSONObject: config).write(to: configURL)
        assertOneClearErrorLine(try finch(["perplexity", "--model", model.path, "--token-ids", try writeTokenIDs()]),
                                mentions: ["config.json", "hidden_size"])
    }

    func testTokenIDOutOfRange() throws {
        let model = try copyOfFixtureModel()
        let path = temporary.appendingPathComponent("ids.jsonl").path
        try "[1, 2]\n[3, 100000]\n".write(toFile: path, atomically: true, encoding: .utf8)
        assertOneClearErrorLine(try finch(["perplexity", "--model", model.path, "--token-ids", path]),
                                mentions: ["ids.jsonl", "line 2", "100000"])
    }

    func testUnsupportedModelType() throws {
        let model = try copyOfFixtureModel()
        let configURL = model.appendingPathComponent("config.json")
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: configURL)) as! [String: Any]
        config["model_type"] = "gpt_neox"
        try JSONSerialization.data(withJSONObject: config).write(to: configURL)
        assertOneClearErrorLine(try finch(["perplexity", "--model", model.path, "--token-ids", try writeTokenIDs()]),
                                mentions: ["gpt_neox", "llama", "qwen2"])
    }
}
