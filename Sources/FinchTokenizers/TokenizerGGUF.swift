import Foundation
import FinchKernels
import FinchIO

/// Builds a `Tokenizer` from the vocabulary in a GGUF file's metadata (`tokenizer.ggml.*`),
/// as llama.cpp's llama-vocab.cpp reads it, expressed as the equivalent HF pipeline:
/// `gpt2` is byte-level BPE with merges and the pre-tokenizer regexes named by
/// `tokenizer.ggml.pre`; `llama` is SentencePiece BPE by scores with byte fallback; `gemma4` the
/// same pieces merged by the ranks of `tokenizer.ggml.merges` (llama.cpp's Gemma 4 vocabulary test
/// passes id for id: `LlamaCppVocabTests.testGemma4`).
package enum GGUFTokenizerLoader {
    static package let supportedModels = ["gpt2", "llama", "gemma4"]

    /// GGUF token types (llama.cpp `llama_token_type`).
    package enum TokenType: Int { case normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6 }

    /// `tokenizer.ggml.pre` names and their Split regexes (applied in order, Isolated), from
    /// llama.cpp's llama-vocab.cpp, written as the tokenizer.json originals where llama.cpp
    /// notes them. `ignoreMerges` and `addBOS` follow llama.cpp's defaults for the name.
    package struct PreTokenizerFamily {
        package var names: [String]
        package var patterns: [String]
        package var ignoreMerges = false
        package var addBOS = false
    }

    static package let preTokenizerFamilies: [PreTokenizerFamily] = [
        PreTokenizerFamily(names: ["default"], patterns: [#"[\p{P}\$\+<=>\^~\|]+"#, Splitter.gpt2PatternShort, #"\p{N}+"#, "[0-9][0-9][0-9]"]),
        PreTokenizerFamily(names: ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"],
                           patterns: [Splitter.llama3Pattern], ignoreMerges: true, addBOS: true),
        PreTokenizerFamily(names: ["dbrx", "smaug-bpe", "chatglm-bpe"], patterns: [Splitter.llama3Pattern]),
        PreTokenizerFamily(names: ["glm4", "glm5"], patterns: [Splitter.llama3Pattern], ignoreMerges: true),
        PreTokenizerFamily(names: ["deepseek-llm"], patterns: [
            #"[\r\n]"#,
            #"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\x{1F7D}ᾀ-ᾴᾶ-ᾼ\x{1FBE}ῂ-ῄῆ-ῌῐ-\x{1FD3}ῖ-\x{1FDB}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\x{2126}ℨ\x{212A}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+"#,
            #"\s?[!-/:-~！-／：-～‘-‟　-。]+"#,
            #"\s+$"#,
            #"[一-龥ࠀ-一가-퟿]+"#,
            #"\p{N}+"#,
        ]),
        PreTokenizerFamily(names: ["deepseek-coder"], patterns: [#"[\r\n]"#, #"\s?\p{L}+"#, #"\s?\p{P}+"#, #"[一-龥ࠀ-一가-퟿]+"#, #"\p{N}"#]),
        PreTokenizerFamily(names: ["deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"], patterns: [
            #"\p{N}{1,3}"#,
            #"[一-龥぀-ゟ゠-ヿ]+"#,
            ##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
        ]),
        PreTokenizerFamily(names: ["falcon"], patterns: [#"[\p{P}\$\+<=>\^~\|`]+"#, Splitter.gpt2PatternShort, "[0-9][0-9][0-9]"]),
        PreTokenizerFamily(names: ["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"],
                           patterns: [#"\p{N}"#, Splitter.gpt2PatternShort]),
        PreTokenizerFamily(names: ["gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
                                   "modern-bert", "mpt", "olmo", "jais", "trillion", "granite-docling", "exaone4", "jina-v1-en",
                                   "jina-v2-code", "roberta-bpe"],
                           patterns: [Splitter.gpt2PatternShort]),
        PreTokenizerFamily(names: ["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "stablelm2", "hunyuan", "solar-open", "megrez", "grok-2"],
                           patterns: [Splitter.qwen2Pattern]),
        PreTokenizerFamily(names: ["qwen35"], patterns: [Splitter.qwen35Pattern]),
        PreTokenizerFamily(names: ["poro-chat", "bloom", "gpt3-finnish"], patterns: [#" ?[^(\s|.,!?…。，、।۔،)]+"#]),
        PreTokenizerFamily(names: ["viking"], patterns: [#" ?[^(\s|.,!?…。，、।۔،)]+"#, #"\p{N}"#]),
        PreTokenizerFamily(names: ["tekken"], patterns: [
            #"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"#,
        ], ignoreMerges: true, addBOS: true),
        PreTokenizerFamily(names: ["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"], patterns: [
            #"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"#,
        ]),
        PreTokenizerFamily(names: ["seed-coder"], patterns: [
            #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"#,
        ]),
        PreTokenizerFamily(names: ["ufakzeka"], patterns: [
            #"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#,
        ]),
        PreTokenizerFamily(names: ["minicpm5"], patterns: [
            #"\p{N}{1,3}"#,
            #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#,
        ], ignoreMerges: true),
        PreTokenizerFamily(names: ["bailingmoe", "bailingmoe2", "llada-moe"], patterns: [
            #"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"#,
        ]),
        PreTokenizerFamily(names: ["exaone-moe"], patterns: [
            #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+"#,
        ]),
    ]

    static package var supportedPreTokenizers: [String] { preTokenizerFamilies.flatMap(\.names) }

    static package func family(named name: String) -> PreTokenizerFamily? {
        preTokenizerFamilies.first { $0.names.contains(name) }
    }

    static func load(path: String) throws -> Tokenizer {
        let file = try GGUFFile(path: path)
        return try load(file)
    }

    static func load(_ file: GGUFFile) throws -> Tokenizer {
        let path = file.path
        let metadata = file.metadata
        func malformed(_ key: String, _ found: String, _ expected: String) -> TokenizerError {
            .malformed(path: path, field: key, found: found, expected: expected)
        }
        func optionalInt(_ key: String) throws -> Int? {
            guard let value = metadata[key] else { return nil }
            guard let v = value.int else { throw malformed(key, value.typeName, "an integer") }
            return v
        }
        func optionalBool(_ key: String) throws -> Bool? {
            guard let value = metadata[key] else { return nil }
            guard let v = value.bool else { throw malformed(key, value.typeName, "a bool") }
            return v
        }
        func optionalString(_ key: String) throws -> String? {
            guard let value = metadata[key] else { return nil }
            guard let v = value.string else { throw malformed(key, value.typeName, "a string") }
            return v
        }

        guard let modelName = try optionalString("tokenizer.ggml.model") else {
            throw malformed("tokenizer.ggml.model", "nothing", "the tokenizer type (\(supportedModels.joined(separator: " or "))); this GGUF has no tokenizer")
        }
        guard supportedModels.contains(modelName) else {
            throw TokenizerError.unsupported(path: path, field: "tokenizer.ggml.model", kind: "tokenizer model", found: modelName, supported: supportedModels)
        }
        guard let tokensValue = metadata["tokenizer.ggml.tokens"] else { throw malformed("tokenizer.ggml.tokens", "nothing", "an array of strings") }
        guard let tokens = tokensValue.strings, !tokens.isEmpty else {
            throw malformed("tokenizer.ggml.tokens", tokensValue.typeName, "a non-empty array of strings")
        }
        let count = tokens.count
        var types = [Int](repeating: TokenType.normal.rawValue, count: count)
        if let value = metadata["tokenizer.ggml.token_type"] {
            guard let t = value.ints, t.count == count else { throw malformed("tokenizer.ggml.token_type", value.typeName, "\(count) integers, one per token") }
            types = t
        }
        func tokenID(_ key: String) throws -> Int? {
            guard let id = try optionalInt(key) else { return nil }
            guard id >= 0 && id < count else { throw malformed(key, "\(id)", "an id below the vocabulary size \(count)") }
            return id
        }
        let bos = try tokenID("tokenizer.ggml.bos_token_id")
        let eos = try tokenID("tokenizer.ggml.eos_token_id")
        let pad = try tokenID("tokenizer.ggml.padding_token_id")
        let unk = try tokenID("tokenizer.ggml.unknown_token_id")

        var added: [AddedToken] = []
        for (id, type) in types.enumerated() where [TokenType.unknown, .control, .userDefined].map(\.rawValue).contains(type) && !tokens[id].isEmpty {
            added.append(AddedToken(id: Int32(id), content: tokens[id], special: type != TokenType.userDefined.rawValue))
        }

        /// `tokenizer.ggml.merges` ("left right", split as llama.cpp splits them: at the first space
        /// after the first byte) as ranked token pairs.
        func mergeTable() throws -> PairTable {
            guard let mergesValue = metadata["tokenizer.ggml.merges"] else { throw malformed("tokenizer.ggml.merges", "nothing", "an array of \"left right\" strings") }
            guard let merges = mergesValue.strings else { throw malformed("tokenizer.ggml.merges", mergesValue.typeName, "an array of strings") }
            var stringToID = ExactStringTable(capacity: count)
            for (id, token) in tokens.enumerated() { stringToID.insert(token, id, replace: false) }
            var pairs = PairTable(capacity: merges.count)
            for (rank, merge) in merges.enumerated() {
                let bytes = Array(merge.utf8)
                guard let space = bytes.indices.dropFirst().first(where: { bytes[$0] == 0x20 }) else {
                    throw malformed("tokenizer.ggml.merges[\(rank)]", TokenizerError.quoted(merge), "\"left right\"")
                }
                let l = Array(bytes[..<space]), r = Array(bytes[(space + 1)...])
                guard let a = stringToID.find(l), let b = stringToID.find(r), let m = stringToID.find(l + r) else {
                    throw malformed("tokenizer.ggml.merges[\(rank)]", TokenizerError.quoted(merge), "a merge of two tokens into a token")
                }
                pairs.insert(Int32(a), Int32(b), rank: Int32(rank), merged: Int32(m))
            }
            return pairs
        }

        var addBOS = false
        let addEOS = try optionalBool("tokenizer.ggml.add_eos_token") ?? false
        let model: BPEModel
        let normalizer: Normalizer?
        let steps: [PreTokenizerStep]
        let decoder: TokenDecoder
        var vocab = ByteKeyTable(capacity: count)
        var byteTokens = [Int32](repeating: -1, count: 256)

        if modelName == "gpt2" {
            let preName = try optionalString("tokenizer.ggml.pre") ?? "default"
            guard let family = family(named: preName) else {
                throw TokenizerError.unsupported(path: path, field: "tokenizer.ggml.pre", kind: "pre-tokenizer type", found: preName, supported: supportedPreTokenizers)
            }
            addBOS = family.addBOS
            var splitSteps: [PreTokenizerStep] = []
            for pattern in family.patterns {
                splitSteps.append(.split(try Splitter.forPattern(pattern), .isolated, invert: false))
            }
            steps = splitSteps
            for (id, token) in tokens.enumerated() {
                if let bytes = ByteLevelAlphabet.bytes(of: token) { vocab.insert(bytes, value: Int64(id)) }
            }
            let pairs = try mergeTable()
            for b in 0..<256 {
                var byte = UInt8(b)
                if let id = vocab.find(&byte, 1) { byteTokens[b] = Int32(id) }
            }
            model = BPEModel(vocab: vocab, priority: .mergeRanks(pairs), byteLevel: true, byteFallback: false, unkID: nil,
                             fuseUnknown: false, ignoreMerges: family.ignoreMerges, byteTokens: byteTokens)
            normalizer = nil
            decoder = .byteLevel
        } else {
            addBOS = true
            var scores = [Float](repeating: 0, count: count)
            if let value = metadata["tokenizer.ggml.scores"] {
                guard let s = value.floats, s.count == count else { throw malformed("tokenizer.ggml.scores", value.typeName, "\(count) numbers, one per token") }
                scores = s
            }
            var mergeable = [Bool](repeating: true, count: count)
            for (id, token) in tokens.enumerated() {
                if vocab.find(Array(token.utf8)) == nil { vocab.insert(Array(token.utf8), value: Int64(id)) }
                let type = types[id]
                mergeable[id] = type == TokenType.normal.rawValue || type == TokenType.userDefined.rawValue
                if token.utf8.count == 6, token.hasPrefix("<0x"), token.hasSuffix(">"),
                   let b = UInt8(token.dropFirst(3).prefix(2), radix: 16), byteTokens[Int(b)] < 0 {
                    byteTokens[Int(b)] = Int32(id)
                }
            }
            // Gemma 4 ("gemma4"): the same pieces (▁ for spaces, <0xXX> byte fallback) merged by the ranks of
            // tokenizer.ggml.merges rather than by scores.
            var priority = BPEModel.Priority.scores(scores, mergeable: mergeable)
            if modelName == "gemma4" {
                priority = .mergeRanks(try mergeTable())
            }
            model = BPEModel(vocab: vocab, priority: priority, byteLevel: false, byteFallback: true,
                             unkID: unk.map(Int32.init), fuseUnknown: false, ignoreMerges: false, byteTokens: byteTokens)
            let addSpacePrefix = try optionalBool("tokenizer.ggml.add_space_prefix") ?? true
            let space: Normalizer = .replaceLiteral(pattern: [0x20], content: Array("\u{2581}".utf8))
            normalizer = addSpacePrefix ? .sequence([.prepend(Array("\u{2581}".utf8)), space]) : space
            steps = []
            var decoders: [TokenDecoder] = [.replaceLiteral(pattern: "\u{2581}", content: " "), .byteFallback, .fuse]
            if addSpacePrefix { decoders.append(.strip(content: " ", start: 1, stop: 0)) }
            decoder = .sequence(decoders)
        }
        addBOS = try optionalBool("tokenizer.ggml.add_bos_token") ?? addBOS
        var prefix: [Int32] = [], suffix: [Int32] = []
        if addBOS, let bos { prefix = [Int32(bos)] }
        if addEOS, let eos { suffix = [Int32(eos)] }
        return try Tokenizer(Tokenizer.Parts(
            source: path, model: model, normalizer: normalizer,
            preTokenizer: PreTokenizer(steps: steps),
            postProcessor: .template(prefix: prefix, suffix: suffix), decoder: decoder,
            addedTokens: added, modelTokens: tokens.enumerated().map { ($0.element, $0.offset) },
            bos: bos, eos: eos, pad: pad, unk: unk,
            chatTemplate: try optionalString("tokenizer.chat_template")))
    }
}
