import Foundation

/// The preference losses Finch trains with, following TRL's trainers (see reference/TRL_SEMANTICS.md).
public enum PreferenceLoss: Sendable, Equatable {
    /// ORPOTrainer: NLL of the chosen rows - beta * mean(logsigmoid(log odds ratio)), average log-probs.
    case orpo(beta: Double)
    /// DPOTrainer against a frozen reference; `kind` sigmoid, ipo or hinge.
    case dpo(kind: DPOKind, beta: Double, labelSmoothing: Double)
    /// CPOTrainer, loss_type sigmoid: summed log-probs, plus alpha * NLL of the chosen rows.
    case cpo(beta: Double, alpha: Double, labelSmoothing: Double)
    /// CPOTrainer, loss_type simpo: average log-probs with margin gamma, plus alpha * NLL.
    case simpo(beta: Double, gamma: Double, alpha: Double, labelSmoothing: Double)

    public enum DPOKind: String, Sendable, CaseIterable { case sigmoid, ipo, hinge }

    var name: String {
        switch self { case .orpo: "orpo"; case .dpo: "dpo"; case .cpo: "cpo"; case .simpo: "simpo" }
    }
    /// Log-probs per row are averaged over completion tokens (else summed).
    var averagesLogProbs: Bool {
        switch self {
        case .orpo, .simpo: true
        case let .dpo(kind, _, _): kind == .ipo
        case .cpo: false
        }
    }
    /// Weight of the NLL over chosen rows (prompt + completion), 0 for none.
    var nllWeight: Double {
        switch self {
        case .orpo: 1
        case .dpo: 0
        case let .cpo(_, alpha, _), let .simpo(_, _, alpha, _): alpha
        }
    }
    var needsReference: Bool { if case .dpo = self { true } else { false } }
}

/// Where DPO's reference log-probs come from.
public enum ReferenceModel {
    /// The policy with its adapters switched off (LoRA training).
    case adaptersOff
    /// A separate frozen model (full fine-tuning).
    case model(Transformer)
}

/// ORPO, DPO, CPO and SimPO: one forward over chosen rows then rejected rows, per-pair terms,
/// and per-token gradients handed back to the model.
public final class PreferenceObjective: Objective {
    public let loss: PreferenceLoss
    public var name: String { loss.name }
    public let requiredFields = ["chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"]
    let padId: Int32
    let reference: ReferenceModel?
    /// Reference log-probs (chosen, rejected) per example id, computed once.
    private var referenceCache: [Int: (Double, Double)] = [:]

    public init(loss: PreferenceLoss, padId: Int32 = 0, reference: ReferenceModel? = nil) throws {
        self.loss = loss
        self.padId = padId
        self.reference = reference
        if loss.needsReference && reference == nil {
            throw ObjectiveError.invalidSetting(objective: loss.name, name: "reference model", found: "none",
                                                expected: "the base with adapters off, or a separate model")
        }
    }

    public func normalisers(of examples: [Example]) -> Normalisers {
        var n = Normalisers()
        for e in examples {
            n.pairs += 1
            n.tokens += Double(max(e["chosen_input_ids"].count - 1, 0))
            n.chosenTokens += Double(e["chosen_labels"].dropFirst().filter { $0 >= 0 }.count)
            n.rejectedTokens += Double(e["rejected_labels"].dropFirst().filter { $0 >= 0 }.count)
        }
        return n
    }

    /// Chosen rows then rejected rows. Targets: completion labels, and for chosen rows every
    /// next token when the loss has an NLL term.
    struct Pass {
        let batch: SequenceBatch
        let completion: [Int32]   // targets of the log-prob terms
        let nll: [Int32]          // targets of the NLL term (all -1 without one)
        let forward: [Int32]      // union: what the head must score
        let pairs: Int
    }

    func pass(_ examples: [Example]) -> Pass {
        let rows = examples.map { $0["chosen_input_ids"] } + examples.map { $0["rejected_input_ids"] }
        let labels = examples.map { $0["chosen_labels"] } + examples.map { $0["rejected_labels"] }
        let batch = SequenceBatch(rows: rows, labels: labels, padId: padId)
        let completion = batch.targets
        var nll = [Int32](repeating: -1, count: completion.count)
        if loss.nllWeight != 0 {
            // Every next token of a chosen row, prompt included (TRL masks only padding).
            let seq = batch.tokens.seq
            for (b, row) in examples.map({ $0["chosen_input_ids"] }).enumerated() {
                for t in 0..<max(row.count - 1, 0) { nll[b * seq + t] = row[t + 1] }
            }
        }
        let forward = zip(completion, nll).map { max($0, $1) }
        return Pass(batch: batch, completion: completion, nll: nll, forward: forward, pairs: examples.count)
    }

    public func accumulate(_ examples: [Example], model: Transformer, window: Normalisers) throws -> [String: Double] {
        try validate(examples)
        let p = pass(examples)
        let references = loss.needsReference ? try referenceLogProbs(examples, model: model) : nil
        let stats = model.forwardForTraining(p.batch.tokens, targets: p.forward)
        let (metrics, gradients) = terms(p, stats: stats, references: references, window: window,
                                        vocabSize: model.config.vocabSize)
        model.backward(logProbGradients: gradients)
        return metrics
    }

    public func evaluate(_ examples: [Example], model: Transformer, window: Normalisers) throws -> [String: Double] {
        try validate(examples)
        let p = pass(examples)
        let references = loss.needsReference ? try referenceLogProbs(examples, model: model) : nil
        return terms(p, stats: model.tokenStatistics(p.batch.tokens, targets: p.forward), references: references,
                     window: window, vocabSize: model.config.vocabSize).0
    }

    /// The window shares of loss and metrics, and d loss / d log p at each position.
    func terms(_ p: Pass, stats: TokenStatistics, references: [(Double, Double)]?, window: Normalisers, vocabSize: Int)
        -> ([String: Double], [Float]) {
        let P = p.pairs, seq = p.batch.tokens.seq
        let sums = p.batch.rowSums(stats.logProbs, where: p.completion)
        let counts = p.batch.rowCounts(p.completion)
        let logitSums = p.batch.rowSums(stats.logitSums, where: p.completion)
        let average = loss.averagesLogProbs
        // Policy log-prob of each row: summed or averaged over completion tokens.
        let logps = (0..<2 * P).map { average ? sums[$0] / max(counts[$0], 1) : sums[$0] }
        let pairs = max(window.pairs, 1)
        var m: [String: Double] = [:]
        func add(_ key: String, _ value: Double) { m[key, default: 0] += value }
        var dRow = [Double](repeating: 0, count: 2 * P)   // d loss / d logps[row]
        var pairLoss = 0.0

        for i in 0..<P {
            let c = logps[i], r = logps[P + i]
            var term = 0.0, dc = 0.0, dr = 0.0, chosenReward = 0.0, rejectedReward = 0.0
            switch loss {
            case let .orpo(beta):
                // log odds = (c - r) - (log(1 - e^c) - log(1 - e^r)); term = -beta * logsigmoid(log odds)
                let logOdds = (c - r) - (log1mexp(c) - log1mexp(r))
                let ratio = logSigmoid(logOdds)
                term = -beta * ratio
                let dLogOdds = -beta * sigmoid(-logOdds)
                dc = dLogOdds / -expm1(c)     // d log odds / dc = 1 / (1 - e^c)
                dr = -dLogOdds / -expm1(r)
                chosenReward = beta * c; rejectedReward = beta * r
                add("log_odds_ratio", ratio / pairs)
                add("log_odds_chosen", logOdds / pairs)
            case let .dpo(kind, beta, smoothing):
                let (rc, rr) = references![i]
                let h = (c - r) - (rc - rr)
                let dh: Double
                switch kind {
                case .sigmoid:
                    // -(1 - ls) logsigmoid(beta h) - ls logsigmoid(-beta h)
                    term = -(1 - smoothing) * logSigmoid(beta * h) - smoothing * logSigmoid(-beta * h)
                    dh = beta * (-(1 - smoothing) * sigmoid(-beta * h) + smoothing * sigmoid(beta * h))
                case .ipo:
                    term = (h - 1 / (2 * beta)) * (h - 1 / (2 * beta))
                    dh = 2 * (h - 1 / (2 * beta))
                case .hinge:
                    term = max(0, 1 - beta * h)
                    dh = 1 - beta * h > 0 ? -beta : 0
                }
                dc = dh; dr = -dh
                chosenReward = beta * (c - rc); rejectedReward = beta * (r - rr)
            case let .cpo(beta, _, smoothing), let .simpo(beta, _, _, smoothing):
                var z = c - r
                if case let .simpo(_, gamma, _, _) = loss { z -= gamma / beta }
                term = -(1 - smoothing) * logSigmoid(beta * z) - smoothing * logSigmoid(-beta * z)
                let dz = beta * (-(1 - smoothing) * sigmoid(-beta * z) + smoothing * sigmoid(beta * z))
                dc = dz; dr = -dz
                chosenReward = beta * c; rejectedReward = beta * r
            }
            pairLoss += term / pairs
            dRow[i] = dc / pairs
            dRow[P + i] = dr / pairs
            add("rewards/chosen", chosenReward / pairs)
            add("rewards/rejected", rejectedReward / pairs)
            add("rewards/accuracies", (chosenReward > rejectedReward ? 1 : 0) / pairs)
            add("rewards/margins", (chosenReward - rejectedReward) / pairs)
            add("logps/chosen", c / pairs)
            add("logps/rejected", r / pairs)
            // Mean logit over completion positions and the vocabulary.
            add("logits/chosen", logitSums[i] / max(window.chosenTokens, 1) / Double(vocabSize))
            add("logits/rejected", logitSums[P + i] / max(window.rejectedTokens, 1) / Double(vocabSize))
        }

        // Per-position gradients: the pair terms through each row's log-prob, plus the NLL.
        var gradients = [Float](repeating: 0, count: stats.logProbs.count)
        for row in 0..<2 * P {
            let perToken = average ? dRow[row] / max(counts[row], 1) : dRow[row]
            for t in 0..<seq where p.completion[row * seq + t] >= 0 { gradients[row * seq + t] += Float(perToken) }
        }
        var nllLoss = 0.0
        if loss.nllWeight != 0 {
            let tokens = max(window.tokens, 1)
            for i in 0..<P * seq where p.nll[i] >= 0 {
                nllLoss -= Double(stats.logProbs[i]) / tokens
                gradients[i] -= Float(loss.nllWeight / tokens)
            }
            m["nll_loss"] = nllLoss
        }
        m["loss"] = loss.nllWeight * nllLoss + pairLoss
        return (m, gradients)
    }

    /// Reference (chosen, rejected) log-probs of each example, computed once and cached.
    func referenceLogProbs(_ examples: [Example], model: Transformer) throws -> [(Double, Double)] {
        let missing = examples.filter { referenceCache[$0.id] == nil }
        if !missing.isEmpty {
            let p = pass(missing)
            let stats: TokenStatistics
            switch reference! {
            case .adaptersOff:
                model.adaptersEnabled = false
                defer { model.adaptersEnabled = true }
                stats = model.tokenStatistics(p.batch.tokens, targets: p.completion)
            case let .model(referenceModel):
                stats = referenceModel.tokenStatistics(p.batch.tokens, targets: p.completion)
            }
            let sums = p.batch.rowSums(stats.logProbs, where: p.completion)
            let counts = p.batch.rowCounts(p.completion)
            let P = missing.count
            for (i, e) in missing.enumerated() {
                let c = loss.averagesLogProbs ? sums[i] / max(counts[i], 1) : sums[i]
                let r = loss.averagesLogProbs ? sums[P + i] / max(counts[P + i], 1) : sums[P + i]
                referenceCache[e.id] = (c, r)
            }
        }
        return examples.map { referenceCache[$0.id]! }
    }
}

@inline(__always) func sigmoid(_ x: Double) -> Double { x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)) }
/// log(sigmoid(x)), stable for large |x|.
@inline(__always) func logSigmoid(_ x: Double) -> Double { x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x)) }
/// log(1 - e^x) for x < 0, stable near 0 and for very negative x.
@inline(__always) func log1mexp(_ x: Double) -> Double { x > -0.693 ? log(-expm1(x)) : log1p(-exp(x)) }
