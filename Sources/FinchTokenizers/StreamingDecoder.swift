import FinchKernels
import FinchIO

/// Decodes ids one at a time, returning text as soon as it is complete UTF-8, as HF
/// tokenizers' DecodeStream does: it keeps a few ids of context, decodes them with the new
/// id, and returns what the new id added.
public struct StreamingDecoder {
    /// Decodes the ids.
    public let tokenizer: Tokenizer
    /// Drop special tokens (`<|im_end|>`, ...) from the text, as `decode(skip_special_tokens=True)`.
    public let skipSpecialTokens: Bool
    private var ids: [Int] = []
    private var prefix = ""
    private var prefixIndex = 0

    /// An empty stream; feed it one sequence's ids with `append`.
    public init(tokenizer: Tokenizer, skipSpecialTokens: Bool = false) {
        self.tokenizer = tokenizer
        self.skipSpecialTokens = skipSpecialTokens
    }

    private func decode(_ ids: [Int]) -> String { tokenizer.decode(ids, skipSpecialTokens: skipSpecialTokens) }

    private static func endsIncomplete(_ s: String) -> Bool { s.unicodeScalars.last == "\u{FFFD}" }

    /// The text completed by `id` (possibly empty).
    public mutating func append(_ id: Int) -> String {
        if prefix.isEmpty && !ids.isEmpty {
            let text = decode(ids)
            if !Self.endsIncomplete(text) {
                prefix = text
                prefixIndex = ids.count
            }
        }
        ids.append(id)
        let text = decode(ids)
        guard text.utf8.count > prefix.utf8.count, !Self.endsIncomplete(text) else { return "" }
        let common = zip(text.utf8, prefix.utf8).prefix { $0 == $1 }.count
        let newText = String(decoding: text.utf8.dropFirst(common), as: UTF8.self)
        let newPrefixIndex = ids.count - prefixIndex
        ids.removeFirst(prefixIndex)
        prefix = decode(ids)
        prefixIndex = newPrefixIndex
        return newText
    }

    /// Whatever is left, including an incomplete UTF-8 tail (as U+FFFD); then starts over.
    public mutating func finish() -> String {
        let text = decode(ids)
        defer { ids = []; prefix = ""; prefixIndex = 0 }
        guard text.utf8.count > prefix.utf8.count else { return "" }
        let common = zip(text.utf8, prefix.utf8).prefix { $0 == $1 }.count
        return String(decoding: text.utf8.dropFirst(common), as: UTF8.self)
    }
}
