import Foundation
import FinchKernels
import FinchIO

/// A Hugging Face-compatible tokenizer: the pipeline of tokenizer.json (normalizer,
/// pre-tokenizer, BPE model, post-processor, decoder, added tokens), or the vocabulary
/// embedded in a GGUF file, giving the same ids as HF `tokenizers`.
///
/// `encode` is safe to call from several threads: each call borrows its own scratch
/// buffers and word cache from a pool.
public final class Tokenizer: @unchecked Sendable {
    /// Where it was loaded from.
    public let source: String
    let model: BPEModel
    let normalizer: Normalizer?
    let preTokenizer: PreTokenizer
    let postProcessor: PostProcessor
    let decoder: TokenDecoder?
    /// Added tokens matched in the raw text, and those matched after normalization.
    let rawMatcher: AddedTokenMatcher
    let normalizedMatcher: AddedTokenMatcher
    /// Token string of each id (added tokens' content over the model's entry).
    let tokens: [String?]
    let special: [Bool]
    let addedByContent: ExactStringTable
    /// Model tokens whose string has no raw-byte form (byte-level vocabularies only).
    let otherTokens: ExactStringTable

    /// `bos_token` of tokenizer_config.json (or special_tokens_map.json, or GGUF metadata); nil when unset.
    public let bosTokenId: Int?
    /// `eos_token`, from the same sources; nil when unset (the model's config may list more EOS ids).
    public let eosTokenId: Int?
    /// `pad_token`; nil when unset (training then pads with the EOS id).
    public let padTokenId: Int?
    /// `unk_token`, the id of unknown pieces; nil when unset.
    public let unkTokenId: Int?
    /// Raw Jinja source of the chat template, if the tokenizer has one.
    public let chatTemplate: String?

    private var sessions: [EncodeSession] = []
    private let sessionLock = NSLock()

    struct Parts {
        var source: String
        var model: BPEModel
        var normalizer: Normalizer?
        var preTokenizer: PreTokenizer
        var postProcessor: PostProcessor
        var decoder: TokenDecoder?
        var addedTokens: [AddedToken]
        /// Model vocabulary as (token string, id).
        var modelTokens: [(String, Int)]
        var bos: Int?, eos: Int?, pad: Int?, unk: Int?
        var chatTemplate: String?
    }

    init(_ parts: Parts) throws {
        source = parts.source
        model = parts.model
        normalizer = parts.normalizer
        preTokenizer = parts.preTokenizer
        postProcessor = parts.postProcessor
        decoder = parts.decoder
        var size = 0
        for (_, id) in parts.modelTokens { size = max(size, id + 1) }
        for token in parts.addedTokens { size = max(size, Int(token.id) + 1) }
        var tokens = [String?](repeating: nil, count: size)
        var other = ExactStringTable()
        for (string, id) in parts.modelTokens {
            tokens[id] = string
            if model.byteLevel, ByteLevelAlphabet.bytes(of: string) == nil { other.insert(string, id) }
        }
        var special = [Bool](repeating: false, count: size)
        var added = ExactStringTable()
        var raw: [AddedToken] = [], rawPatterns: [[UInt8]] = []
        var normalized: [AddedToken] = [], normalizedPatterns: [[UInt8]] = []
        for token in parts.addedTokens {
            tokens[Int(token.id)] = token.content
            special[Int(token.id)] = token.special
            added.insert(token.content, Int(token.id))
            if token.normalized {
                normalized.append(token)
                let content = Array(token.content.utf8)
                normalizedPatterns.append(try parts.normalizer?.apply(content, limit: Normalizer.outputLimit(inputBytes: content.count)) ?? content)
            } else {
                raw.append(token)
                rawPatterns.append(Array(token.content.utf8))
            }
        }
        self.tokens = tokens
        self.special = special
        addedByContent = added
        otherTokens = other
        rawMatcher = AddedTokenMatcher(tokens: raw, patterns: rawPatterns)
        normalizedMatcher = AddedTokenMatcher(tokens: normalized, patterns: normalizedPatterns)
        bosTokenId = parts.bos
        eosTokenId = parts.eos
        padTokenId = parts.pad
        unkTokenId = parts.unk
        chatTemplate = parts.chatTemplate
    }

    /// Throws, naming the token, when this tokenizer can produce an id that a model with `rows`
    /// embedding rows does not have (an added token or a post-processor's special token past the
    /// vocabulary would read outside the embedding table).
    public func checkIDs(below rows: Int, model: String) throws {
        func fail(_ what: String, _ id: Int) -> TokenizerError {
            .malformed(path: source, field: what, found: "id \(id)", expected: "an id below \(rows), the embedding rows of \(model)")
        }
        if tokens.count > rows, let id = (rows..<tokens.count).first(where: { tokens[$0] != nil }) {
            throw fail("token '\(tokens[id]!)'", id)
        }
        func processorIDs(_ p: PostProcessor) -> [Int32] {
            switch p {
            case let .template(prefix, suffix): return prefix + suffix
            case let .clsSep(cls, sep): return [cls, sep]
            case .none: return []
            case let .sequence(items): return items.flatMap(processorIDs)
            }
        }
        if let id = processorIDs(postProcessor).first(where: { $0 < 0 || Int($0) >= rows }) { throw fail("post_processor special token", Int(id)) }
        for (name, id) in [("bos_token", bosTokenId), ("eos_token", eosTokenId), ("pad_token", padTokenId), ("unk_token", unkTokenId)] {
            if let id, id < 0 || id >= rows { throw fail(name, id) }
        }
    }

    /// Loads an HF tokenizer folder (tokenizer.json with tokenizer_config.json,
    /// special_tokens_map.json and chat_template.jinja where present), a tokenizer.json
    /// file, or a .gguf file.
    public static func load(from path: String) throws -> Tokenizer {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw TokenizerError.fileNotFound(path: path)
        }
        if isDirectory.boolValue {
            return try TokenizerJSONLoader.load(folder: path)
        }
        if path.hasSuffix(".json") {
            return try TokenizerJSONLoader.load(file: path, folder: (path as NSString).deletingLastPathComponent)
        }
        return try GGUFTokenizerLoader.load(path: path)
    }

    // MARK: - Vocabulary

    /// Number of ids: one past the largest id of the model vocabulary and added tokens.
    public var vocabularySize: Int { tokens.count }

    /// The BOS token's string (e.g. "<s>"), nil when unset; Finch hands it to chat templates as `bos_token`.
    public var bosToken: String? { bosTokenId.flatMap(tokenString) }
    /// The EOS token's string, nil when unset; Finch hands it to chat templates as `eos_token`.
    public var eosToken: String? { eosTokenId.flatMap(tokenString) }
    /// The pad token's string, nil when unset.
    public var padToken: String? { padTokenId.flatMap(tokenString) }

    /// The token's string as the vocabulary spells it (e.g. "Ġthe", "▁the", "<|im_end|>").
    public func tokenString(_ id: Int) -> String? {
        guard id >= 0 && id < tokens.count else { return nil }
        return tokens[id]
    }

    /// The id of a token spelled as the vocabulary spells it.
    public func tokenID(_ token: String) -> Int? {
        if let id = addedByContent[token] { return id }
        if model.byteLevel {
            if let bytes = ByteLevelAlphabet.bytes(of: token), let id = model.vocab.find(bytes) { return Int(id) }
            return otherTokens[token]
        }
        return model.vocab.find(Array(token.utf8)).map { Int($0) }
    }

    /// Whether the id is a special added token (skipped by `decode(_:skipSpecialTokens:)`).
    public func isSpecial(_ id: Int) -> Bool { id >= 0 && id < special.count && special[id] }

    // MARK: - Encoding

    /// The ids of `text`; with `addSpecialTokens`, the post-processor's tokens (e.g. BOS) too.
    /// Added tokens written in the text (e.g. "<|im_start|>") are always recognized.
    /// Throws `TokenizerError.budgetExceeded` when the tokenizer's own patterns or normalizer
    /// would take unbounded time or memory on the text (a hostile tokenizer.json).
    public func encode(_ text: String, addSpecialTokens: Bool = true) throws -> [Int] {
        var text = text
        let session = takeSession()
        defer { returnSession(session) }
        var ids: [Int32] = []
        ids.reserveCapacity(text.utf8.count / 3 + 4)
        try text.withUTF8 { buffer in
            guard let base = buffer.baseAddress, buffer.count > 0 else { return }
            try encodeText(base, buffer.count, session, &ids)
        }
        if addSpecialTokens { ids = postProcessor.apply(ids) }
        return ids.map { Int($0) }
    }

    /// Encodes UTF-8 bytes, failing with `TokenizerError.invalidUTF8` (naming `source`) if
    /// they are not valid UTF-8.
    public func encode<C: Collection>(utf8 bytes: C, source: String, addSpecialTokens: Bool = true) throws -> [Int] where C.Element == UInt8 {
        try encode(try UTF8Validation.string(from: bytes, source: source), addSpecialTokens: addSpecialTokens)
    }

    private func encodeText(_ p: UnsafePointer<UInt8>, _ n: Int, _ session: EncodeSession, _ ids: inout [Int32]) throws {
        if rawMatcher.isEmpty {
            try encodeSegment(p, n, atTextStart: true, session, &ids)
            return
        }
        var splits: [AddedTokenMatcher.Split] = []
        rawMatcher.split(p, n, into: &splits)
        for split in splits {
            if split.id >= 0 { ids.append(split.id) }
            else if split.end > split.start {
                try encodeSegment(p + split.start, split.end - split.start, atTextStart: split.start == 0, session, &ids)
            }
        }
    }

    private func encodeSegment(_ p: UnsafePointer<UInt8>, _ n: Int, atTextStart: Bool, _ session: EncodeSession, _ ids: inout [Int32]) throws {
        guard normalizer != nil || !normalizedMatcher.isEmpty else {
            try preTokenizeAndEncode(p, n, atTextStart: atTextStart, session, &ids)
            return
        }
        var bytes = Array(UnsafeBufferPointer(start: p, count: n))
        if let normalizer { bytes = try normalizer.apply(bytes, limit: Normalizer.outputLimit(inputBytes: n)) }
        try bytes.withUnsafeBufferPointer { buffer in
            guard let base = buffer.baseAddress, buffer.count > 0 else { return }
            if normalizedMatcher.isEmpty {
                try preTokenizeAndEncode(base, buffer.count, atTextStart: atTextStart, session, &ids)
                return
            }
            var splits: [AddedTokenMatcher.Split] = []
            normalizedMatcher.split(base, buffer.count, into: &splits)
            for split in splits {
                if split.id >= 0 { ids.append(split.id) }
                else if split.end > split.start {
                    try preTokenizeAndEncode(base + split.start, split.end - split.start,
                                         atTextStart: atTextStart && split.start == 0, session, &ids)
                }
            }
        }
    }

    private func preTokenizeAndEncode(_ p: UnsafePointer<UInt8>, _ n: Int, atTextStart: Bool, _ session: EncodeSession, _ ids: inout [Int32]) throws {
        try preTokenizer.run(p, n, atTextStart: atTextStart, work: session.work) { piece, length in
            encodeWord(piece, length, session, &ids)
        }
    }

    /// Words shorter than this are cached (HF caches words under 256 bytes too).
    private static let cachedWordLength = 256

    @inline(__always)
    private func encodeWord(_ p: UnsafePointer<UInt8>, _ n: Int, _ session: EncodeSession, _ ids: inout [Int32]) {
        guard n < Self.cachedWordLength else {
            model.encode(p, n, into: &ids, scratch: session.scratch)
            return
        }
        if let entry = session.cache.find(p, n) {
            let start = Int(entry >> 16), count = Int(entry & 0xFFFF)
            session.cachedIDs.withUnsafeBufferPointer { cached in
                ids.append(contentsOf: UnsafeBufferPointer(rebasing: cached[start..<(start + count)]))
            }
            return
        }
        let before = ids.count
        model.encode(p, n, into: &ids, scratch: session.scratch)
        session.remember(p, n, ids[before...])
    }

    private func takeSession() -> EncodeSession {
        sessionLock.lock()
        defer { sessionLock.unlock() }
        return sessions.popLast() ?? EncodeSession()
    }

    private func returnSession(_ session: EncodeSession) {
        sessionLock.lock()
        defer { sessionLock.unlock() }
        if sessions.count < 16 { sessions.append(session) }
    }

    // MARK: - Decoding

    /// The text of `ids`, through the decoder. Unknown ids are skipped.
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = false) -> String {
        var strings: [String] = []
        strings.reserveCapacity(ids.count)
        for id in ids {
            guard id >= 0 && id < tokens.count, let token = tokens[id] else { continue }
            if skipSpecialTokens && special[id] { continue }
            strings.append(token)
        }
        guard let decoder else { return strings.joined(separator: " ") }
        return decoder.decode(strings)
    }
}

/// Scratch buffers and the word cache of one encode call at a time.
final class EncodeSession {
    let scratch = BPEScratch()
    let work = PreTokenizerWork()
    /// Word bytes → (offset << 16 | count) into `cachedIDs`.
    var cache = ByteKeyTable(capacity: 4096)
    var cachedIDs: [Int32] = []

    func remember(_ p: UnsafePointer<UInt8>, _ n: Int, _ ids: ArraySlice<Int32>) {
        if cache.count >= 1 << 18 || cachedIDs.count >= 1 << 24 {
            cache.removeAll()
            cachedIDs.removeAll(keepingCapacity: true)
        }
        let offset = cachedIDs.count
        cachedIDs.append(contentsOf: ids)
        cache.insert(p, n, value: Int64(offset) << 16 | Int64(ids.count))
    }
}
