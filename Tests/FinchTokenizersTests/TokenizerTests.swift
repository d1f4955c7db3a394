import Foundation
import XCTest
import FinchTestSupport
@testable import FinchKernels
@testable import FinchIO
@testable import FinchTokenizers

/// llama.cpp's own tokenizer tests (tests/test-tokenizer-0.cpp): every string of
/// ggml-vocab-NAME.gguf.inp encodes (without special tokens) to the ids of its .out.
final class LlamaCppVocabTests: XCTestCase {
    func check(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        guard let url = TokenizerFixtures.llamaCppVocab(name) else {
            throw XCTSkip("ggml-vocab-\(name).gguf is not committed and not in \(TokenizerFixtures.vocabs.path) (run scripts/fetch_tokenizer_vocabs.sh)")
        }
        let dir = TokenizerFixtures.root.appendingPathComponent("llama.cpp")
        let raw = try String(contentsOf: dir.appendingPathComponent("ggml-vocab-\(name).gguf.inp"), encoding: .utf8)
        let out = try String(contentsOf: dir.appendingPathComponent("ggml-vocab-\(name).gguf.out"), encoding: .utf8)
            .split(separator: "\n", omittingEmptySubsequences: false)
        var texts: [String] = []
        var rest = Substring(raw)
        while !rest.isEmpty {
            if let r = rest.range(of: "\n__ggml_vocab_test__\n") {
                texts.append(String(rest[..<r.lowerBound]))
                rest = rest[r.upperBound...]
            } else {
                texts.append(String(rest))
                break
            }
        }
        XCTAssertGreaterThanOrEqual(out.count, texts.count, "\(name): .out has fewer lines than .inp has tests", file: file, line: line)
        let tokenizer = try TokenizerFixtures.tokenizer(url)
        var passed = 0
        for (index, text) in texts.enumerated() {
            let expected = out[index].split(separator: " ").map { Int($0)! }
            let got = try tokenizer.encode(text, addSpecialTokens: false)
            if got == expected { passed += 1 } else {
                XCTFail("\(name) test \(index) \(text.debugDescription): got \(got), expected \(expected)", file: file, line: line)
            }
        }
        print("llama.cpp ggml-vocab-\(name): \(passed)/\(texts.count) test strings match")
    }

    func testGPT2() throws { try check("gpt-2") }
    func testLlamaBPE() throws { try check("llama-bpe") }
    func testQwen2() throws { try check("qwen2") }
    func testQwen35() throws { try check("qwen35") }
    func testLlamaSPM() throws { try check("llama-spm") }
    func testPhi3() throws { try check("phi-3") }
    func testDeepseekCoder() throws { try check("deepseek-coder") }
    func testDeepseekLLM() throws { try check("deepseek-llm") }
    func testFalcon() throws { try check("falcon") }
    func testMPT() throws { try check("mpt") }
    func testStarcoder() throws { try check("starcoder") }
    func testRefact() throws { try check("refact") }
    func testCommandR() throws { try check("command-r") }
    func testGemma4() throws { try check("gemma-4") }

    /// WordPiece, Unigram and gemma4 vocabularies fail with the model's name.
    func testUnsupportedVocabularyNamesTheModel() throws {
        guard let url = TokenizerFixtures.llamaCppVocab("bert-bge") else { throw XCTSkip("ggml-vocab-bert-bge.gguf not available") }
        XCTAssertThrowsError(try Tokenizer.load(from: url.path)) { error in
            let message = "\(error)"
            XCTAssertTrue(message.contains("\"bert\"") && message.contains("tokenizer.ggml.model") && message.contains("gpt2, llama"), message)
        }
    }
}

/// Parity with HF `tokenizers` on the corpus of reference/make_tokenizer_fixtures.py: ids
/// with and without special tokens, decoded text, and streamed chunks.
final class TokenizerParityTests: XCTestCase {
    enum Path { case json, gguf }

    func check(_ name: String, _ path: Path = .json, file: StaticString = #filePath, line: UInt = #line) throws {
        let parity = try TokenizerFixtures.parity(name)
        let reference = path == .json ? parity.tokenizer : try XCTUnwrap(parity.gguf, "\(name) has no GGUF form")
        guard let url = TokenizerFixtures.resolve(reference) else {
            throw XCTSkip("\(reference) is not available (run scripts/fetch_tokenizer_vocabs.sh, scripts/fetch_smollm2.sh and reference/make_tokenizer_fixtures.py)")
        }
        let tokenizer = try TokenizerFixtures.tokenizer(url)
        var passed = 0, notApplicable = 0
        for c in parity.cases {
            // transformers' GGUF conversion may add tokens the GGUF lacks (Llama 3 gets <|endoftext|>).
            if path == .gguf && c.ids_special.contains(where: { $0 >= tokenizer.vocabularySize }) { notApplicable += 1; continue }
            var ok = true
            func expect<T: Equatable>(_ got: T, _ expected: T, _ what: String) {
                if got != expected {
                    ok = false
                    XCTFail("\(name) (\(path)) \(what) of \(c.text.debugDescription): got \(got), expected \(expected)", file: file, line: line)
                }
            }
            let ids = try tokenizer.encode(c.text, addSpecialTokens: false)
            expect(ids, c.ids, "ids")
            expect(try tokenizer.encode(c.text, addSpecialTokens: true), c.ids_special, "ids with special tokens")
            expect(tokenizer.decode(c.ids), c.decoded, "decoded text")
            expect(tokenizer.decode(c.ids_special, skipSpecialTokens: true), c.decoded_skip, "decoded text without special tokens")
            var stream = StreamingDecoder(tokenizer: tokenizer)
            let chunks = c.ids.map { stream.append($0) }
            expect(chunks, c.stream.map { $0 ?? "" }, "streamed chunks")
            let streamed = chunks.joined() + stream.finish()
            expect(streamed, tokenizer.decode(c.ids), "streamed text")
            if ok { passed += 1 }
        }
        let skipped = notApplicable > 0 ? " (\(notApplicable) with tokens the GGUF lacks left out)" : ""
        print("parity \(name) (\(path == .json ? "tokenizer.json" : "GGUF")): \(passed)/\(parity.cases.count - notApplicable) texts identical\(skipped)")
    }

    func testSmolLM2JSON() throws { try check("smollm2") }
    func testSmolLM2GGUF() throws { try check("smollm2", .gguf) }
    func testLlama2JSON() throws { try check("llama2") }
    func testLlama2GGUF() throws { try check("llama2", .gguf) }
    func testLlama2MetaspaceJSON() throws { try check("llama2-metaspace") }
    func testLlama3JSON() throws { try check("llama3") }
    func testLlama3GGUF() throws { try check("llama3", .gguf) }
    func testQwen2JSON() throws { try check("qwen2") }
    func testQwen2GGUF() throws { try check("qwen2", .gguf) }
    func testGPT2JSON() throws { try check("gpt2") }
    func testGPT2GGUF() throws { try check("gpt2", .gguf) }
    func testSyntheticByteLevelRoberta() throws { try check("synthetic-bytelevel-roberta") }
    func testSyntheticMetaspaceSplit() throws { try check("synthetic-metaspace-split") }
    func testSyntheticMetaspaceFirstByteFallback() throws { try check("synthetic-metaspace-first-bytefallback") }
    func testSyntheticSplitBehaviors() throws { try check("synthetic-split-behaviors") }
    func testSyntheticRegexSequence() throws { try check("synthetic-regex-sequence") }
    func testSyntheticQwen2StyleJSON() throws { try check("synthetic-qwen2-style") }
    func testSyntheticQwen2StyleGGUF() throws { try check("synthetic-qwen2-style", .gguf) }
}

/// The pre-tokenizer regexes against HF's Split (Oniguruma), and the hand-written scanners
/// against the regex engine.
final class PreTokenizerPatternTests: XCTestCase {
    struct Splits: Decodable {
        var texts: [String]
        var patterns: [String: [[Int]]]
    }

    func loadSplits() throws -> Splits {
        try JSONDecoder().decode(Splits.self, from: Data(contentsOf: TokenizerFixtures.root.appendingPathComponent("splits.json")))
    }

    /// Isolated split of `text`: piece lengths in scalars.
    func pieces(_ splitter: Splitter, _ text: String) throws -> [Int] {
        let scalarText = ScalarText()
        var bytes = Array(text.utf8)
        bytes.append(0)
        bytes.withUnsafeBufferPointer { scalarText.load($0.baseAddress!, $0.count - 1) }
        var matches: [(Int, Int)] = []
        try splitter.matches(in: scalarText, from: 0, to: scalarText.count, into: &matches)
        var lengths: [Int] = []
        var previous = 0
        for (a, b) in matches {
            if a > previous { lengths.append(a - previous) }
            if b > a { lengths.append(b - a) }
            previous = b
        }
        if scalarText.count > previous { lengths.append(scalarText.count - previous) }
        return lengths
    }

    func testEveryPatternSplitsAsHF() throws {
        let splits = try loadSplits()
        var known = [Splitter.gpt2Pattern, Splitter.gpt2PatternShort, Splitter.llama3Pattern, Splitter.qwen2Pattern, Splitter.qwen35Pattern]
        known += GGUFTokenizerLoader.preTokenizerFamilies.flatMap(\.patterns)
        for pattern in Set(known) {
            guard let expected = splits.patterns[pattern] else {
                XCTFail("no HF splits for \(pattern.debugDescription): add it to SPLIT_PATTERNS in reference/make_tokenizer_fixtures.py")
                continue
            }
            let engines: [(String, Splitter)] = [("Splitter", try Splitter.forPattern(pattern)), ("PatternRegex", .regex(try PatternRegex(pattern)))]
            for (engine, splitter) in engines {
                var failures = 0
                for (text, lengths) in zip(splits.texts, expected) where try pieces(splitter, text) != lengths {
                    failures += 1
                    if failures <= 3 {
                        XCTFail("\(engine) \(pattern.debugDescription) on \(text.debugDescription): \(try pieces(splitter, text)) != HF \(lengths)")
                    }
                }
            }
        }
    }

    /// Random strings over the characters the patterns care about: the scanners equal the engine.
    func testScannersMatchTheRegexEngine() throws {
        let alphabet: [String] = ["a", "Z", "é", "ж", "中", "ſ", "s", "S", "t", "T", "r", "e", "v", "l", "L", "m", "d", "D", "'", "'", "1", "٣", "½",
                                  " ", " ", " ", "\t", "\n", "\r", "\u{00A0}", "\u{3000}", ".", ",", "!", "-", "(", "/", "\u{0301}", "\u{0E31}", "🦙", "\u{200B}", "_", "$"]
        var rng = FinchRandom(seed: 7)
        for pattern in [Splitter.gpt2Pattern, Splitter.gpt2PatternShort, Splitter.llama3Pattern, Splitter.qwen2Pattern, Splitter.qwen35Pattern] {
            let scanner = try Splitter.forPattern(pattern)
            XCTAssertTrue(scanner.coversEverything, "no scanner for \(pattern)")
            let engine = Splitter.regex(try PatternRegex(pattern))
            for _ in 0..<1500 {
                let length = Int(rng.next() % 24)
                let text = (0..<length).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }.joined()
                let a = try pieces(scanner, text), b = try pieces(engine, text)
                if a != b { XCTFail("\(pattern) on \(text.debugDescription): scanner \(a), engine \(b)"); break }
            }
        }
    }

    func testRegexEngineFeatures() throws {
        func split(_ pattern: String, _ text: String) throws -> [String] {
            let scalars = Array(text.unicodeScalars)
            return try pieces(.regex(try PatternRegex(pattern)), text).reduce(into: (0, [String]())) { state, n in
                var s = String.UnicodeScalarView()
                s.append(contentsOf: scalars[state.0..<(state.0 + n)])
                state.1.append(String(s))
                state.0 += n
            }.1
        }
        XCTAssertEqual(try split(#"a$"#, "a\nb a"), ["a", "\nb ", "a"])          // $ before a newline
        XCTAssertEqual(try split(#"^b"#, "a\nb"), ["a\n", "b"])
        XCTAssertEqual(try split(#"\d+"#, "١٢٣ 45"), ["١٢٣", " ", "45"])          // \d is any decimal digit
        XCTAssertEqual(try split(#"(?i:'s)"#, "x'\u{17F} x'S"), ["x", "'\u{17F}", " x", "'S"])
        XCTAssertEqual(try split(#"a(?=b)"#, "aab"), ["a", "a", "b"])
        XCTAssertEqual(try split(#"\s+(?!\S)"#, "a   b"), ["a", "  ", " b"])
        XCTAssertEqual(try split(#"x{2,3}"#, "xxxxxxx"), ["xxx", "xxx", "x"])
        XCTAssertEqual(try split(#"a?+a"#, "aa a"), ["aa", " a"])                  // possessive: "a" alone cannot match
        XCTAssertEqual(try split(#"[^\s\p{L}]+"#, "ab, cd!?"), ["ab", ",", " cd", "!?"])
        XCTAssertThrowsError(try PatternRegex(#"(?<=a)b"#)) { XCTAssertTrue("\($0)".contains("lookbehind")) }
        XCTAssertThrowsError(try PatternRegex(#"\p{Han}"#)) { XCTAssertTrue("\($0)".contains("Han")) }
        XCTAssertThrowsError(try PatternRegex(#"(a"#))
        XCTAssertThrowsError(try PatternRegex(#"(a*)*"#))
    }
}

/// Loading, vocabulary access, the streaming decoder, threads and errors.
final class TokenizerTests: XCTestCase {
    var temporary: URL!

    override func setUpWithError() throws {
        temporary = FileManager.default.temporaryDirectory.appendingPathComponent("finch-tok-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: temporary, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: temporary) }

    var smolLM2: Tokenizer { get throws { try TokenizerFixtures.tokenizer(TokenizerFixtures.root.appendingPathComponent("hf/smollm2")) } }
    var llamaSPM: Tokenizer { get throws { try TokenizerFixtures.tokenizer(TokenizerFixtures.root.appendingPathComponent("llama.cpp/ggml-vocab-llama-spm.gguf")) } }

    func testSmolLM2FolderMetadata() throws {
        let t = try smolLM2
        XCTAssertEqual(t.vocabularySize, 49152)
        XCTAssertEqual(t.bosToken, "<|im_start|>")
        XCTAssertEqual(t.eosToken, "<|im_end|>")
        XCTAssertEqual(t.bosTokenId, 1)
        XCTAssertEqual(t.eosTokenId, 2)
        XCTAssertEqual(t.padTokenId, 2)
        XCTAssertTrue(t.chatTemplate?.contains("<|im_start|>") ?? false)
        XCTAssertEqual(t.tokenID("<|im_end|>"), 2)
        XCTAssertTrue(t.isSpecial(2))
        XCTAssertFalse(t.isSpecial(t.tokenID("Ġthe")!))
        XCTAssertEqual(t.tokenString(t.tokenID("Ġthe")!), "Ġthe")
        XCTAssertNil(t.tokenString(-1))
        XCTAssertNil(t.tokenString(49152))
        XCTAssertEqual(try t.encode("<|im_start|>user\nHi<|im_end|>"), [1, 4093, 198, 26843, 2])
        XCTAssertEqual(t.decode([1, 4093, 198, 26843, 2], skipSpecialTokens: true), "user\nHi")
    }

    func testGGUFMetadata() throws {
        let t = try llamaSPM
        XCTAssertEqual(t.vocabularySize, 32000)
        XCTAssertEqual(t.bosTokenId, 1)
        XCTAssertEqual(t.eosTokenId, 2)
        XCTAssertEqual(t.bosToken, "<s>")
        XCTAssertEqual(t.eosToken, "</s>")
        XCTAssertEqual(try t.encode("Hello"), [1, 15043])
        XCTAssertEqual(try t.encode("Hello", addSpecialTokens: false), [15043])
        XCTAssertEqual(t.tokenID("▁Hello"), 15043)
        XCTAssertEqual(t.tokenID("<0x0A>"), 13)
        XCTAssertEqual(t.decode([1, 15043, 2]), "<s> Hello</s>")
        XCTAssertEqual(t.decode([1, 15043, 2], skipSpecialTokens: true), "Hello")
    }

    func testByteLevelGGUFMetadata() throws {
        let t = try TokenizerFixtures.tokenizer(TokenizerFixtures.root.appendingPathComponent("synthetic/qwen2-style.gguf"))
        XCTAssertEqual(t.bosToken, "<|endoftext|>")
        XCTAssertEqual(t.eosToken, "<|im_end|>")
        XCTAssertEqual(t.padTokenId, t.bosTokenId)
        XCTAssertEqual(t.chatTemplate?.hasPrefix("{% for m in messages %}"), true)
        XCTAssertTrue(t.isSpecial(t.eosTokenId!))
        XCTAssertEqual(try t.encode("<|im_end|>"), [t.eosTokenId!])   // add_bos_token false: nothing added
    }

    /// The SmolLM2 model's GGUF (when fetched) agrees with the committed ids of the perplexity fixture.
    func testSmolLM2GGUFMatchesPerplexityFixture() throws {
        let url = TokenizerFixtures.smollm2GGUF
        guard FileManager.default.fileExists(atPath: url.path) else { throw XCTSkip("SmolLM2 GGUF not fetched (scripts/fetch_smollm2.sh)") }
        let t = try TokenizerFixtures.tokenizer(url)
        let dir = TestSupport.fixtures.appendingPathComponent("smollm2")
        let lines = try String(contentsOf: dir.appendingPathComponent("text.txt"), encoding: .utf8).split(separator: "\n").filter { !$0.isEmpty }
        let ids = try String(contentsOf: dir.appendingPathComponent("token_ids.jsonl"), encoding: .utf8).split(separator: "\n")
            .map { try JSONDecoder().decode([Int].self, from: Data($0.utf8)) }
        XCTAssertEqual(lines.count, ids.count)
        for (line, expected) in zip(lines, ids) {
            XCTAssertEqual(try t.encode(String(line), addSpecialTokens: false), expected, String(line))
        }
        XCTAssertEqual(t.bosTokenId, 1)
        XCTAssertEqual(t.eosTokenId, 2)
        XCTAssertNotNil(t.chatTemplate)
    }

    func testStreamingDecoderWaitsForCompleteCharacters() throws {
        let t = try llamaSPM
        // "🦙" is four byte-fallback tokens.
        let ids = try t.encode("a🦙b", addSpecialTokens: false)
        var stream = StreamingDecoder(tokenizer: t)
        let chunks = ids.map { stream.append($0) }
        XCTAssertEqual(chunks.joined() + stream.finish(), "a🦙b")
        XCTAssertFalse(chunks.contains { $0.unicodeScalars.contains("\u{FFFD}") })
        // An unfinished character comes out of finish() as U+FFFD.
        var partial = StreamingDecoder(tokenizer: t)
        let cut = ids.prefix(3).map { partial.append($0) }.joined()
        XCTAssertEqual(cut + partial.finish(), "a\u{FFFD}\u{FFFD}")   // one U+FFFD per byte, as HF's ByteFallback
    }

    func testConcurrentEncodingGivesTheSameIDs() throws {
        let t = try smolLM2
        let texts = (0..<64).map { "Line \($0): the quick brown fox 🦊 jumps over \($0 * 37) lazy dogs." }
        let expected = try texts.map { try t.encode($0) }
        var results = [[Int]](repeating: [], count: texts.count)
        results.withUnsafeMutableBufferPointer { out in
            let base = out.baseAddress!
            concurrentPerform(iterations: texts.count) { i in base[i] = (try? t.encode(texts[i])) ?? [] }
        }
        XCTAssertEqual(results, expected)
    }

    // MARK: - Errors


    func writeTokenizer(replacing edits: [(String, String)] = []) throws -> String {
        var text = TokenizerFixtures.tinyTokenizer
        for (old, new) in edits {
            XCTAssertTrue(text.contains(old), "test edit target missing: \(old)")
            text = text.replacingOccurrences(of: old, with: new)
        }
        let dir = temporary.appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try Data(text.utf8).write(to: dir.appendingPathComponent("tokenizer.json"))
        return dir.path
    }

    func testHandWrittenTokenizer() throws {
        let t = try Tokenizer.load(from: try writeTokenizer())
        XCTAssertEqual(try t.encode("abab ab"), [0, 5, 4, 3])
        XCTAssertEqual(try t.encode("ab  <x>  ab", addSpecialTokens: false), [3, 6, 3])   // <x> strips the spaces around it
        XCTAssertEqual(t.decode([0, 5, 4, 3]), "<s>abab ab")
        XCTAssertEqual(t.vocabularySize, 7)
        XCTAssertNil(t.bosTokenId)   // no tokenizer_config.json
    }

    func assertError(_ path: String, mentions: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try Tokenizer.load(from: path), file: file, line: line) { error in
            let message = "\(error)"
            for word in mentions { XCTAssertTrue(message.contains(word), "'\(word)' missing from: \(message)", file: file, line: line) }
        }
    }

    func testMalformedJSON() throws {
        let dir = temporary.appendingPathComponent("bad")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try Data("{\"model\": {\"type\": \"BPE\", ".utf8).write(to: dir.appendingPathComponent("tokenizer.json"))
        assertError(dir.path, mentions: ["tokenizer.json", "JSON syntax", "expected valid JSON"])
    }

    func testUnknownPreTokenizerType() throws {
        let path = try writeTokenizer(replacing: [(#"{"type":"ByteLevel","add_prefix_space":false"#, #"{"type":"Foo","add_prefix_space":false"#)])
        assertError(path, mentions: ["tokenizer.json", "unknown pre-tokenizer type \"Foo\"", "pre_tokenizer.pretokenizers[1].type", "supported: ByteLevel, Split"])
    }

    func testOtherComponentErrors() throws {
        assertError(try writeTokenizer(replacing: [(#""type":"BPE""#, #""type":"Unigram""#)]),
                    mentions: ["unknown model type \"Unigram\"", "model.type", "supported: BPE"])
        assertError(try writeTokenizer(replacing: [(#""decoder":{"type":"ByteLevel""#, #""decoder":{"type":"CTC""#)]),
                    mentions: ["unknown decoder type \"CTC\"", "decoder.type"])
        assertError(try writeTokenizer(replacing: [(#""normalizer":null"#, #""normalizer":{"type":"Precompiled"}"#)]),
                    mentions: ["unknown normalizer type \"Precompiled\"", "normalizer.type"])
        assertError(try writeTokenizer(replacing: [(#"{"Regex":"\\s+"}"#, #"{"Regex":"(?<=x)y"}"#)]),
                    mentions: ["pre_tokenizer.pretokenizers[0].pattern.Regex", "lookbehind"])
        assertError(try writeTokenizer(replacing: [(#""ab":3"#, #""ab":"three""#)]),
                    mentions: ["model.vocab.\"ab\"", "the string \"three\"", "expected an integer"])
        assertError(try writeTokenizer(replacing: [(#""merges":["a b""#, #""merges":["a nope""#)]),
                    mentions: ["model.merges[0]", "\"nope\" missing from model.vocab"])
        assertError(try writeTokenizer(replacing: [(#""dropout":null"#, #""dropout":0.1"#)]), mentions: ["dropout"])
        assertError(temporary.appendingPathComponent("missing").path, mentions: ["no such file"])
        assertError(temporary.path, mentions: ["tokenizer.json", "expected an HF tokenizer folder"])
    }

    func testGGUFWithoutTokenizer() throws {
        let path = TestSupport.fixtures.appendingPathComponent("gguf/tiny_qwen2.gguf").path
        let file = try GGUFFile(path: path)
        if file.metadata["tokenizer.ggml.model"] == nil {
            assertError(path, mentions: ["tiny_qwen2.gguf", "tokenizer.ggml.model", "has no tokenizer"])
        }
        assertError(TokenizerFixtures.root.appendingPathComponent("splits.json").path, mentions: ["splits.json"])
    }

    func testInvalidUTF8IsAClearError() throws {
        let t = try llamaSPM
        for (bytes, offset) in [([0x61, 0xFF, 0x62], 1), ([0x61, 0x62, 0xC0, 0x80], 2), ([0xED, 0xA0, 0x80], 0), ([0x68, 0xE2, 0x82], 1),
                                ([0xF4, 0x90, 0x80, 0x80], 0)] as [([UInt8], Int)] {
            XCTAssertThrowsError(try t.encode(utf8: bytes, source: "stdin line 3")) { error in
                XCTAssertEqual(error as? TokenizerError, .invalidUTF8(source: "stdin line 3", byteOffset: offset, bytes: Array(bytes[offset..<min(offset + 4, bytes.count)])))
                XCTAssertTrue("\(error)".contains("stdin line 3: invalid UTF-8 at byte \(offset)"), "\(error)")
            }
        }
        XCTAssertEqual(try t.encode(utf8: Array("héllo 🦙".utf8), source: "x"), try t.encode("héllo 🦙"))
    }
}
