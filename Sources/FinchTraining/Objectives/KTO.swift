import Foundation
import FinchModels

/// TRL's KTOTrainer (loss_type `kto` or `apo_zero_unpaired`): unpaired completions labelled
/// desirable or not, each scored by its log-ratio r = log pi(y|x) - log pi_ref(y|x) (summed over
/// completion tokens) against a KL estimate z0 from mismatched prompt-completion pairs:
///
///   desirable:   w_d * (1 - sigmoid(beta * (r - z0)))
///   undesirable: w_u * (1 - sigmoid(beta * (z0 - r)))
///
/// and the loss is their mean over the examples. z0 = max(0, mean over the pairs of policy minus
/// reference log-probs), with no gradient through it. `apo_zero_unpaired` drops z0 and scores
/// undesirable completions by sigmoid(beta * r).
///
/// The mismatched pairs: the window's examples in dataset order (by example id), each prompt
/// with the previous example's completion, the first with the last's — TRL rotates completions
/// by one within each batch of its sequential sampler, which is the window for one batch
/// without accumulation. z0 is counted over the whole window before the first backward
/// (`windowNormalisers`), so micro-batches give the full batch's update exactly; TRL estimates
/// z0 and averages the loss per micro-batch instead.
public final class KTOObjective: Objective, NamesItsTrainingBatches {
    /// TRL's `loss_type`.
    public enum Loss: String, Sendable, CaseIterable {
        /// The KTO paper's loss, with the KL estimate.
        case kto
        /// APO-zero for unpaired data: no KL term; undesirable completions scored by sigmoid(beta * r).
        case apoZeroUnpaired = "apo_zero_unpaired"
    }

    /// The loss.
    public let loss: Loss
    /// TRL's `beta`.
    public let beta: Double
    /// TRL's `desirable_weight` and `undesirable_weight`.
    public let desirableWeight: Double, undesirableWeight: Double
    /// "kto".
    public var name: String { "kto" }
    /// The prompt and completion as one row with the prompt's labels -100, and the label (1 desirable, 0 not).
    public let requiredFields = ["input_ids", "labels", "label"]
    /// TRL's KTOTrainer logs `num_tokens`.
    public var logsTokenCount: Bool { true }
    let padId: Int32
    let reference: ReferenceModel
    /// Reference log-probs of each example's completion, by example id, computed once.
    private var referenceCache: [Int: Double] = [:]

    /// A KTO objective; `reference` is the base with adapters off (LoRA) or a frozen model.
    public init(loss: Loss = .kto, beta: Double = 0.1, desirableWeight: Double = 1, undesirableWeight: Double = 1,
                padId: Int32 = 0, reference: ReferenceModel) {
        self.loss = loss; self.beta = beta; self.desirableWeight = desirableWeight; self.undesirableWeight = undesirableWeight
        self.padId = padId; self.reference = reference
    }

    static func isDesirable(_ e: Example) -> Bool { e["label"].first.map { $0 != 0 } ?? false }

    /// Examples, desirable and undesirable ones, and their completion tokens.
    public func normalisers(of examples: [Example]) -> Normalisers {
        var n = Normalisers()
        for e in examples {
            let tokens = Double(e["labels"].dropFirst().filter { $0 >= 0 }.count)
            n.examples += 1
            if Self.isDesirable(e) { n.desirable += 1; n.chosenTokens += tokens } else { n.undesirable += 1; n.rejectedTokens += tokens }
        }
        return n
    }

    /// The KL estimate's sum and count over this rank's examples, each prompt with the completion
    /// of the example before it in the window (by id, cyclically).
    public func windowNormalisers(_ window: [Example], mine: [Example], model: Transformer, pass: WindowPass) throws -> Normalisers {
        guard loss == .kto, window.count > 0, !mine.isEmpty else { return Normalisers() }
        try validate(window)
        let order = window.sorted { $0.id < $1.id }
        let position = Dictionary(uniqueKeysWithValues: order.enumerated().map { ($1.id, $0) })
        var rows: [[Int32]] = [], labels: [[Int32]] = []
        for e in mine {
            guard let j = position[e.id] else { continue }
            let partner = order[(j + order.count - 1) % order.count]
            let prompt = Array(e["input_ids"].prefix(Self.promptLength(e)))
            let completion = Array(partner["input_ids"].dropFirst(Self.promptLength(partner)))
            rows.append(prompt + completion)
            labels.append([Int32](repeating: -100, count: prompt.count) + completion)
        }
        var n = Normalisers()
        // A few rows at a time: these forwards keep no activations, and rows can be many.
        for start in stride(from: 0, to: rows.count, by: 8) {
            let range = start..<min(start + 8, rows.count)
            let batch = SequenceBatch(rows: Array(rows[range]), labels: Array(labels[range]), padId: padId)
            let policy = batch.rowSums(model.tokenStatistics(batch.tokens, targets: batch.targets).logProbs, where: batch.targets)
            let referenceSums = batch.rowSums(referenceStatistics(batch, model: model).logProbs, where: batch.targets)
            for (p, r) in zip(policy, referenceSums) { n.klSum += p - r; n.klCount += 1 }
        }
        return n
    }

    /// Positions before the completion: the labels' leading -100s.
    static func promptLength(_ e: Example) -> Int { e["labels"].prefix { $0 < 0 }.count }

    func referenceStatistics(_ batch: SequenceBatch, model: Transformer) -> TokenStatistics {
        switch reference {
        case .adaptersOff:
            model.adaptersEnabled = false
            defer { model.adaptersEnabled = true }
            return model.tokenStatistics(batch.tokens, targets: batch.targets)
        case let .model(frozen):
            return frozen.tokenStatistics(batch.tokens, targets: batch.targets)
        }
    }

    /// Reference log-probs of each example's completion, computed once per example.
    func referenceLogProbs(_ examples: [Example], model: Transformer) -> [Double] {
        let missing = examples.filter { referenceCache[$0.id] == nil }
        if !missing.isEmpty {
            let batch = SequenceBatch(rows: missing.map { $0["input_ids"] }, labels: missing.map { $0["labels"] }, padId: padId)
            let sums = batch.rowSums(referenceStatistics(batch, model: model).logProbs, where: batch.targets)
            for (e, s) in zip(missing, sums) { referenceCache[e.id] = s }
        }
        return examples.map { referenceCache[$0.id]! }
    }

    /// The forward `accumulate` runs.
    package func trainingBatches(_ examples: [Example], model: Transformer) -> [TokenBatch] {
        [SequenceBatch(rows: examples.map { $0["input_ids"] }, labels: examples.map { $0["labels"] }, padId: padId).tokens]
    }

    /// Forward and backward of one micro-batch, as its share of the window.
    public func accumulate(_ examples: [Example], model: Transformer, window: Normalisers) throws -> [String: Double] {
        try validate(examples)
        let batch = SequenceBatch(rows: examples.map { $0["input_ids"] }, labels: examples.map { $0["labels"] }, padId: padId)
        let references = referenceLogProbs(examples, model: model)
        let stats = model.forwardForTraining(batch.tokens, targets: batch.targets)
        let (metrics, gradients) = terms(examples, batch: batch, stats: stats, references: references, window: window,
                                         vocabSize: model.config.vocabSize)
        model.backward(logProbGradients: gradients)
        return metrics
    }

    /// The same terms and metrics without gradients.
    public func evaluate(_ examples: [Example], model: Transformer, window: Normalisers) throws -> [String: Double] {
        try validate(examples)
        let batch = SequenceBatch(rows: examples.map { $0["input_ids"] }, labels: examples.map { $0["labels"] }, padId: padId)
        let references = referenceLogProbs(examples, model: model)
        return terms(examples, batch: batch, stats: model.tokenStatistics(batch.tokens, targets: batch.targets),
                     references: references, window: window, vocabSize: model.config.vocabSize).0
    }

    /// The window's KL estimate z0 (0 for `apo_zero_unpaired`).
    func kl(_ window: Normalisers) -> Double { loss == .kto && window.klCount > 0 ? max(0, window.klSum / window.klCount) : 0 }

    /// The micro-batch's shares of the loss and metrics, and d loss / d log p at each position.
    func terms(_ examples: [Example], batch: SequenceBatch, stats: TokenStatistics, references: [Double], window: Normalisers,
               vocabSize: Int) -> ([String: Double], [Float]) {
        let logps = batch.rowSums(stats.logProbs, where: batch.targets)
        let z0 = kl(window), n = max(window.examples, 1), seq = batch.tokens.seq
        var m: [String: Double] = [:]
        func add(_ key: String, _ value: Double) { m[key, default: 0] += value }
        var gradients = [Float](repeating: 0, count: stats.logProbs.count)
        var entropy = 0.0
        for (row, e) in examples.enumerated() {
            let desirable = Self.isDesirable(e), r = logps[row] - references[row]
            let weight = desirable ? desirableWeight : undesirableWeight
            // term = 1 - sigmoid(z) (desirable; undesirable kto) or sigmoid(z) (undesirable apo);
            // d term / d log p = -beta s (1 - s) for desirable completions, +beta s (1 - s) for the others.
            let z: Double
            switch (loss, desirable) {
            case (.kto, true): z = beta * (r - z0)
            case (.kto, false): z = beta * (z0 - r)
            case (.apoZeroUnpaired, _): z = beta * r
            }
            let s = sigmoid(z)
            let term = loss == .apoZeroUnpaired && !desirable ? s : 1 - s
            let slope = (desirable ? -1.0 : 1.0) * beta * s * (1 - s)
            add("loss", weight * term / n)
            for t in 0..<seq where batch.targets[row * seq + t] >= 0 {
                gradients[row * seq + t] = Float(weight * slope / n)
                entropy += Double(stats.entropies[row * seq + t])
                add(desirable ? "logits/chosen" : "logits/rejected", Double(stats.logitSums[row * seq + t]) / Double(vocabSize)
                    / (desirable ? window.chosenTokens : window.rejectedTokens))
            }
            let count = desirable ? window.desirable : window.undesirable
            add(desirable ? "rewards/chosen" : "rewards/rejected", beta * r / count)
            add(desirable ? "logps/chosen" : "logps/rejected", logps[row] / count)
        }
        if window.desirable > 0 && window.undesirable > 0 {
            m["rewards/margins"] = (m["rewards/chosen"] ?? 0) - (m["rewards/rejected"] ?? 0)
        }
        m["kl"] = z0 * Double(examples.count) / n
        m["entropy"] = entropy / max(window.chosenTokens + window.rejectedTokens, 1)
        return (m, gradients)
    }
}
