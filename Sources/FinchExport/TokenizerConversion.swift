import Foundation
import FinchKernels
import FinchIO
import FinchTokenizers
import FinchModels

/// Converts tokenizers between a GGUF file's `tokenizer.ggml.*` metadata and Hugging Face's
/// `tokenizer.json` + `tokenizer_config.json`, writing the HF pipeline that gives the ids
/// llama.cpp gives (the same equivalence `GGUFTokenizerLoader` reads GGUF vocabularies by).
enum TokenizerConversion {
    typealias TokenType = GGUFTokenizerLoader.TokenType

    /// The GPT-2 split regex as tokenizers' ByteLevel applies it (llama.cpp's form drops the
    /// final `|\s+`, which matches nothing the other branches leave unsplit under Isolated).
    static let gpt2Pattern = Splitter.gpt2PatternShort + #"|\s+"#

    // MARK: - GGUF to Hugging Face

    /// `tokenizer.json` text and the `tokenizer_config.json` object for a GGUF vocabulary.
    static func huggingFaceFiles(from gguf: GGUFFile, modelMaxLength: Int) throws -> (tokenizerJSON: String, tokenizerConfig: [String: Any]) {
        let metadata = gguf.metadata, path = gguf.path
        func unsupported(_ key: String, _ found: String, _ supported: [String]) -> ExportError {
            .unsupported(format: .hf, what: "tokenizer (\(key) in \(path))", found: found, supported: supported)
        }
        guard let modelName = metadata["tokenizer.ggml.model"]?.string else {
            throw unsupported("tokenizer.ggml.model", "nothing", GGUFTokenizerLoader.supportedModels)
        }
        guard let tokens = metadata["tokenizer.ggml.tokens"]?.strings, !tokens.isEmpty else {
            throw LoadError.malformed(path: path, field: "tokenizer.ggml.tokens", found: "nothing usable", expected: "an array of strings")
        }
        let types = metadata["tokenizer.ggml.token_type"]?.ints ?? [Int](repeating: TokenType.normal.rawValue, count: tokens.count)
        guard types.count == tokens.count else {
            throw LoadError.malformed(path: path, field: "tokenizer.ggml.token_type", found: "\(types.count) types", expected: "\(tokens.count), one per token")
        }
        func id(_ key: String) -> Int? { metadata[key]?.int.flatMap { $0 >= 0 && $0 < tokens.count ? $0 : nil } }
        let bos = id("tokenizer.ggml.bos_token_id"), eos = id("tokenizer.ggml.eos_token_id")
        let pad = id("tokenizer.ggml.padding_token_id"), unk = id("tokenizer.ggml.unknown_token_id")
        let addEOS = metadata["tokenizer.ggml.add_eos_token"]?.bool ?? false

        var vocabIDs: [String: Int] = [:]
        var vocabJSON: [String] = []
        for (id, token) in tokens.enumerated() where vocabIDs[token] == nil {
            vocabIDs[token] = id
            vocabJSON.append("\(jsonQuote(token, ensureASCII: false)):\(id)")
        }
        var added: [String] = []
        for (id, type) in types.enumerated()
        where [TokenType.unknown, .control, .userDefined].map(\.rawValue).contains(type) && !tokens[id].isEmpty {
            let special = type != TokenType.userDefined.rawValue
            added.append("{\"id\":\(id),\"content\":\(jsonQuote(tokens[id], ensureASCII: false)),\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":\(special)}")
        }

        var addBOS: Bool
        var mergePairs: [(String, String)] = []
        let normalizer: String, preTokenizer: String, decoder: String
        var byteFallback = false, ignoreMerges = false
        switch modelName {
        case "gpt2":
            let preName = metadata["tokenizer.ggml.pre"]?.string ?? "default"
            guard let family = GGUFTokenizerLoader.family(named: preName) else {
                throw unsupported("tokenizer.ggml.pre", preName, GGUFTokenizerLoader.supportedPreTokenizers)
            }
            addBOS = family.addBOS
            ignoreMerges = family.ignoreMerges
            guard let merges = metadata["tokenizer.ggml.merges"]?.strings else {
                throw LoadError.malformed(path: path, field: "tokenizer.ggml.merges", found: "nothing usable", expected: "an array of \"left right\" strings")
            }
            for merge in merges {
                // llama.cpp splits at the first space after the first byte.
                let bytes = Array(merge.utf8)
                guard let space = bytes.indices.dropFirst().first(where: { bytes[$0] == 0x20 }) else {
                    throw LoadError.malformed(path: path, field: "tokenizer.ggml.merges", found: jsonQuote(merge, ensureASCII: false), expected: "\"left right\"")
                }
                mergePairs.append((String(decoding: bytes[..<space], as: UTF8.self), String(decoding: bytes[(space + 1)...], as: UTF8.self)))
            }
            let splits = family.patterns.map { pattern -> String in
                let p = pattern == Splitter.gpt2PatternShort ? gpt2Pattern : pattern
                return "{\"type\":\"Split\",\"pattern\":{\"Regex\":\(jsonQuote(p, ensureASCII: false))},\"behavior\":\"Isolated\",\"invert\":false}"
            }
            normalizer = "null"
            preTokenizer = "{\"type\":\"Sequence\",\"pretokenizers\":[" + (splits + ["{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":false}"]).joined(separator: ",") + "]}"
            decoder = "{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":true,\"use_regex\":true}"
        case "llama":
            addBOS = true
            byteFallback = true
            let scores = metadata["tokenizer.ggml.scores"]?.floats ?? [Float](repeating: 0, count: tokens.count)
            guard scores.count == tokens.count else {
                throw LoadError.malformed(path: path, field: "tokenizer.ggml.scores", found: "\(scores.count) scores", expected: "\(tokens.count), one per token")
            }
            mergePairs = sentencePieceMerges(tokens: tokens, types: types, scores: scores, ids: vocabIDs)
            let addSpacePrefix = metadata["tokenizer.ggml.add_space_prefix"]?.bool ?? true
            let replace = "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\u{2581}\"}"
            normalizer = addSpacePrefix ? "{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"\u{2581}\"},\(replace)]}" : replace
            preTokenizer = "null"
            var decoders = ["{\"type\":\"Replace\",\"pattern\":{\"String\":\"\u{2581}\"},\"content\":\" \"}", "{\"type\":\"ByteFallback\"}", "{\"type\":\"Fuse\"}"]
            if addSpacePrefix { decoders.append("{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}") }
            decoder = "{\"type\":\"Sequence\",\"decoders\":[\(decoders.joined(separator: ","))]}"
        default:
            throw unsupported("tokenizer.ggml.model", modelName, GGUFTokenizerLoader.supportedModels)
        }
        addBOS = metadata["tokenizer.ggml.add_bos_token"]?.bool ?? addBOS

        var single: [String] = [], specials: [String] = []
        func special(_ id: Int) -> String {
            "{\"SpecialToken\":{\"id\":\(jsonQuote(tokens[id], ensureASCII: false)),\"type_id\":0}}"
        }
        func specialEntry(_ id: Int) -> String {
            let t = jsonQuote(tokens[id], ensureASCII: false)
            return "\(t):{\"id\":\(t),\"ids\":[\(id)],\"tokens\":[\(t)]}"
        }
        if addBOS, let bos { single.append(special(bos)); specials.append(specialEntry(bos)) }
        single.append("{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}")
        if addEOS, let eos { single.append(special(eos)); if eos != bos || !addBOS { specials.append(specialEntry(eos)) } }
        let postProcessor = "{\"type\":\"TemplateProcessing\",\"single\":[\(single.joined(separator: ","))],\"pair\":[\(single.joined(separator: ","))],\"special_tokens\":{\(specials.joined(separator: ","))}}"

        let merges = mergePairs.map { "[\(jsonQuote($0.0, ensureASCII: false)),\(jsonQuote($0.1, ensureASCII: false))]" }
        let unkToken = unk.map { jsonQuote(tokens[$0], ensureASCII: false) } ?? "null"
        var json = "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\n\"added_tokens\":[" + added.joined(separator: ",\n") + "],\n"
        json += "\"normalizer\":\(normalizer),\n\"pre_tokenizer\":\(preTokenizer),\n\"post_processor\":\(postProcessor),\n\"decoder\":\(decoder),\n"
        json += "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":\(unkToken),\"continuing_subword_prefix\":null,\"end_of_word_suffix\":null,"
        json += "\"fuse_unk\":\(byteFallback),\"byte_fallback\":\(byteFallback),\"ignore_merges\":\(ignoreMerges),\n\"vocab\":{"
        json += vocabJSON.joined(separator: ",\n") + "},\n\"merges\":[" + merges.joined(separator: ",\n") + "]}}\n"

        var config: [String: Any] = ["clean_up_tokenization_spaces": false, "model_max_length": modelMaxLength,
                                     "tokenizer_class": "PreTrainedTokenizerFast"]
        if let bos { config["bos_token"] = tokens[bos] }
        if let eos { config["eos_token"] = tokens[eos] }
        if let pad { config["pad_token"] = tokens[pad] }
        if let unk { config["unk_token"] = tokens[unk] }
        if let template = metadata["tokenizer.chat_template"]?.string { config["chat_template"] = template }
        return (json, config)
    }

    /// Merges of a SentencePiece vocabulary, as transformers' SentencePieceExtractor derives
    /// them: every split of a token into two vocabulary pieces, ordered by the token's score
    /// (highest first), ties by the pieces' ids.
    static func sentencePieceMerges(tokens: [String], types: [Int], scores: [Float], ids: [String: Int]) -> [(String, String)] {
        var candidates: [(left: String, right: String, score: Float, leftID: Int, rightID: Int)] = []
        for (id, token) in tokens.enumerated() where ids[token] == id
            && (types[id] == TokenType.normal.rawValue || types[id] == TokenType.userDefined.rawValue) {
            let characters = Array(token)
            guard characters.count > 1 else { continue }
            for cut in 1..<characters.count {
                let left = String(characters[..<cut]), right = String(characters[cut...])
                if let l = ids[left], let r = ids[right] { candidates.append((left, right, scores[id], l, r)) }
            }
        }
        candidates.sort { a, b in
            if a.score != b.score { return a.score > b.score }
            if a.leftID != b.leftID { return a.leftID < b.leftID }
            return a.rightID < b.rightID
        }
        return candidates.map { ($0.left, $0.right) }
    }

    // MARK: - Hugging Face to GGUF

    /// `tokenizer.ggml.*` and `tokenizer.chat_template` metadata for an HF folder's tokenizer.
    static func ggufMetadata(folder: String, config: ModelConfig) throws -> [(key: String, value: GGUFValue)] {
        let path = (folder as NSString).appendingPathComponent("tokenizer.json")
        func object(_ file: String) throws -> [String: Any]? {
            let full = (folder as NSString).appendingPathComponent(file)
            guard FileManager.default.fileExists(atPath: full) else { return nil }
            guard let data = FileManager.default.contents(atPath: full),
                  let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw LoadError.malformed(path: full, field: "JSON", found: "invalid JSON", expected: "a JSON object")
            }
            return json
        }
        guard let root = try object("tokenizer.json") else {
            throw ExportError.unsupported(format: .gguf, what: "tokenizer", found: "no tokenizer.json in \(folder)", supported: ["a folder with tokenizer.json"])
        }
        guard let model = root["model"] as? [String: Any], (model["type"] as? String) == "BPE",
              let vocab = model["vocab"] as? [String: Any] else {
            throw ExportError.unsupported(format: .gguf, what: "tokenizer model (\(path))", found: "\((root["model"] as? [String: Any])?["type"] ?? "nothing")", supported: ["BPE"])
        }
        var byID: [Int: String] = [:]
        for (token, value) in vocab { if let id = (value as? NSNumber)?.intValue { byID[id] = token } }
        var types: [Int: TokenType] = [:]
        for item in root["added_tokens"] as? [[String: Any]] ?? [] {
            guard let id = (item["id"] as? NSNumber)?.intValue, let content = item["content"] as? String else { continue }
            byID[id] = content
            types[id] = (item["special"] as? Bool) ?? false ? .control : .userDefined
        }
        let count = max(config.vocabSize, (byID.keys.max() ?? -1) + 1)
        var tokens: [String] = [], tokenTypes: [GGUFValue] = []
        let byteFallback = (model["byte_fallback"] as? Bool) ?? false
        for id in 0..<count {
            if let token = byID[id] {
                tokens.append(token)
                var type = types[id] ?? .normal
                if byteFallback, type == .normal, token.utf8.count == 6, token.hasPrefix("<0x"), token.hasSuffix(">") { type = .byte }
                tokenTypes.append(.int32(Int32(type.rawValue)))
            } else {
                tokens.append("[PAD\(id)]")
                tokenTypes.append(.int32(Int32(TokenType.unused.rawValue)))
            }
        }
        var merges: [String] = []
        for item in model["merges"] as? [Any] ?? [] {
            if let text = item as? String { merges.append(text) }
            else if let pair = item as? [String], pair.count == 2 { merges.append(pair[0] + " " + pair[1]) }
        }

        var metadata: [(key: String, value: GGUFValue)] = []
        if byteFallback {
            metadata.append(("tokenizer.ggml.model", .string("llama")))
            // The score of a token is the priority of the first merge that makes it.
            var scores = [Float](repeating: -1e9, count: count)
            let ids = Dictionary(tokens.enumerated().map { ($0.element, $0.offset) }, uniquingKeysWith: { a, _ in a })
            for (rank, merge) in merges.enumerated().reversed() {
                let parts = merge.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
                if parts.count == 2, let id = ids[String(parts[0]) + String(parts[1])] { scores[id] = -Float(rank) }
            }
            metadata.append(("tokenizer.ggml.tokens", .array(tokens.map(GGUFValue.string))))
            metadata.append(("tokenizer.ggml.scores", .array(scores.map(GGUFValue.float32))))
            metadata.append(("tokenizer.ggml.token_type", .array(tokenTypes)))
            let prepends = "\(root["normalizer"] ?? "")".contains("Prepend")
            metadata.append(("tokenizer.ggml.add_space_prefix", .bool(prepends)))
        } else {
            metadata.append(("tokenizer.ggml.model", .string("gpt2")))
            metadata.append(("tokenizer.ggml.pre", .string(try preTokenizerName(root["pre_tokenizer"], ignoreMerges: (model["ignore_merges"] as? Bool) ?? false, path: path))))
            metadata.append(("tokenizer.ggml.tokens", .array(tokens.map(GGUFValue.string))))
            metadata.append(("tokenizer.ggml.token_type", .array(tokenTypes)))
            metadata.append(("tokenizer.ggml.merges", .array(merges.map(GGUFValue.string))))
        }

        let tokenizerConfig = try object("tokenizer_config.json")
        let specialMap = try object("special_tokens_map.json")
        let idOf = Dictionary(tokens.enumerated().map { ($0.element, $0.offset) }, uniquingKeysWith: { a, _ in a })
        func specialID(_ key: String) -> Int? {
            for source in [tokenizerConfig, specialMap].compactMap({ $0 }) {
                if let text = source[key] as? String { return idOf[text] }
                if let text = (source[key] as? [String: Any])?["content"] as? String { return idOf[text] }
            }
            return nil
        }
        if let bos = specialID("bos_token") ?? config.bosTokenId { metadata.append(("tokenizer.ggml.bos_token_id", .uint32(UInt32(bos)))) }
        if let eos = specialID("eos_token") ?? config.eosTokenIds.first { metadata.append(("tokenizer.ggml.eos_token_id", .uint32(UInt32(eos)))) }
        if let unk = specialID("unk_token") { metadata.append(("tokenizer.ggml.unknown_token_id", .uint32(UInt32(unk)))) }
        if let pad = specialID("pad_token") { metadata.append(("tokenizer.ggml.padding_token_id", .uint32(UInt32(pad)))) }
        // BOS/EOS added when the post-processor's template starts/ends with a special token.
        let post = root["post_processor"] as? [String: Any]
        let single = (post?["type"] as? String) == "TemplateProcessing" ? post?["single"] as? [[String: Any]] ?? [] : []
        metadata.append(("tokenizer.ggml.add_bos_token", .bool(single.first?["SpecialToken"] != nil)))
        metadata.append(("tokenizer.ggml.add_eos_token", .bool(single.count > 1 && single.last?["SpecialToken"] != nil)))

        let templateFile = (folder as NSString).appendingPathComponent("chat_template.jinja")
        if let data = FileManager.default.contents(atPath: templateFile) {
            metadata.append(("tokenizer.chat_template", .string(String(decoding: data, as: UTF8.self))))
        } else if let template = tokenizerConfig?["chat_template"] as? String {
            metadata.append(("tokenizer.chat_template", .string(template)))
        } else if let list = tokenizerConfig?["chat_template"] as? [[String: Any]],
                  let template = list.first(where: { ($0["name"] as? String) == "default" })?["template"] as? String {
            metadata.append(("tokenizer.chat_template", .string(template)))
        }
        return metadata
    }

    /// The llama.cpp `tokenizer.ggml.pre` name whose split regexes equal those of a
    /// tokenizer.json pre-tokenizer (Split regexes, Digits, and ByteLevel's own regex).
    static func preTokenizerName(_ pre: Any?, ignoreMerges: Bool, path: String) throws -> String {
        var patterns: [String] = []
        var understood = true
        func collect(_ node: Any?) {
            guard let node = node as? [String: Any], let type = node["type"] as? String else { understood = false; return }
            switch type {
            case "Sequence": for item in node["pretokenizers"] as? [Any] ?? [] { collect(item) }
            case "ByteLevel": if (node["use_regex"] as? Bool) ?? true { patterns.append(gpt2Pattern) }
            case "Digits": patterns.append((node["individual_digits"] as? Bool) ?? false ? #"\p{N}"# : #"\p{N}+"#)
            case "Split":
                if let regex = (node["pattern"] as? [String: Any])?["Regex"] as? String, (node["behavior"] as? String) == "Isolated" {
                    patterns.append(regex == Splitter.gpt2PatternShort ? gpt2Pattern : regex)
                } else { understood = false }
            default: understood = false
            }
        }
        collect(pre)
        let matches = GGUFTokenizerLoader.preTokenizerFamilies.filter { family in
            family.patterns.map { $0 == Splitter.gpt2PatternShort ? gpt2Pattern : $0 } == patterns
        }
        if understood, let family = matches.first(where: { $0.ignoreMerges == ignoreMerges }) ?? matches.first {
            return family.names[0]
        }
        let found = pre.flatMap { try? JSONSerialization.data(withJSONObject: $0, options: [.sortedKeys]) }.map { String(decoding: $0, as: UTF8.self) } ?? "nothing"
        throw ExportError.unsupported(format: .gguf, what: "pre-tokenizer of \(path) (no llama.cpp tokenizer.ggml.pre splits text the same way)",
                                      found: String(found.prefix(200)), supported: GGUFTokenizerLoader.preTokenizerFamilies.map { $0.names[0] })
    }
}
