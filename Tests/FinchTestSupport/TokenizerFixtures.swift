import Foundation
import FinchTokenizers

/// Where the tokenizer fixtures are: committed under Fixtures/tokenizers, or in the cache
/// ($FINCH_CACHE or ~/.cache/finch) filled by scripts/fetch_tokenizer_vocabs.sh,
/// scripts/fetch_smollm2.sh and reference/make_tokenizer_fixtures.py.
package enum TokenizerFixtures {
    package static var root: URL { TestSupport.fixtures.appendingPathComponent("tokenizers") }

    package static var cache: URL {
        if let dir = ProcessInfo.processInfo.environment["FINCH_CACHE"] { return URL(fileURLWithPath: dir) }
        return FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/finch")
    }

    package static var vocabs: URL {
        if let dir = ProcessInfo.processInfo.environment["FINCH_TOKENIZER_VOCABS"] { return URL(fileURLWithPath: dir) }
        return cache.appendingPathComponent("llama-vocabs")
    }

    package static var smollm2GGUF: URL {
        if let path = ProcessInfo.processInfo.environment["FINCH_SMOLLM2_GGUF"] { return URL(fileURLWithPath: path) }
        return cache.appendingPathComponent("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    }

    /// "fixture:rel", "cache:rel", or "smollm2"; nil when a cached file is absent.
    package static func resolve(_ reference: String) -> URL? {
        let url: URL
        if reference == "smollm2" { url = smollm2GGUF }
        else if reference.hasPrefix("fixture:") { url = root.appendingPathComponent(String(reference.dropFirst(8))) }
        else if reference.hasPrefix("cache:") { url = cache.appendingPathComponent(String(reference.dropFirst(6))) }
        else { return nil }
        return FileManager.default.fileExists(atPath: url.path) ? url : nil
    }

    /// A llama.cpp test vocabulary: committed, else in the vocab cache.
    package static func llamaCppVocab(_ name: String) -> URL? {
        let file = "ggml-vocab-\(name).gguf"
        for dir in [root.appendingPathComponent("llama.cpp"), vocabs] {
            let url = dir.appendingPathComponent(file)
            if FileManager.default.fileExists(atPath: url.path) { return url }
        }
        return nil
    }

    private static let lock = NSLock()
    nonisolated(unsafe) private static var loaded: [String: Tokenizer] = [:]

    /// Loads once per test run (big vocabularies take a while in debug builds).
    package static func tokenizer(_ url: URL) throws -> Tokenizer {
        lock.lock()
        defer { lock.unlock() }
        if let t = loaded[url.path] { return t }
        let t = try Tokenizer.load(from: url.path)
        loaded[url.path] = t
        return t
    }

    package struct ParityCase: Decodable {
        package var text: String
        package var ids: [Int]
        package var ids_special: [Int]
        package var decoded: String
        package var decoded_skip: String
        package var stream: [String?]
    }

    package struct Parity: Decodable {
        package var tokenizer: String
        package var gguf: String?
        package var cases: [ParityCase]
    }

    package static func parity(_ name: String) throws -> Parity {
        let data = try Data(contentsOf: root.appendingPathComponent("parity/\(name).json"))
        return try JSONDecoder().decode(Parity.self, from: data)
    }

    /// A small tokenizer.json written by hand.
    package static let tinyTokenizer = #"""
        {"version":"1.0",
         "added_tokens":[{"id":0,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
                         {"id":6,"content":"<x>","single_word":false,"lstrip":true,"rstrip":true,"normalized":false,"special":false}],
         "normalizer":null,
         "pre_tokenizer":{"type":"Sequence","pretokenizers":[
            {"type":"Split","pattern":{"Regex":"\\s+"},"behavior":"Isolated","invert":false},
            {"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]},
         "post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],
                           "special_tokens":{"<s>":{"id":"<s>","ids":[0],"tokens":["<s>"]}}},
         "decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true},
         "model":{"type":"BPE","dropout":null,"unk_token":null,"fuse_unk":false,"byte_fallback":false,"ignore_merges":false,
                  "vocab":{"<s>":0,"a":1,"b":2,"ab":3,"Ġ":4,"abab":5},"merges":["a b","ab ab"]}}
        """#
}
