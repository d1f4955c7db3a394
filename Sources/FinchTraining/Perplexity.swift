import Foundation
import FinchKernels
import FinchIO
import FinchTokenizers
import FinchModels
import FinchGeneration
import FinchDistributed

/// Mean negative log-likelihood of token sequences under a model.
public struct PerplexityResult: Sendable, Equatable {
    /// Predicted tokens: every token after the first of each evaluated window.
    public var tokens: Int
    /// Mean NLL per predicted token (nats).
    public var nll: Double
    /// exp(nll): the model's perplexity on the evaluated tokens.
    public var perplexity: Double { exp(nll) }
}

/// Perplexity evaluation of a model over token sequences (`finch perplexity`).
public enum Perplexity {
    /// Scores `sequences` in windows of at most `maxLength` tokens (a longer sequence is cut
    /// into consecutive windows, each starting without context), batching windows of similar
    /// length up to `batchTokens` tokens per forward.
    public static func evaluate(model: Transformer, sequences: [[Int]], maxLength: Int, batchTokens: Int = 4096) -> PerplexityResult {
        var windows: [[Int]] = []
        for s in sequences {
            var start = 0
            while start < s.count {
                let window = Array(s[start..<min(start + maxLength, s.count)])
                if window.count >= 2 { windows.append(window) }
                start += maxLength
            }
        }
        windows.sort { $0.count > $1.count }
        var sum = 0.0, count = 0, i = 0
        while i < windows.count {
            let seq = windows[i].count
            let rows = max(1, min(windows.count - i, batchTokens / seq))
            let group = Array(windows[i..<i + rows])
            let batch = TokenBatch(rows: group)
            var labels = [Int32](repeating: -100, count: batch.tokenCount)
            for (b, w) in group.enumerated() { for (t, id) in w.enumerated() { labels[b * seq + t] = Int32(id) } }
            let r = model.negativeLogLikelihood(batch, targets: TokenBatch.shiftedTargets(labels: labels, batch: rows, seq: seq))
            sum += r.sum
            count += r.count
            i += rows
        }
        return PerplexityResult(tokens: count, nll: count > 0 ? sum / Double(count) : .nan)
    }

    /// Texts to score: a .txt file's non-empty lines, or the `text` field of each row of a
    /// .jsonl / .json / .csv file.
    public static func readTexts(path: String) throws -> [String] {
        if (path as NSString).pathExtension.lowercased() == "txt" {
            guard let data = FileManager.default.contents(atPath: path) else { throw LoadError.fileNotFound(path: path) }
            guard let text = String(data: data, encoding: .utf8) else {
                throw LoadError.malformed(path: path, field: "contents", found: "bytes that are not UTF-8", expected: "UTF-8 text")
            }
            return text.split(separator: "\n").map(String.init).filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
        }
        return try DataFile.read(path).map { row in
            guard let text = row.fields["text"] as? String else {
                throw LoadError.malformed(path: row.location, field: "text", found: "\(row.fields.keys.sorted())", expected: "a \"text\" string")
            }
            return text
        }
    }

    /// Reads JSONL where each line is an array of token ids (the `--token-ids` format).
    public static func readTokenIDs(path: String, vocabSize: Int) throws -> [[Int]] {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw LoadError.fileNotFound(path: path)
        }
        var sequences: [[Int]] = []
        for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty { continue }
            guard let ids = (try? JSONSerialization.jsonObject(with: Data(trimmed.utf8))) as? [NSNumber] else {
                throw LoadError.malformed(path: path, field: "line \(number + 1)", found: String(trimmed.prefix(40)),
                                          expected: "a JSON array of token ids")
            }
            let values = ids.map(\.intValue)
            if let bad = values.first(where: { $0 < 0 || $0 >= vocabSize }) {
                throw LoadError.malformed(path: path, field: "line \(number + 1)", found: "token id \(bad)",
                                          expected: "ids in 0..<\(vocabSize)")
            }
            sequences.append(values)
        }
        return sequences
    }
}
