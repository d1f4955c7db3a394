import Foundation
import FinchKernels
import FinchIO
import FinchTokenizers
import FinchModels
import FinchGeneration
import FinchDistributed

/// The preference losses Finch trains with, following TRL's trainers (see reference/TRL_SEMANTICS.md).
public enum PreferenceLoss: Sendable, Equatable {
    /// ORPOTrainer: NLL of the chosen rows - beta * mean(logsigmoid(log odds ratio)), average log-probs.
    case orpo(beta: Double)
    /// DPOTrainer against a frozen reference; `kind` sigmoid, ipo, hinge or robust (label-smoothed).
    case dpo(kind: DPOKind, beta: Double, labelSmoothing: Double)
    /// CPOTrainer, loss_type sigmoid: summed log-probs, plus alpha * NLL of the chosen rows.
    case cpo(beta: Double, alpha: Double, labelSmoothing: Double)
    /// CPOTrainer, loss_type simpo: average log-probs with margin gamma, plus alpha * NLL.
    case simpo(beta: Double, gamma: Double, alpha: Double, labelSmoothing: Double)

    /// DPO's `loss_type` as TRL names it: sigmoid (the paper's), ipo, hinge, or robust (label smoothing).
    public enum DPOKind: String, Sendable, CaseIterable { case sigmoid, ipo, hinge, robust }

    var name: String {
        switch self { case .orpo: "orpo"; case .dpo: "dpo"; case .cpo: "cpo"; case .simpo: "simpo" }
    }
    /// Log-probs per row are averaged over completion tokens (else summed; DPO's ipo divides
    /// its log-ratios by the token counts but logs sums).
    var averagesLogProbs: Bool {
        switch self {
        case .orpo, .simpo: true
        case .dpo, .cpo: false
        }
    }
    /// ORPO's NLL covers prompt and completion of the chosen rows; CPO's the completion only.
    var nllCoversPrompt: Bool { if case .orpo = self { true } else { false } }
    /// Weight of the NLL over chosen rows, 0 for none.
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
public final class PreferenceObjective: Objective, NamesItsTrainingBatches {
    /// The loss and its hyper-parameters.
    public let loss: PreferenceLoss
    /// "orpo", "dpo", "cpo" or "simpo", from `loss`.
    public var name: String { loss.name }
    /// Chosen and rejected ids and labels, each row holding the prompt then its answer.
    public let requiredFields = ["chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"]
    let padId: Int32
    let reference: ReferenceModel?
    /// Reference log-probs (chosen, rejected) per example id, computed once.
    private var referenceCache: [Int: (Double, Double)] = [:]
    /// Run each pair as one row that holds the prompt once (`SharedPrompt`); false runs the
    /// chosen and rejected rows apart (tests compare the two).
    package var sharesPrompt = true

    /// `reference` is required for DPO (an `ObjectiveError` without it) and unused by the others.
    public init(loss: PreferenceLoss, padId: Int32 = 0, reference: ReferenceModel? = nil) throws {
        self.loss = loss
        self.padId = padId
        self.reference = reference
        if loss.needsReference && reference == nil {
            throw ObjectiveError.invalidSetting(objective: loss.name, name: "reference model", found: "none",
                                                expected: "the base with adapters off, or a separate model")
        }
    }

    /// Pairs, chosen NLL tokens, chosen and rejected completion tokens, and padded positions.
    public func normalisers(of examples: [Example]) -> Normalisers {
        var n = Normalisers()
        for e in examples {
            n.pairs += 1
            n.tokens += Double(max(e["chosen_input_ids"].count - 1, 0))
            n.chosenTokens += Double(e["chosen_labels"].dropFirst().filter { $0 >= 0 }.count)
            n.rejectedTokens += Double(e["rejected_labels"].dropFirst().filter { $0 >= 0 }.count)
        }
        // ORPO and CPO log the mean logit over every position of the padded batch (ORPO leaves out
        // the last): the count depends on this micro-batch's padded length.
        let padded = examples.map { max($0["chosen_input_ids"].count, $0["rejected_input_ids"].count) }.max() ?? 0
        n.positions = Double(examples.count * (loss.nllCoversPrompt ? max(padded - 1, 0) : padded))
        return n
    }

    /// True for DPO only, as TRL's DPOTrainer is the one that logs `num_tokens`.
    public var logsTokenCount: Bool { if case .dpo = loss { true } else { false } }

    /// Chosen rows then rejected rows. Targets: completion labels, and for chosen rows every
    /// next token when the loss has an NLL term.
    struct Pass {
        let batch: SequenceBatch
        let completion: [Int32]   // targets of the log-prob terms
        let nll: [Int32]          // targets of the NLL term (all -1 without one)
        let forward: [Int32]      // union: what the head must score
        let pairs: Int
        /// The pairs as rows holding their prompt once, when they share one and the model allows.
        let shared: SharedPrompt?

        /// Per-position statistics of `targets` (of the two-row layout) from a forward over
        /// `run`'s tokens (the shared layout where there is one), in the two-row layout.
        func statistics(_ targets: [Int32], _ run: (TokenBatch, [Int32]) -> TokenStatistics) -> TokenStatistics {
            guard let shared else { return run(batch.tokens, targets) }
            return shared.unshare(run(shared.tokens, shared.targets(targets)))
        }

        /// Gradients per position of the two-row layout, in the layout the forward ran.
        func modelGradients(_ gradients: [Float]) -> [Float] { shared?.share(gradients) ?? gradients }
    }

    func pass(_ examples: [Example], model: Transformer) -> Pass {
        let rows = examples.map { $0["chosen_input_ids"] } + examples.map { $0["rejected_input_ids"] }
        let labels = examples.map { $0["chosen_labels"] } + examples.map { $0["rejected_labels"] }
        let batch = SequenceBatch(rows: rows, labels: labels, padId: padId)
        let completion = batch.targets
        var nll = [Int32](repeating: -1, count: completion.count)
        let seq = batch.tokens.seq
        if loss.nllWeight != 0 && loss.nllCoversPrompt {
            // ORPO: every next token of a chosen row, prompt included (TRL masks only padding).
            for (b, row) in examples.map({ $0["chosen_input_ids"] }).enumerated() {
                for t in 0..<max(row.count - 1, 0) { nll[b * seq + t] = row[t + 1] }
            }
        } else if loss.nllWeight != 0 {
            // CPO: the chosen completion tokens.
            for i in 0..<examples.count * seq { nll[i] = completion[i] }
        }
        let forward = zip(completion, nll).map { max($0, $1) }
        // A sliding window counts keys by their place in the row, which the shared layout changes.
        // So does a load-balancing loss, which counts each row's prompt tokens as transformers does.
        let shares = sharesPrompt && model.config.slidingLayers.isEmpty && !model.trainsRouterBalance
        let shared = shares ? SharedPrompt(batch.tokens, pairs: examples.count, targets: forward) : nil
        return Pass(batch: batch, completion: completion, nll: nll, forward: forward, pairs: examples.count, shared: shared)
    }

    /// The forward `accumulate` runs: chosen then rejected rows (or their shared-prompt layout).
    package func trainingBatches(_ examples: [Example], model: Transformer) -> [TokenBatch] {
        let p = pass(examples, model: model)
        return [p.shared?.tokens ?? p.batch.tokens]
    }

    /// One forward over chosen then rejected rows, the per-pair terms, and their backward.
    public func accumulate(_ examples: [Example], model: Transformer, window: Normalisers) throws -> [String: Double] {
        try validate(examples)
        let p = pass(examples, model: model)
        let references = loss.needsReference ? try referenceLogProbs(examples, model: model) : nil
        let stats = p.statistics(p.forward) { model.forwardForTraining($0, targets: $1) }
        let (metrics, gradients) = terms(p, stats: stats, references: references, window: window,
                                        vocabSize: model.config.vocabSize)
        model.backward(logProbGradients: p.modelGradients(gradients))
        return metrics
    }

    /// The same terms and metrics as `accumulate`, without gradients.
    public func evaluate(_ examples: [Example], model: Transformer, window: Normalisers) throws -> [String: Double] {
        try validate(examples)
        let p = pass(examples, model: model)
        let references = loss.needsReference ? try referenceLogProbs(examples, model: model) : nil
        return terms(p, stats: p.statistics(p.forward) { model.tokenStatistics($0, targets: $1) }, references: references,
                     window: window, vocabSize: model.config.vocabSize).0
    }

    /// The window shares of loss and metrics, and d loss / d log p at each position.
    func terms(_ p: Pass, stats: TokenStatistics, references: [(Double, Double)]?, window: Normalisers, vocabSize: Int)
        -> ([String: Double], [Float]) {
        let P = p.pairs, seq = p.batch.tokens.seq
        let sums = p.batch.rowSums(stats.logProbs, where: p.completion)
        let counts = p.batch.rowCounts(p.completion)
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
                var h = (c - rc) - (r - rr)
                // ipo compares length-normalised log-ratios: d h / d c = 1 / n_c.
                var scaleC = 1.0, scaleR = 1.0
                if kind == .ipo {
                    scaleC = 1 / max(counts[i], 1); scaleR = 1 / max(counts[P + i], 1)
                    h = (c - rc) * scaleC - (r - rr) * scaleR
                }
                let dh: Double
                switch kind {
                case .sigmoid:
                    term = -logSigmoid(beta * h)
                    dh = -beta * sigmoid(-beta * h)
                case .robust:
                    // (-(1 - e) logsigmoid(beta h) + e logsigmoid(-beta h)) / (1 - 2e)
                    term = (-(1 - smoothing) * logSigmoid(beta * h) + smoothing * logSigmoid(-beta * h)) / (1 - 2 * smoothing)
                    dh = beta * (-(1 - smoothing) * sigmoid(-beta * h) - smoothing * sigmoid(beta * h)) / (1 - 2 * smoothing)
                case .ipo:
                    term = (h - 1 / (2 * beta)) * (h - 1 / (2 * beta))
                    dh = 2 * (h - 1 / (2 * beta))
                case .hinge:
                    term = max(0, 1 - beta * h)
                    dh = 1 - beta * h > 0 ? -beta : 0
                }
                dc = dh * scaleC; dr = -dh * scaleR
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
        }
        logitMetrics(p, stats: stats, window: window, vocabSize: vocabSize, into: &m)

        // Per-position gradients: the pair terms through each row's log-prob, plus the NLL.
        var gradients = [Float](repeating: 0, count: stats.logProbs.count)
        for row in 0..<2 * P {
            let perToken = average ? dRow[row] / max(counts[row], 1) : dRow[row]
            for t in 0..<seq where p.completion[row * seq + t] >= 0 { gradients[row * seq + t] += Float(perToken) }
        }
        var nllLoss = 0.0
        if loss.nllWeight != 0 {
            let tokens = max(loss.nllCoversPrompt ? window.tokens : window.chosenTokens, 1)
            for i in 0..<P * seq where p.nll[i] >= 0 {
                nllLoss -= Double(stats.logProbs[i]) / tokens
                gradients[i] -= Float(loss.nllWeight / tokens)
            }
            m["nll_loss"] = nllLoss
        } else if case .dpo = loss {} else {
            m["nll_loss"] = 0   // CPOTrainer logs it even when cpo_alpha is 0
        }
        m["loss"] = loss.nllWeight * nllLoss + pairLoss
        return (m, gradients)
    }

    /// TRL's logit, entropy and accuracy metrics: ORPO and CPO average the logits over every
    /// padded position (ORPO without the last), DPO over completion positions.
    func logitMetrics(_ p: Pass, stats: TokenStatistics, window: Normalisers, vocabSize: Int, into m: inout [String: Double]) {
        let P = p.pairs, seq = p.batch.tokens.seq, V = Double(vocabSize)
        var chosen = 0.0, rejected = 0.0
        if case .dpo = loss {
            var entropy = 0.0, correct = 0.0
            for i in 0..<2 * P * seq where p.completion[i] >= 0 {
                if i < P * seq { chosen += Double(stats.logitSums[i]) / V; correct += Double(stats.correct[i]) }
                else { rejected += Double(stats.logitSums[i]) / V }
                entropy += Double(stats.entropies[i])
            }
            m["logits/chosen"] = chosen / max(window.chosenTokens, 1)
            m["logits/rejected"] = rejected / max(window.rejectedTokens, 1)
            m["entropy"] = entropy / max(window.chosenTokens + window.rejectedTokens, 1)
            m["mean_token_accuracy"] = correct / max(window.chosenTokens, 1)
            return
        }
        let last = loss.nllCoversPrompt ? seq - 1 : seq
        for b in 0..<P { for t in 0..<last {
            chosen += Double(stats.logitSums[b * seq + t])
            rejected += Double(stats.logitSums[(P + b) * seq + t])
        } }
        m["logits/chosen"] = chosen / V / max(window.positions, 1)
        m["logits/rejected"] = rejected / V / max(window.positions, 1)
    }

    /// Reference (chosen, rejected) log-probs of each example, computed once and cached.
    func referenceLogProbs(_ examples: [Example], model: Transformer) throws -> [(Double, Double)] {
        let missing = examples.filter { referenceCache[$0.id] == nil }
        if !missing.isEmpty {
            let p = pass(missing, model: model)
            let stats: TokenStatistics
            switch reference! {
            case .adaptersOff:
                model.adaptersEnabled = false
                defer { model.adaptersEnabled = true }
                stats = p.statistics(p.completion) { model.tokenStatistics($0, targets: $1) }
            case let .model(referenceModel):
                stats = p.statistics(p.completion) { referenceModel.tokenStatistics($0, targets: $1) }
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
