import Foundation
import FinchKernels
import FinchIO

/// Builds a `Tokenizer` from an HF tokenizer.json (serialization of HF tokenizers'
/// TokenizerImpl) plus the transformers files beside it. Each component type is a case
/// of a small factory switch; anything else fails with its name and path.
enum TokenizerJSONLoader {
    static let preTokenizerTypes = ["ByteLevel", "Split", "Metaspace", "Digits", "Punctuation", "Whitespace", "WhitespaceSplit", "Sequence"]
    static let normalizerTypes = ["Sequence", "Prepend", "Replace", "NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Strip", "StripAccents"]
    static let decoderTypes = ["ByteLevel", "Metaspace", "ByteFallback", "Fuse", "Strip", "Replace", "Sequence"]
    static let postProcessorTypes = ["TemplateProcessing", "ByteLevel", "RobertaProcessing", "BertProcessing", "Sequence"]
    static let modelTypes = ["BPE"]

    static func load(folder: String) throws -> Tokenizer {
        let file = (folder as NSString).appendingPathComponent("tokenizer.json")
        guard FileManager.default.fileExists(atPath: file) else {
            let contents = (try? FileManager.default.contentsOfDirectory(atPath: folder))?.sorted() ?? []
            throw TokenizerError.malformed(path: folder, field: "tokenizer.json",
                                           found: contents.isEmpty ? "an empty folder" : "only \(contents.prefix(12).joined(separator: ", "))",
                                           expected: "an HF tokenizer folder with tokenizer.json (or give a .gguf file)")
        }
        return try load(file: file, folder: folder)
    }

    static func load(file: String, folder: String) throws -> Tokenizer {
        let root = try JSONField.parse(file: file)
        _ = try root.members()

        let normalizer = try root.optional("normalizer").map(normalizer)
        let (steps, byteLevel) = try root.optional("pre_tokenizer").map(preTokenizer) ?? ([], false)
        let modelField = try root.required("model")
        let (model, modelTokens) = try bpeModel(modelField, byteLevel: byteLevel)

        var modelIDs = ExactStringTable(capacity: modelTokens.count)
        for (token, id) in modelTokens { modelIDs.insert(token, id) }
        var added: [AddedToken] = []
        if let list = try root.optional("added_tokens") {
            for item in try list.array() {
                let content = try item.required("content").string()
                var id = try item.required("id").int()
                guard id >= 0 && id < Int(Int32.max) else { throw try item.required("id").malformed("an id from 0 to 2^31-2") }
                // As HF: a token already in the model vocabulary keeps the model's id.
                if let modelID = modelIDs[content] { id = modelID }
                added.append(AddedToken(
                    id: Int32(id), content: content,
                    special: try item.optionalBool("special") ?? false,
                    singleWord: try item.optionalBool("single_word") ?? false,
                    lstrip: try item.optionalBool("lstrip") ?? false,
                    rstrip: try item.optionalBool("rstrip") ?? false,
                    normalized: try item.optionalBool("normalized") ?? !(try item.optionalBool("special") ?? false)))
            }
        }
        var contentToID = modelIDs
        for token in added { contentToID.insert(token.content, Int(token.id)) }

        let postProcessor = try root.optional("post_processor").map { try self.postProcessor($0, ids: contentToID) } ?? .none
        let decoder = try root.optional("decoder").map(decoder)

        // transformers' files: special tokens and the chat template.
        let config = try optionalJSON((folder as NSString).appendingPathComponent("tokenizer_config.json"))
        let specialMap = try optionalJSON((folder as NSString).appendingPathComponent("special_tokens_map.json"))
        func specialToken(_ key: String) throws -> Int? {
            for source in [config, specialMap].compactMap({ $0 }) {
                guard let field = try source.optional(key) else { continue }
                let content: String
                if field.isString { content = try field.string() } else { content = try field.required("content").string() }
                guard let id = contentToID[content] else {
                    throw TokenizerError.malformed(path: source.file, field: key, found: "\(TokenizerError.quoted(content)), which is not in the vocabulary",
                                                   expected: "a token of \(file)")
                }
                return id
            }
            return nil
        }
        var template: String?
        let templateFile = (folder as NSString).appendingPathComponent("chat_template.jinja")
        if FileManager.default.fileExists(atPath: templateFile) {
            guard let data = FileManager.default.contents(atPath: templateFile) else {
                throw TokenizerError.unreadable(path: templateFile, reason: "permission denied")
            }
            template = try UTF8Validation.string(from: data, source: templateFile)
        } else if let field = try config?.optional("chat_template") {
            if field.isString {
                template = try field.string()
            } else {
                // A list of named templates: take "default".
                for item in try field.array() where try item.optionalString("name") == "default" {
                    template = try item.required("template").string()
                }
            }
        }
        return try Tokenizer(Tokenizer.Parts(
            source: file, model: model, normalizer: normalizer,
            preTokenizer: PreTokenizer(steps: steps),
            postProcessor: postProcessor, decoder: decoder, addedTokens: added, modelTokens: modelTokens,
            bos: try specialToken("bos_token"), eos: try specialToken("eos_token"),
            pad: try specialToken("pad_token"), unk: try specialToken("unk_token"),
            chatTemplate: template))
    }

    private static func optionalJSON(_ path: String) throws -> JSONField? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        let field = try JSONField.parse(file: path)
        _ = try field.members()
        return field
    }

    private static func type(_ field: JSONField, kind: String, supported: [String]) throws -> String {
        let typeField = try field.required("type")
        let name = try typeField.string()
        guard supported.contains(name) else {
            throw TokenizerError.unsupported(path: field.file, field: typeField.path, kind: kind, found: name, supported: supported)
        }
        return name
    }

    // MARK: - Components

    static func normalizer(_ field: JSONField) throws -> Normalizer {
        switch try type(field, kind: "normalizer type", supported: normalizerTypes) {
        case "Sequence":
            return .sequence(try field.required("normalizers").array().map(normalizer))
        case "Prepend":
            return .prepend(Array(try field.required("prepend").string().utf8))
        case "Replace":
            let content = Array(try field.required("content").string().utf8)
            switch try pattern(field.required("pattern")) {
            case let .literal(s): return .replaceLiteral(pattern: Array(s.utf8), content: content)
            case let .regex(r): return .replaceRegex(r, content: content)
            }
        case "NFC": return .nfc
        case "NFD": return .nfd
        case "NFKC": return .nfkc
        case "NFKD": return .nfkd
        case "Lowercase": return .lowercase
        case "Strip":
            return .strip(left: try field.optionalBool("strip_left") ?? true, right: try field.optionalBool("strip_right") ?? true)
        default:  // StripAccents
            return .stripAccents
        }
    }

    enum Pattern { case literal(String), regex(PatternRegex) }

    /// `{"String": "..."}` or `{"Regex": "..."}`.
    static func pattern(_ field: JSONField) throws -> Pattern {
        if let literal = try field.optionalString("String") { return .literal(literal) }
        if let regexField = try field.optional("Regex") {
            let source = try regexField.string()
            do { return .regex(try PatternRegex(source)) } catch let failure as PatternRegex.Failure {
                throw TokenizerError.invalidPattern(path: field.file, field: regexField.path, pattern: source, reason: failure.description)
            }
        }
        throw field.malformed("{\"String\": ...} or {\"Regex\": ...}")
    }

    /// The steps of a pre-tokenizer and whether it ends with ByteLevel.
    static func preTokenizer(_ field: JSONField) throws -> ([PreTokenizerStep], Bool) {
        var steps: [PreTokenizerStep] = []
        var byteLevelField: JSONField?
        func add(_ field: JSONField) throws {
            if let earlier = byteLevelField {
                throw TokenizerError.unsupported(path: field.file, field: field.path, kind: "pre-tokenizer after ByteLevel",
                                                 found: (try? field.required("type").string()) ?? "?",
                                                 supported: ["ByteLevel as the last pre-tokenizer (it is \(earlier.path))"])
            }
            switch try type(field, kind: "pre-tokenizer type", supported: preTokenizerTypes) {
            case "Sequence":
                for item in try field.required("pretokenizers").array() { try add(item) }
            case "ByteLevel":
                if try field.optionalBool("add_prefix_space") ?? true { steps.append(.prefixSpace) }
                if try field.optionalBool("use_regex") ?? true { steps.append(.split(.gpt2, .isolated, invert: false)) }
                byteLevelField = field
            case "Split":
                let patternField = try field.required("pattern")
                let splitBehavior = try behavior(field.required("behavior"))
                let invert = try field.optionalBool("invert") ?? false
                let splitter: Splitter
                switch try pattern(patternField) {
                case let .literal(s):
                    splitter = .regex(try PatternRegex(PatternRegex.escaped(s)))
                case let .regex(r):
                    splitter = try Splitter.forPattern(r.source, isolated: splitBehavior == .isolated && !invert)
                }
                steps.append(.split(splitter, splitBehavior, invert: invert))
            case "Metaspace":
                let replacementField = try field.required("replacement")
                let replacement = try replacementField.string().unicodeScalars
                guard replacement.count == 1 else { throw replacementField.malformed("a single character") }
                steps.append(.metaspace(replacement: replacement.first!.value, prepend: try prependScheme(field),
                                        split: try field.optionalBool("split") ?? true))
            case "Digits":
                steps.append(.split(.digits(individual: try field.optionalBool("individual_digits") ?? false),
                                    try field.optionalBool("individual_digits") ?? false ? .isolated : .contiguous, invert: false))
            case "Punctuation":
                let b = try field.optional("behavior").map(behavior) ?? .isolated
                steps.append(.split(.punctuation, b, invert: false))
            case "Whitespace":
                steps.append(.split(.regex(try PatternRegex(#"\w+|[^\w\s]+"#)), .removed, invert: true))
            default:  // WhitespaceSplit
                steps.append(.split(.regex(try PatternRegex(#"\s"#)), .removed, invert: false))
            }
        }
        try add(field)
        return (steps, byteLevelField != nil)
    }

    /// Metaspace's `prepend_scheme` (default "always"; the older `add_prefix_space: false` means "never").
    static func prependScheme(_ field: JSONField) throws -> PrependScheme {
        var scheme = PrependScheme.always
        if let schemeField = try field.optional("prepend_scheme") {
            let name = try schemeField.string()
            guard let s = PrependScheme(rawValue: name) else {
                throw TokenizerError.unsupported(path: field.file, field: schemeField.path, kind: "prepend_scheme", found: name,
                                                 supported: PrependScheme.allCases.map(\.rawValue))
            }
            scheme = s
        }
        if try field.optionalBool("add_prefix_space") == false { scheme = .never }
        return scheme
    }

    static func behavior(_ field: JSONField) throws -> SplitBehavior {
        let name = try field.string()
        guard let b = SplitBehavior(rawValue: name) else {
            throw TokenizerError.unsupported(path: field.file, field: field.path, kind: "split behavior", found: name,
                                             supported: SplitBehavior.allCases.map(\.rawValue))
        }
        return b
    }

    static func decoder(_ field: JSONField) throws -> TokenDecoder {
        switch try type(field, kind: "decoder type", supported: decoderTypes) {
        case "ByteLevel": return .byteLevel
        case "Metaspace":
            let replacement = try field.required("replacement").string().unicodeScalars
            guard replacement.count == 1 else { throw try field.required("replacement").malformed("a single character") }
            return .metaspace(replacement: replacement.first!, prependScheme: try prependScheme(field))
        case "ByteFallback": return .byteFallback
        case "Fuse": return .fuse
        case "Strip":
            let contentField = try field.required("content")
            let content = try contentField.string().unicodeScalars
            guard content.count == 1 else { throw contentField.malformed("a single character") }
            let start = try field.optionalInt("start") ?? 0, stop = try field.optionalInt("stop") ?? 0
            guard start >= 0 else { throw try field.required("start").malformed("a count of characters, 0 or more") }
            guard stop >= 0 else { throw try field.required("stop").malformed("a count of characters, 0 or more") }
            return .strip(content: content.first!, start: start, stop: stop)
        case "Replace":
            let content = try field.required("content").string()
            switch try pattern(field.required("pattern")) {
            case let .literal(s): return .replaceLiteral(pattern: s, content: content)
            case let .regex(r): return .replaceRegex(r, content: content)
            }
        default:
            return .sequence(try field.required("decoders").array().map(decoder))
        }
    }

    static func postProcessor(_ field: JSONField, ids: ExactStringTable) throws -> PostProcessor {
        switch try type(field, kind: "post-processor type", supported: postProcessorTypes) {
        case "ByteLevel": return .none
        case "Sequence":
            return .sequence(try field.required("processors").array().map { try postProcessor($0, ids: ids) })
        case "RobertaProcessing", "BertProcessing":
            func pair(_ key: String) throws -> Int32 {
                let f = try field.required(key)
                let items = try f.array()
                guard items.count == 2 else { throw f.malformed("[token, id]") }
                return Int32(try items[1].int())
            }
            return .clsSep(cls: try pair("cls"), sep: try pair("sep"))
        default:  // TemplateProcessing
            var specials: [String: [Int32]] = [:]
            if let table = try field.optional("special_tokens") {
                for (name, value) in try table.members() {
                    let entry = table.child(path: name, value)
                    specials[name] = try entry.required("ids").array().map { Int32(try $0.int()) }
                }
            }
            var prefix: [Int32] = [], suffix: [Int32] = []
            var seenSequence = false
            for item in try field.required("single").array() {
                if let special = try item.optional("SpecialToken") {
                    let idField = try special.required("id")
                    let name = try idField.string()
                    guard let tokenIDs = specials[name] ?? ids[name].map({ [Int32($0)] }) else {
                        throw TokenizerError.malformed(path: field.file, field: idField.path, found: TokenizerError.quoted(name),
                                                       expected: "a token listed in special_tokens")
                    }
                    if seenSequence { suffix += tokenIDs } else { prefix += tokenIDs }
                } else if try item.optional("Sequence") != nil {
                    seenSequence = true
                } else {
                    throw item.malformed("{\"SpecialToken\": ...} or {\"Sequence\": ...}")
                }
            }
            return .template(prefix: prefix, suffix: suffix)
        }
    }

    /// The BPE model and its vocabulary as (token, id).
    static func bpeModel(_ field: JSONField, byteLevel: Bool) throws -> (BPEModel, [(String, Int)]) {
        if try field.optional("type") != nil {
            _ = try type(field, kind: "model type", supported: modelTypes)
        } else if try field.optional("merges") == nil {
            throw TokenizerError.malformed(path: field.file, field: field.path + ".type", found: "nothing", expected: "\"BPE\"")
        }
        if let dropout = try field.optional("dropout"), try dropout.double() > 0 {
            throw TokenizerError.unsupported(path: field.file, field: dropout.path, kind: "BPE option", found: "dropout \(try dropout.double())",
                                             supported: ["dropout null or 0 (dropout is random, for training only)"])
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let f = try field.optional(key), try !f.string().isEmpty {
                throw TokenizerError.unsupported(path: field.file, field: f.path, kind: "BPE option", found: "\(key) \(try f.string())",
                                                 supported: ["null or \"\""])
            }
        }
        let vocabField = try field.required("vocab")
        let vocabObject = try vocabField.members()
        var tokenList: [(String, Int)] = []
        tokenList.reserveCapacity(vocabObject.count)
        var stringToID = ExactStringTable(capacity: vocabObject.count)
        var vocab = ByteKeyTable(capacity: vocabObject.count)
        for (token, value) in vocabObject {
            let idField = vocabField.child(path: TokenizerError.quoted(token), value)
            let id = try idField.int()
            guard id >= 0 && id < Int(Int32.max) else { throw idField.malformed("an id from 0 to 2^31-2") }
            tokenList.append((token, id))
            stringToID.insert(token, id)
            if byteLevel {
                if let bytes = ByteLevelAlphabet.bytes(of: token) { vocab.insert(bytes, value: Int64(id)) }
            } else {
                vocab.insert(Array(token.utf8), value: Int64(id))
            }
        }
        let mergesField = try field.optional("merges")
        let merges = try mergesField?.array() ?? []
        var pairs = PairTable(capacity: merges.count)
        for (rank, merge) in merges.enumerated() {
            let left: [UInt8], right: [UInt8]
            if merge.isString {
                // "left right", split at the space as HF does (exactly two parts).
                let bytes = Array(try merge.string().utf8)
                let parts = bytes.split(separator: 0x20, omittingEmptySubsequences: false)
                guard parts.count == 2 else { throw merge.malformed("\"left right\" (two tokens separated by one space)") }
                left = Array(parts[0]); right = Array(parts[1])
            } else {
                let items = try merge.array()
                guard items.count == 2 else { throw merge.malformed("[left, right]") }
                left = Array(try items[0].string().utf8); right = Array(try items[1].string().utf8)
            }
            guard let a = stringToID.find(left), let b = stringToID.find(right), let m = stringToID.find(left + right) else {
                let missing = [left, right, left + right].first { stringToID.find($0) == nil }!
                throw TokenizerError.malformed(path: field.file, field: merge.path,
                                               found: "token \(TokenizerError.quoted(String(decoding: missing, as: UTF8.self))) missing from model.vocab",
                                               expected: "merges of vocabulary tokens into a vocabulary token")
            }
            pairs.insert(Int32(a), Int32(b), rank: Int32(rank), merged: Int32(m))
        }
        var unkID: Int32?
        if let unkField = try field.optional("unk_token") {
            let unk = try unkField.string()
            guard let id = stringToID[unk].map(Int32.init) else {
                throw TokenizerError.malformed(path: field.file, field: unkField.path, found: "\(TokenizerError.quoted(unk)), not in model.vocab",
                                               expected: "a vocabulary token")
            }
            unkID = id
        }
        let byteFallback = try field.optionalBool("byte_fallback") ?? false
        var byteTokens = [Int32](repeating: -1, count: 256)
        for b in 0..<256 {
            if byteLevel {
                var byte = UInt8(b)
                if let id = vocab.find(&byte, 1) { byteTokens[b] = Int32(id) }
            } else if byteFallback {
                let name = "<0x" + String(b, radix: 16, uppercase: true).leftPadded2 + ">"
                if let id = stringToID[name] { byteTokens[b] = Int32(id) }
            }
        }
        let model = BPEModel(vocab: vocab, priority: .mergeRanks(pairs), byteLevel: byteLevel, byteFallback: byteFallback,
                             unkID: unkID, fuseUnknown: try field.optionalBool("fuse_unk") ?? false,
                             ignoreMerges: try field.optionalBool("ignore_merges") ?? false, byteTokens: byteTokens)
        return (model, tokenList)
    }
}

extension String {
    var leftPadded2: String { count >= 2 ? self : "0" + self }
}

extension PatternRegex {
    /// A pattern that matches `literal` exactly.
    static func escaped(_ literal: String) -> String {
        var out = ""
        for scalar in literal.unicodeScalars {
            if scalar.isASCII && !(scalar.properties.isAlphabetic || ("0"..."9").contains(scalar) || scalar == " ") {
                out += "\\x{\(String(scalar.value, radix: 16))}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}
