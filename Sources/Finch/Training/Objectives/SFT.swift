/// Supervised fine-tuning: token cross-entropy over label tokens, normalised by the label
/// tokens of the whole window (so micro-batches of different lengths weigh by their tokens).
public final class SFTObjective: Objective {
    public let name = "sft"
    public let requiredFields = ["input_ids", "labels"]
    public let logsTokenCount = true
    let padId: Int32

    public init(padId: Int32 = 0) { self.padId = padId }

    func batch(_ examples: [Example]) -> SequenceBatch {
        SequenceBatch(rows: examples.map { $0["input_ids"] }, labels: examples.map { $0["labels"] }, padId: padId)
    }

    public func normalisers(of examples: [Example]) -> Normalisers {
        // Scored positions: every label after the first position that is not -100.
        Normalisers(tokens: Double(examples.reduce(0) { $0 + $1["labels"].dropFirst().filter { $0 >= 0 }.count }))
    }

    public func accumulate(_ examples: [Example], model: Transformer, window: Normalisers) throws -> [String: Double] {
        try validate(examples)
        let b = batch(examples)
        var stats = TokenStatistics(count: 0)
        let r = withUnsafeMutablePointer(to: &stats) {
            model.crossEntropyStep(b.tokens, targets: b.targets, weight: Float(1 / max(window.tokens, 1)), statistics: $0)
        }
        return metrics(lossSum: r.sum, stats: stats, window: window)
    }

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
