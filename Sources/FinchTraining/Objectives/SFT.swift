import FinchKernels
import FinchIO
import FinchTokenizers
import FinchModels
import FinchGeneration
import FinchDistributed

/// Supervised fine-tuning: token cross-entropy over label tokens, normalised by the label
/// tokens of the whole window (so micro-batches of different lengths weigh by their tokens).
public final class SFTObjective: Objective, NamesItsTrainingBatches {
    /// TRL's name for the method.
    public let name = "sft"
    /// Ids and unshifted labels (-100 where no loss is taken).
    public let requiredFields = ["input_ids", "labels"]
    /// SFTTrainer logs `num_tokens`.
    public let logsTokenCount = true
    let padId: Int32

    /// `padId` fills rows shorter than the longest of a micro-batch (masked out of attention and loss).
    public init(padId: Int32 = 0) { self.padId = padId }

    /// The rows and next-token targets of a micro-batch. A packed example (with `segment_lengths`,
    /// see `TrainingData.pack`) holds several sequences; attention and targets stay within each.
    func batch(_ examples: [Example]) -> (tokens: TokenBatch, targets: [Int32]) {
        if examples.contains(where: { $0.fields["segment_lengths"] != nil }) {
            let split = examples.map(Self.sequences)
            return TokenBatch.packed(rows: split.map { $0.map(\.ids) }, labels: split.map { $0.map(\.labels) }, padId: padId)
        }
        let b = SequenceBatch(rows: examples.map { $0["input_ids"] }, labels: examples.map { $0["labels"] }, padId: padId)
        return (b.tokens, b.targets)
    }

    static func sequences(of example: Example) -> [(ids: [Int32], labels: [Int32])] {
        let ids = example["input_ids"], labels = example["labels"]
        let lengths = example.fields["segment_lengths"] ?? [Int32(ids.count)]
        var start = 0
        return lengths.map { length in
            defer { start += Int(length) }
            return (Array(ids[start..<start + Int(length)]), Array(labels[start..<start + Int(length)]))
        }
    }

    /// The scored label tokens (`tokens`); the loss is their mean over the window.
    public func normalisers(of examples: [Example]) -> Normalisers {
        // Scored positions: every label after the first position of its sequence that is not -100.
        Normalisers(tokens: Double(examples.reduce(0) { total, e in
            total + Self.sequences(of: e).reduce(0) { $0 + $1.labels.dropFirst().filter { $0 >= 0 }.count }
        }))
    }

    /// The one batch `accumulate` runs.
    package func trainingBatches(_ examples: [Example], model: Transformer) -> [TokenBatch] { [batch(examples).tokens] }

    /// Cross-entropy forward and backward; returns shares of `loss`, `mean_token_accuracy` and `entropy`.
    public func accumulate(_ examples: [Example], model: Transformer, window: Normalisers) throws -> [String: Double] {
        try validate(examples)
        let b = batch(examples)
        var stats = TokenStatistics(count: 0)
        let r = withUnsafeMutablePointer(to: &stats) {
            model.crossEntropyStep(b.tokens, targets: b.targets, weight: Float(1 / max(window.tokens, 1)), statistics: $0)
        }
        return metrics(lossSum: r.sum, stats: stats, window: window)
    }

    /// The same metrics as `accumulate`, without gradients.
    public func evaluate(_ examples: [Example], model: Transformer, window: Normalisers) throws -> [String: Double] {
        try validate(examples)
        let b = batch(examples)
        let stats = model.tokenStatistics(b.tokens, targets: b.targets)
        let lossSum = -stats.logProbs.reduce(0.0) { $0 + Double($1) }
        return metrics(lossSum: lossSum, stats: stats, window: window)
    }

    func metrics(lossSum: Double, stats: TokenStatistics, window: Normalisers) -> [String: Double] {
        let n = max(window.tokens, 1)
        return ["loss": lossSum / n,
                "mean_token_accuracy": stats.correct.reduce(0.0) { $0 + Double($1) } / n,
                "entropy": stats.entropies.reduce(0.0) { $0 + Double($1) } / n]
    }
}
