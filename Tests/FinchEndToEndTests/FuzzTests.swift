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

/// What `finch-fuzz` found, each as a regression test with its one-line error, and a short
/// deterministic fuzzing run of every input format through the built `finch` (the long run is
/// `swift run -c release finch-fuzz --cases 5000`, see the README).
final class FuzzTests: TemporaryDirectoryTestCase {
    static var seed: URL { TestSupport.fixtures.appendingPathComponent("fuzz/seed") }

    /// The seed tokenizer.json with `change` applied to its JSON, in a folder of its own.
    func tokenizer(_ change: (inout [String: Any]) -> Void) throws -> Tokenizer {
        var json = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.seed.appendingPathComponent("tokenizer.json"))) as! [String: Any]
        change(&json)
        let folder = temporary.appendingPathComponent("tokenizer-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try JSONSerialization.data(withJSONObject: json).write(to: folder.appendingPathComponent("tokenizer.json"))
        return try Tokenizer.load(from: folder.path)
    }

    /// A safetensors file's bytes, its header length and its header JSON.
    static func safetensors(_ file: URL) throws -> (bytes: [UInt8], headerLength: Int, header: [String: Any]) {
        let bytes = [UInt8](try Data(contentsOf: file))
        let headerLength = bytes.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        let header = try JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + headerLength)])) as! [String: Any]
        return (bytes, headerLength, header)
    }

    func assertBudgetError(_ body: () throws -> Any, mentions: String, file: StaticString = #filePath, line: UInt = #line) {
        let start = Date()
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            guard case TokenizerError.budgetExceeded = error else { return XCTFail("unexpected error \(error)", file: file, line: line) }
            XCTAssertTrue("\(error)".contains(mentions), "\(error)", file: file, line: line)
            XCTAssertFalse("\(error)".contains("\n"), "one line", file: file, line: line)
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 15, "the budget should stop it long before a hang", file: file, line: line)
    }

    /// Fuzz case 366 (seed 1): a pre-tokenizer Split pattern with nested quantifiers backtracked for
    /// longer than the 20 s limit on a 38-character line. Now: a budget of steps per character.
    func testCatastrophicPatternIsStoppedByItsBudget() throws {
        for pattern in ["(a+)+$", "(\\w+\\s?)*$"] {
            let t = try tokenizer { json in
                var pre = json["pre_tokenizer"] as! [String: Any]
                var steps = pre["pretokenizers"] as! [[String: Any]]
                steps[0]["pattern"] = ["Regex": pattern]
                pre["pretokenizers"] = steps
                json["pre_tokenizer"] = pre
            }
            XCTAssertFalse(try t.encode("short text").isEmpty, "an ordinary text still encodes")
            assertBudgetError({ try t.encode(String(repeating: "a", count: 40) + "!") }, mentions: "backtracking steps")
        }
    }

    /// Fuzz case 1017: a Sequence of Replace normalizers that each grow the text 1000-fold asked
    /// for 2.5 GB and died of it. Now: the normalizer's output is capped at 64 times its input.
    func testNormalizerThatGrowsWithoutBoundIsRefused() throws {
        let t = try tokenizer { json in
            json["normalizer"] = ["type": "Sequence", "normalizers": Array(repeating: [
                "type": "Replace", "pattern": ["String": "a"], "content": String(repeating: "a", count: 1000)] as [String: Any], count: 6)]
        }
        XCTAssertEqual(try t.encode("xyz", addSpecialTokens: false).isEmpty, false, "text without the pattern is unchanged")
        assertBudgetError({ try t.encode("banana") }, mentions: "normalizer")
        // An ordinary normalizer (SentencePiece's space marker) passes the cap with room to spare.
        let spm = try tokenizer { json in json["normalizer"] = ["type": "Replace", "pattern": ["String": " "], "content": "▁"] }
        XCTAssertFalse(try spm.encode(String(repeating: " ", count: 10_000)).isEmpty)
    }

    /// Fuzz case 1291: a template doubling a namespace string 64 times allocated 5.5 GB and died.
    /// Now every value a template builds is held to a budget, and widths and repeat counts too.
    func testTemplateValuesAreHeldToABudget() throws {
        let cases = [
            "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
            "{{ 'x' * 9223372036854775807 }}",
            "{{ [1] * 4611686018427387904 }}",
            "{{ '%999999999d' | format(1) }}",
            "{{ '%.999999999f' | format(1.5) }}",
            "{{ 'x' | center(1000000000) }}",
            "{{ 'a'.ljust(999999999) }}",
            "{{ '7'.zfill(999999999) }}",
            "{{ 'a\nb' | indent(999999999) }}",
            "{{ messages | tojson(indent=999999999) }}",
            "{{ '{:>999999999}'.format(1) }}",
            // Issue 18: exponential macro recursion and a growing replace('') ran for ever.
            "{% macro f(n) %}{% if n > 0 %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(45) }}",
            "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s.replace('', 'xy') %}{% endfor %}{{ ns.s|length }}",
        ]
        for source in cases {
            XCTAssertThrowsError(try ChatTemplate(source).render(messages: [ChatMessage(role: "user", content: "hi")], addGenerationPrompt: false), source) { error in
                XCTAssertTrue(["budget", "too large", "steps"].contains { "\(error)".contains($0) }, "\(source): \(error)")
                XCTAssertTrue("\(error)".contains("line "), "names the line: \(error)")
            }
        }
        // Within the budgets, the same constructs still work as in Python.
        XCTAssertEqual(try ChatTemplate("{{ '%5d|' | format(42) }}{{ 'ab' * 3 }}{{ 'x'.center(5) }}|{{ 'aé'.replace('', '-') }}").render(messages: [], addGenerationPrompt: false), "   42|ababab  x  |-a-é-")
    }

    /// Fuzz case 167: YAML nested thousands deep overflowed the YAML parser's stack (SIGSEGV);
    /// an alias bomb would expand exponentially. Now both are refused before parsing, naming the line.
    func testYAMLNestingAndAliasBombsAreRefused() throws {
        let configs = [
            "method: sft\n" + String(repeating: "- ", count: 5000) + "x\n",
            "lora_targets: " + String(repeating: "[", count: 20000) + String(repeating: "]", count: 20000) + "\n",
            "a: &a [x, x, x, x, x, x, x, x, x]\n" + (0..<12).map { "b\($0): &b\($0) [" + Array(repeating: $0 == 0 ? "*a" : "*b\($0 - 1)", count: 9).joined(separator: ", ") + "]" }.joined(separator: "\n") + "\n",
        ]
        for (i, yaml) in configs.enumerated() {
            let path = temporary.appendingPathComponent("c\(i).yaml")
            try yaml.write(to: path, atomically: true, encoding: .utf8)
            let r = try FinchProcess.run(["train", "--config", path.path], timeout: 60)
            XCTAssertEqual(r.status, 1, "config \(i): \(r.err)")
            XCTAssertTrue(r.err.contains(path.path) && r.err.contains("line "), "config \(i) names the file and line: \(r.err)")
            XCTAssertTrue(r.err.contains("nested") || r.err.contains("aliases"), r.err)
        }
        // Fuzz case 1763: a complex key (`? [a, b]`) trapped inside the YAML library (SIGILL).
        for (yaml, expected) in [("method: orpo\n? [a, b]\n: c\n", "line 2: found a key that is a list or mapping"),
                                 ("lr: [1, [2]]\n", "line 1: lr: found a nested list or mapping")] {
            let path = temporary.appendingPathComponent("k.yaml")
            try yaml.write(to: path, atomically: true, encoding: .utf8)
            let r = try FinchProcess.run(["train", "--config", path.path], timeout: 60)
            XCTAssertEqual(r.status, 1, r.err)
            XCTAssertTrue(r.err.contains(path.path + ": " + expected), r.err)
        }
    }

    /// NaN and infinite weights (the fuzzer's f32 NaN mutation was accepted, and every output
    /// was NaN): refused at load naming the tensor and element, unless allowed; in quantized
    /// blocks, a non-finite scale is caught too.
    func testNonFiniteWeightsAreRefusedAtLoad() throws {
        let folder = try tinyChatModel()
        let file = URL(fileURLWithPath: folder).appendingPathComponent("model.safetensors")
        var (bytes, headerLength, header) = try Self.safetensors(file)
        let name = "model.layers.1.mlp.down_proj.weight"
        let offsets = (header[name] as! [String: Any])["data_offsets"] as! [Int]
        let at = 8 + headerLength + offsets[0] + 4 * 5
        for (i, b) in [0x00, 0x00, 0xC0, 0x7F].enumerated() { bytes[at + i] = UInt8(b) }
        try Data(bytes).write(to: file)
        XCTAssertThrowsError(try ModelFiles.open(folder)) { error in
            XCTAssertEqual(error as? LoadError, .nonFinite(path: folder, name: name, element: 5, value: "nan"))
            XCTAssertTrue("\(error)".contains("--allow-nonfinite"), "\(error)")
        }
        XCTAssertNoThrow(try ModelFiles.open(folder, allowNonFinite: true))
        let r = try FinchProcess.run(["perplexity", "--model", folder, "--data", try write("t.txt", "hello world\n")])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.contains("'\(name)' holds nan at element 5"), r.err)

        // A Q8_0 tensor whose second block's scale is +inf (f16 0x7C00); Q6_K keeps its scale last.
        var blocks = [UInt8](repeating: 0, count: 3 * 34)
        blocks[34] = 0x00; blocks[35] = 0x7C
        let q8 = blocks.withUnsafeBytes { raw in
            TensorData(name: "w", dtype: .q8_0, shape: [3, 32], bytes: raw.baseAddress!, byteCount: raw.count, owner: NSObject())
                .firstNonFinite().map { "\($0.element) \($0.value)" }
        }
        XCTAssertEqual(q8, "32 inf")
        var k6 = [UInt8](repeating: 0, count: 210)
        k6[208] = 0xFF; k6[209] = 0x7E   // f16 NaN
        let q6 = k6.withUnsafeBytes { raw in
            TensorData(name: "w", dtype: .q6_K, shape: [1, 256], bytes: raw.baseAddress!, byteCount: raw.count, owner: NSObject())
                .firstNonFinite()?.element
        }
        XCTAssertEqual(q6, 0)
    }

    /// A norm stored as [1, 32] where the model reads [32] was accepted; shapes must now be exactly
    /// what the model expects (as transformers' loader requires).
    func testShapesMustMatchExactly() throws {
        let folder = try tinyChatModel()
        let file = URL(fileURLWithPath: folder).appendingPathComponent("model.safetensors")
        var (bytes, headerLength, header) = try Self.safetensors(file)
        var norm = header["model.norm.weight"] as! [String: Any]
        norm["shape"] = [1, 32]
        header["model.norm.weight"] = norm
        var json = [UInt8](try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys]))
        while json.count % 8 != 0 { json.append(0x20) }
        let out = (0..<8).map { UInt8(truncatingIfNeeded: json.count >> (8 * $0)) } + json + bytes[(8 + headerLength)...]
        try Data(out).write(to: file)
        XCTAssertThrowsError(try Transformer(files: ModelFiles.open(folder))) { error in
            XCTAssertEqual(error as? LoadError, .shapeMismatch(path: folder, name: "model.norm.weight", found: [1, 32], expected: [32]))
        }
    }

    /// Found once release builds kept their checks (seed 2, cases 934 and 1045): a chat template
    /// that renders nothing reached the generator's precondition, and a Strip decoder with a
    /// negative `start` made an invalid range. Both are one-line errors now.
    func testEmptyTemplateOutputAndNegativeStripAreErrors() throws {
        let folder = try tinyChatModel()
        try "{% if false %}x{% endif %}".write(toFile: folder + "/chat_template.jinja", atomically: true, encoding: .utf8)
        let r = try FinchProcess.run(["generate", "--model", folder, "--chat", "--prompt", "hi", "--max-new-tokens", "2"])
        XCTAssertEqual(r.status, 1, r.err)
        XCTAssertTrue(r.err.contains("rendered no tokens"), r.err)
        XCTAssertThrowsError(try tokenizer { json in
            json["decoder"] = ["type": "Strip", "content": " ", "start": -1, "stop": 0]
        }) { error in XCTAssertTrue("\(error)".contains("decoder") && "\(error)".contains("start"), "\(error)") }
    }

    /// Issue 18's last silent acceptances: `num_hidden_layers` below the layers the weights hold
    /// (the extra layers were ignored), and data type errors named by Foundation class.
    func testFewerLayersThanWeightsAndJSONKindsInErrors() throws {
        let folder = try tinyChatModel()
        let configURL = URL(fileURLWithPath: folder).appendingPathComponent("config.json")
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: configURL)) as! [String: Any]
        config["num_hidden_layers"] = 1
        try JSONSerialization.data(withJSONObject: config).write(to: configURL)
        XCTAssertThrowsError(try ModelFiles.open(folder)) { error in
            XCTAssertTrue("\(error)".contains("num_hidden_layers") && "\(error)".contains("layer 1"), "\(error)")
        }
        XCTAssertEqual(jsonKind(NSNumber(value: 5)), "a number (5)")
        let parsed = try JSONSerialization.jsonObject(with: Data("[true, 1, null, \"x\", [], {}]".utf8)) as! [Any]
        XCTAssertEqual(parsed.map(jsonKind), ["a boolean (true)", "a number (1)", "null", "a string", "a list", "an object"])
    }

    /// A short, deterministic run of the harness over every format (the built `finch`, debug):
    /// no crash, no hang, no error without a message.
    func testShortFuzzRunFindsNothing() throws {
        let fuzz = try FinchProcess.binary().deletingLastPathComponent().appendingPathComponent("finch-fuzz")
        guard FileManager.default.isExecutableFile(atPath: fuzz.path) else { throw XCTSkip("finch-fuzz is not built next to the tests") }
        let r = try FinchProcess.run(executable: fuzz, ["--cases", "70", "--seed", "7", "--jobs", "2", "--timeout", "60",
                                                        "--seeds", Self.seed.path, "--work", temporary.appendingPathComponent("fuzz").path],
                                     timeout: 900)
        print(r.out)
        XCTAssertEqual(r.status, 0, "finch-fuzz found crashes, hangs or silent errors:\n\(r.out)\n\(r.err)")
        let all = try XCTUnwrap(r.out.split(separator: "\n").first { $0.hasPrefix("| all |") }, r.out)
        XCTAssertTrue(all.hasPrefix("| all | 70 |"), "every case ran: \(all)")
    }
}
