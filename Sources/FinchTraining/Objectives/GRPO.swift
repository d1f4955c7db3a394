import Foundation
import FinchKernels
import FinchTokenizers
import FinchModels
import FinchGeneration

/// The settings of GRPO, under TRL's GRPOConfig names.
public struct GRPOSettings: Sendable, Equatable {
    /// Completions sampled per prompt (`num_generations`); at least 2, so a group has a spread.
    public var numGenerations = 8
    /// Most tokens per completion, EOS included (`max_completion_length`).
    public var maxCompletionLength = 512
    /// Sampling temperature; log-probabilities are taken at it too, as TRL does.
    public var temperature: Float = 1
    /// Nucleus sampling (1: off).
    public var topP: Float = 1
    /// Top-k sampling (0: off).
    public var topK = 0
    /// Weight of the KL term to the reference (the base with adapters off); 0 skips the reference pass.
    public var beta = 0.0
    /// The importance ratio is clipped to [1 - epsilon, 1 + epsilonHigh].
    public var epsilon = 0.2
    /// Upper clip (`epsilon_high`); nil means `epsilon`.
    public var epsilonHigh: Double?
    /// Optimizer steps on each batch of completions (`num_iterations`); from the second on, the
    /// ratio is taken against the log-probabilities at generation time.
    public var numIterations = 1
    /// The KL term is multiplied by the importance ratio (TRL's `use_bias_correction_kl`, on by
    /// default: the unbiased reverse-KL gradient); the ratio's gradient counts even where it is 1.
    public var biasCorrectedKL = true
    /// How the per-token losses are averaged.
    public var loss = GRPOObjective.Loss.dapo
    /// How rewards become advantages.
    public var scaleRewards = GRPOObjective.RewardScaling.group
    /// Completions cut at `maxCompletionLength` (no EOS) take no part in the loss.
    public var maskTruncatedCompletions = false
    /// One weight per reward function (nil: all 1).
    public var rewardWeights: [Double]?
    /// Seeds the sampling (each step and row its own stream).
    public var seed: UInt64 = 42
    /// Rows decoded together at most (prompts x generations are cut into batches of this many).
    public var generationRows = 16

    /// TRL's defaults.
    public init() {}
}

/// TRL's GRPOTrainer: for each prompt, `numGenerations` completions are sampled from the
/// current policy (Finch's generator, adapters applied unmerged), scored by reward functions,
/// and turned into group-relative advantages A_i = (r_i - mean of the group) / (std + 1e-4)
/// (the std of the group, of the whole batch, or 1 with `scaleRewards`). Each completion token
/// then has the clipped policy-gradient loss
///
///   l_t = -min(rho_t A_i, clip(rho_t, 1 - eps, 1 + eps_high) A_i) + beta * rho_t * KL_t,
///   rho_t = exp(log p_t - log p_old,t),   KL_t = exp(ref_t - log p_t) - (ref_t - log p_t) - 1,
///
/// with log p at the sampling temperature (rho_t on the KL term only with `biasCorrectedKL`, TRL's
/// default), and the losses are averaged by `loss`: per
/// completion then over completions (grpo), over every completion token (bnpo, dapo), or over
/// completions x max length (dr_grpo).
///
/// Exact accumulation: completions are generated and scored for the whole window before the
/// first backward (`windowNormalisers`), and every average is taken over the window, so any
/// split into micro-batches gives the full batch's update (TRL's bnpo, grpo and dr_grpo average
/// per micro-batch). `--batch-size` counts prompts: a micro-batch holds batchSize x numGenerations
/// completions (TRL's per_device_train_batch_size counts completions).
public final class GRPOObjective: Objective, NamesItsTrainingBatches {
    /// TRL's `loss_type`.
    public enum Loss: String, Sendable, CaseIterable {
        /// Each completion's token mean, averaged over completions (the paper's).
        case grpo
        /// The mean over every completion token of the batch.
        case bnpo
        /// Dr. GRPO: the sum over tokens / (completions x max completion length).
        case drGRPO = "dr_grpo"
        /// DAPO: the mean over every completion token of the window (TRL's default).
        case dapo
    }

    /// TRL's `scale_rewards`: what the advantages are divided by.
    public enum RewardScaling: String, Sendable, CaseIterable {
        /// The std of the prompt's group.
        case group
        /// The std over the whole batch.
        case batch
        /// Nothing (Dr. GRPO).
        case none
    }

    /// One sampled completion and what is known of it.
    struct Rollout {
        let prompt: [Int32]
        let completion: [Int32]
        /// No EOS at the end: cut at the max length.
        let truncated: Bool
        /// Per reward function; NaN where it gave none.
        var rewards: [Double]
        /// Their weighted sum (NaN when every function abstained).
        var reward: Double
        /// The group's mean and std of `reward` (std NaN below two scored completions).
        var groupMean = 0.0, groupStd = Double.nan
        /// Log-probs of the completion tokens at generation (num_iterations > 1) and under the reference (beta > 0).
        var old: [Float]?, reference: [Float]?
        /// Tokens in the loss: the completion's, or none when it is masked as truncated.
        var lossTokens: Int
    }

    /// The rollouts of one window, by example id.
    struct Batch {
        var ids: [Int] = []
        var byExample: [Int: [Rollout]] = [:]
        var minLength = 0, maxLength = 0, minTerminated = 0, maxTerminated = 0
        /// Wall time of sampling, and of the reward functions.
        var generationSeconds = 0.0, rewardSeconds = 0.0
    }

    /// The settings.
    public let settings: GRPOSettings
    /// The reward functions, in the order of `settings.rewardWeights`.
    public let rewardFunctions: [RewardFunction]
    /// "grpo".
    public var name: String { "grpo" }
    /// The prompt's tokens.
    public let requiredFields = ["prompt_ids"]
    /// TRL's GRPOTrainer logs `num_tokens` (prompt and completion tokens generated so far).
    public var logsTokenCount: Bool { true }
    /// `num_iterations`.
    public var iterationsPerWindow: Int { settings.numIterations }
    /// Replaces the generator (tests feed fixed completions): the completions of `count` samples
    /// for an example, EOS included where one ended.
    public var sampleCompletions: ((_ example: Example, _ count: Int) throws -> [[Int32]])?

    let tokenizer: Tokenizer?
    let eosTokenIds: Set<Int>
    let padId: Int32
    let reference: ReferenceModel
    let ranks: Int
    var training = Batch(), evaluation = Batch()
    /// The summed window of the last micro-batch, and whether this pass generated.
    var lastWindow = Normalisers(), generated = false
    /// Per-completion clip means of the window (min of low, max of high), in one process.
    var lowClipMin = Double.nan, highClipMax = Double.nan

    /// A GRPO objective; `tokenizer` decodes completions for the reward functions, generation
    /// stops at `eosTokenIds`, `reference` is the base with adapters off (LoRA) or a frozen copy.
    public init(settings: GRPOSettings, rewardFunctions: [RewardFunction], tokenizer: Tokenizer?, eosTokenIds: Set<Int>, padId: Int32,
                reference: ReferenceModel, ranks: Int = 1) throws {
        guard settings.numGenerations >= 2 else {
            throw ObjectiveError.invalidSetting(objective: "grpo", name: "num_generations", found: "\(settings.numGenerations)",
                                                expected: "at least 2 (advantages compare the completions of one prompt)")
        }
        guard !rewardFunctions.isEmpty else {
            throw ObjectiveError.invalidSetting(objective: "grpo", name: "reward functions", found: "none",
                                                expected: "at least one --reward-function or --reward-command")
        }
        if let weights = settings.rewardWeights, weights.count != rewardFunctions.count {
            throw ObjectiveError.invalidSetting(objective: "grpo", name: "reward_weights", found: "\(weights.count) weights",
                                                expected: "one per reward function (\(rewardFunctions.count): \(rewardFunctions.map(\.name).joined(separator: ", ")))")
        }
        self.settings = settings
        self.rewardFunctions = rewardFunctions
        self.tokenizer = tokenizer; self.eosTokenIds = eosTokenIds; self.padId = padId
        self.reference = reference; self.ranks = ranks
    }

    var weights: [Double] { settings.rewardWeights ?? [Double](repeating: 1, count: rewardFunctions.count) }
    var epsilonHigh: Double { settings.epsilonHigh ?? settings.epsilon }
    /// The metric name of each reward function, made unique by its position where names repeat.
    var rewardNames: [String] {
        let names = rewardFunctions.map(\.name)
        return names.enumerated().map { i, n in names.filter { $0 == n }.count > 1 ? "\(n)_\(i + 1)" : n }
    }

    // MARK: Generation and rewards

    /// GRPO's counts are all per window; micro-batches add none of their own.
    public func normalisers(of examples: [Example]) -> Normalisers { Normalisers() }

    /// Samples and scores the completions of this rank's prompts (reused on the later
    /// iterations of a window), and returns their counts and reward sums.
    public func windowNormalisers(_ window: [Example], mine: [Example], model: Transformer, pass: WindowPass) throws -> Normalisers {
        try validate(mine)
        let ids = mine.map(\.id)
        lowClipMin = .nan; highClipMax = .nan
        switch pass {
        case let .training(step, iteration):
            generated = iteration == 0 || training.ids != ids
            if generated { training = try rollouts(mine, model: model, seed: UInt64(step)) }
            return counts(training)
        case let .evaluation(step):
            generated = true
            evaluation = try rollouts(mine, model: model, seed: ~UInt64(step))
            return counts(evaluation)
        }
    }

    /// Generation, rewards and the reference's and old policy's log-probs for `examples`.
    func rollouts(_ examples: [Example], model: Transformer, seed: UInt64) throws -> Batch {
        let start = MonotonicClock.now()
        let G = settings.numGenerations
        var completions: [[[Int32]]]
        if let sampleCompletions {
            completions = try examples.map { try sampleCompletions($0, G) }
        } else {
            completions = try generate(examples, model: model, seed: seed)
        }
        let generationSeconds = MonotonicClock.now() - start
        let eosAndPad = eosTokenIds.union([Int(padId)])
        var batch = Batch(ids: examples.map(\.id))
        var inputs: [RewardInput] = []
        for (e, group) in zip(examples, completions) {
            let prompt = e.columns["prompt"] ?? "\"\""
            let conversational = prompt.hasPrefix("[")
            for c in group {
                let text = tokenizer?.decode(c.map(Int.init), skipSpecialTokens: true) ?? ""
                inputs.append(RewardInput(prompt: prompt, completion: text, completionIds: c, columns: e.columns, conversational: conversational))
            }
        }
        let rewardStart = MonotonicClock.now()
        var perFunction: [[Double]] = []
        for function in rewardFunctions {
            let values = try function.rewards(for: inputs)
            guard values.count == inputs.count else {
                throw RewardError.commandCount(command: function.name, found: values.count, expected: inputs.count)
            }
            perFunction.append(values.map { $0 ?? .nan })
        }
        let rewardSeconds = MonotonicClock.now() - rewardStart
        var k = 0
        var lengths: [Int] = [], terminated: [Int] = []
        for (e, group) in zip(examples, completions) {
            var rollouts: [Rollout] = []
            for c in group {
                let rewards = perFunction.map { $0[k] }
                k += 1
                let scored = rewards.filter { !$0.isNaN }
                let reward = scored.isEmpty ? Double.nan : zip(rewards, weights).reduce(0) { $0 + ($1.0.isNaN ? 0 : $1.0 * $1.1) }
                let truncated = c.last.map { !eosAndPad.contains(Int($0)) } ?? true
                rollouts.append(Rollout(prompt: e["prompt_ids"], completion: c, truncated: truncated, rewards: rewards, reward: reward,
                                        lossTokens: settings.maskTruncatedCompletions && truncated ? 0 : c.count))
                lengths.append(c.count)
                if !truncated { terminated.append(c.count) }
            }
            let scored = rollouts.map(\.reward).filter { !$0.isNaN }
            let mean = scored.isEmpty ? Double.nan : scored.reduce(0, +) / Double(scored.count)
            let std = scored.count > 1 ? (scored.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(scored.count - 1)).squareRoot() : Double.nan
            for i in rollouts.indices { rollouts[i].groupMean = mean; rollouts[i].groupStd = std }
            batch.byExample[e.id] = rollouts
        }
        batch.minLength = lengths.min() ?? 0; batch.maxLength = lengths.max() ?? 0
        batch.minTerminated = terminated.min() ?? 0; batch.maxTerminated = terminated.max() ?? 0
        if settings.numIterations > 1 || settings.beta != 0 { try scoreLogProbs(&batch, model: model) }
        batch.generationSeconds = generationSeconds
        batch.rewardSeconds = rewardSeconds
        return batch
    }

    /// Samples `numGenerations` completions of each prompt with the current policy.
    func generate(_ examples: [Example], model: Transformer, seed: UInt64) throws -> [[[Int32]]] {
        let G = settings.numGenerations
        let prompts = examples.flatMap { e in [[Int]](repeating: e["prompt_ids"].map(Int.init), count: G) }
        // Completion g of an example samples from its own stream (step, example, g), so what a
        // prompt gets does not depend on the batch, the split into ranks, or a resume.
        let seeds = examples.flatMap { e in
            (0..<G).map { g in settings.seed ^ (seed &* 0x9E37_79B9_7F4A_7C15) ^ (UInt64(e.id) &* 0xD1B5_4A32_D192_ED03) &+ UInt64(g) }
        }
        let generator = Generator(model: model)
        let sampling = SamplingSettings(temperature: settings.temperature, topK: settings.topK, topP: settings.topP)
        var out: [[Int32]] = []
        let rows = max(settings.generationRows, 1)
        for start in stride(from: 0, to: prompts.count, by: rows) {
            let range = start..<min(start + rows, prompts.count)
            let results = generator.generate(prompts: Array(prompts[range]), sampling: sampling,
                                             stop: StopRules(maxNewTokens: settings.maxCompletionLength, eosTokenIds: eosTokenIds),
                                             seeds: Array(seeds[range]))
            out += results.map { $0.tokens.map(Int32.init) }
        }
        return stride(from: 0, to: out.count, by: G).map { Array(out[$0..<$0 + G]) }
    }

    /// The rows (prompt + completion) of `rollouts` and labels on their completion tokens (none on a masked one).
    func sequenceBatch(_ rollouts: [Rollout]) -> SequenceBatch {
        SequenceBatch(rows: rollouts.map { $0.prompt + $0.completion },
                      labels: rollouts.map { r in
                          [Int32](repeating: -100, count: r.prompt.count) + (r.lossTokens == 0 ? [Int32](repeating: -100, count: r.completion.count) : r.completion)
                      }, padId: padId)
    }

    /// Each completion token's log-prob at position order within a row of `batch`.
    func completionValues(_ values: [Float], batch: SequenceBatch, row: Int) -> [Float] {
        let seq = batch.tokens.seq
        return (0..<seq).filter { batch.targets[row * seq + $0] >= 0 }.map { values[row * seq + $0] }
    }

    /// The old policy's (at generation) and the reference's log-probs of each completion token.
    func scoreLogProbs(_ batch: inout Batch, model: Transformer) throws {
        model.logitTemperature = settings.temperature
        defer { model.logitTemperature = 1 }
        for id in batch.ids {
            guard var rollouts = batch.byExample[id] else { continue }
            for start in stride(from: 0, to: rollouts.count, by: 8) {
                let range = start..<min(start + 8, rollouts.count)
                let sb = sequenceBatch(Array(rollouts[range]))
                if settings.numIterations > 1 {
                    let stats = model.tokenStatistics(sb.tokens, targets: sb.targets)
                    for (row, i) in range.enumerated() { rollouts[i].old = completionValues(stats.logProbs, batch: sb, row: row) }
                }
                if settings.beta != 0 {
                    let stats: TokenStatistics
                    switch reference {
                    case .adaptersOff:
                        model.adaptersEnabled = false
                        stats = model.tokenStatistics(sb.tokens, targets: sb.targets)
                        model.adaptersEnabled = true
                    case let .model(frozen):
                        frozen.logitTemperature = settings.temperature
                        stats = frozen.tokenStatistics(sb.tokens, targets: sb.targets)
                        frozen.logitTemperature = 1
                    }
                    for (row, i) in range.enumerated() { rollouts[i].reference = completionValues(stats.logProbs, batch: sb, row: row) }
                }
            }
            batch.byExample[id] = rollouts
        }
    }

    /// The window's counts and sums (every key always present, so ranks sum alike).
    func counts(_ batch: Batch) -> Normalisers {
        var n: [String: Double] = ["sequences": 0, "loss_tokens": 0, "reward_sum": 0, "reward_squares": 0, "reward_count": 0,
                                   "zero_std": 0, "length_sum": 0, "clipped": 0, "terminated": 0, "terminated_length_sum": 0,
                                   "prompt_tokens": 0, "generation_seconds": batch.generationSeconds, "reward_seconds": batch.rewardSeconds]
        for f in rewardFunctions.indices { for key in ["sum", "squares", "count"] { n["reward_\(key)/\(f)"] = 0 } }
        for id in batch.ids {
            for r in batch.byExample[id] ?? [] {
                n["sequences"]! += 1
                n["loss_tokens"]! += Double(r.lossTokens)
                n["length_sum"]! += Double(r.completion.count)
                n["prompt_tokens"]! += Double(r.prompt.count)
                if r.truncated { n["clipped"]! += 1 } else { n["terminated"]! += 1; n["terminated_length_sum"]! += Double(r.completion.count) }
                if !r.reward.isNaN { n["reward_sum"]! += r.reward; n["reward_squares"]! += r.reward * r.reward; n["reward_count"]! += 1 }
                if r.groupStd.isFinite && abs(r.groupStd) <= 1e-8 { n["zero_std"]! += 1 }
                for (f, value) in r.rewards.enumerated() where !value.isNaN {
                    n["reward_sum/\(f)"]! += value; n["reward_squares/\(f)"]! += value * value; n["reward_count/\(f)"]! += 1
                }
            }
        }
        return Normalisers(named: n)
    }

    /// The unbiased std of values given by their sum, sum of squares and count (NaN below 2).
    static func std(sum: Double, squares: Double, count: Double) -> Double {
        guard count > 1 else { return .nan }
        return (max(squares - sum * sum / count, 0) / (count - 1)).squareRoot()
    }

    /// A completion's advantage in `window`.
    func advantage(_ r: Rollout, window: Normalisers) -> Double {
        guard !r.reward.isNaN else { return 0 }
        let centred = r.reward - r.groupMean
        let scale: Double
        switch settings.scaleRewards {
        case .none: scale = 1
        case .group: scale = r.groupStd + 1e-4
        case .batch: scale = Self.std(sum: window["reward_sum"], squares: window["reward_squares"], count: window["reward_count"]) + 1e-4
        }
        let a = centred / scale
        return a.isFinite ? a : 0
    }

    // MARK: Loss

    /// The forward `accumulate` runs: the window's completions of these prompts, sampled already
    /// by `windowNormalisers` (the trainer counts a mixture of experts' router choices after it).
    package func trainingBatches(_ examples: [Example], model: Transformer) -> [TokenBatch] {
        let rollouts = examples.flatMap { training.byExample[$0.id] ?? [] }
        return rollouts.isEmpty ? [] : [sequenceBatch(rollouts).tokens]
    }

    /// Forward and backward of a micro-batch's completions, as its share of the window.
    public func accumulate(_ examples: [Example], model: Transformer, window: Normalisers) throws -> [String: Double] {
        try terms(examples, model: model, window: window, from: training, backward: true)
    }

    /// The loss and metrics of the evaluation completions, without gradients.
    public func evaluate(_ examples: [Example], model: Transformer, window: Normalisers) throws -> [String: Double] {
        try terms(examples, model: model, window: window, from: evaluation, backward: false)
    }

    /// The loss and metric shares of a micro-batch's completions; with `backward`, their gradients.
    func terms(_ examples: [Example], model: Transformer, window: Normalisers, from batch: Batch, backward: Bool) throws -> [String: Double] {
        try validate(examples)
        lastWindow = window
        let rollouts = try examples.flatMap { e -> [Rollout] in
            guard let r = batch.byExample[e.id] else {
                throw ObjectiveError.invalidSetting(objective: name, name: "example \(e.id)", found: "no completions", expected: "completions sampled for the window")
            }
            return r
        }
        guard !rollouts.isEmpty else { return [:] }
        let sb = sequenceBatch(rollouts)
        model.logitTemperature = settings.temperature
        defer { model.logitTemperature = 1 }
        let stats = backward ? model.forwardForTraining(sb.tokens, targets: sb.targets) : model.tokenStatistics(sb.tokens, targets: sb.targets)
        let seq = sb.tokens.seq
        let S = max(window["sequences"], 1), N = max(window["loss_tokens"], 1)
        let epsLow = settings.epsilon, epsHigh = epsilonHigh, beta = settings.beta
        var gradients = [Float](repeating: 0, count: stats.logProbs.count)
        var m: [String: Double] = [:]
        func add(_ key: String, _ value: Double) { m[key, default: 0] += value }
        for (row, r) in rollouts.enumerated() {
            let a = advantage(r, window: window)
            let weight: Double
            switch settings.loss {
            case .grpo: weight = 1 / (S * Double(max(r.lossTokens, 1)))
            case .bnpo, .dapo: weight = 1 / N
            case .drGRPO: weight = 1 / (S * Double(settings.maxCompletionLength))
            }
            var j = 0, low = 0.0, high = 0.0
            for t in 0..<seq where sb.targets[row * seq + t] >= 0 {
                let p = row * seq + t
                let logp = Double(stats.logProbs[p])
                let old = r.old.map { Double($0[j]) } ?? logp
                let ratio = exp(logp - old)
                let clipped = min(max(ratio, 1 - epsLow), 1 + epsHigh)
                let isLow = ratio < 1 - epsLow && a < 0, isHigh = ratio > 1 + epsHigh && a > 0
                var loss = -min(ratio * a, clipped * a)
                // d(-min(rho A, clip(rho) A)) / d log p: -A rho where the unclipped term is the one taken.
                var slope = isLow || isHigh ? 0 : -a * ratio
                if beta != 0, let reference = r.reference {
                    let delta = Double(reference[j]) - logp
                    var kl = exp(delta) - delta - 1
                    var klSlope = 1 - exp(delta)
                    if settings.biasCorrectedKL {
                        // KL_t * rho_t, rho_t differentiable: d/d log p = rho_t (KL_t + 1 - exp(delta)).
                        klSlope = ratio * (kl + klSlope)
                        kl *= ratio
                    }
                    loss += beta * kl
                    slope += beta * klSlope
                    add("kl", kl / N)
                }
                add("loss", weight * loss)
                gradients[p] = Float(weight * slope)
                add("entropy", Double(stats.entropies[p]) / N)
                add("clip_ratio/low_mean", isLow ? 1 / N : 0)
                add("clip_ratio/high_mean", isHigh ? 1 / N : 0)
                add("clip_ratio/region_mean", isLow || isHigh ? 1 / N : 0)
                if isLow { low += 1 }
                if isHigh { high += 1 }
                j += 1
            }
            if j > 0 {
                lowClipMin = lowClipMin.isNaN ? low / Double(j) : min(lowClipMin, low / Double(j))
                highClipMax = highClipMax.isNaN ? high / Double(j) : max(highClipMax, high / Double(j))
            }
        }
        if backward { model.backward(logProbGradients: gradients) }
        return m
    }

    // MARK: Window metrics

    /// TRL's generation and reward metrics of the window (on the steps that generated) and the
    /// per-completion clip extremes; values over all ranks are shared out so their sum is the value.
    public func finishWindow(_ pass: WindowPass) -> [String: Double] {
        let w = lastWindow, share = { (value: Double) -> Double in
            if case .evaluation = pass { return value }
            return value / Double(self.ranks)
        }
        var m: [String: Double] = [:]
        // Extremes over the window are known in one process only.
        if ranks == 1 {
            if !lowClipMin.isNaN { m["clip_ratio/low_min"] = lowClipMin }
            if !highClipMax.isNaN { m["clip_ratio/high_max"] = highClipMax }
        }
        guard generated else { return m }
        let batch: Batch
        if case .evaluation = pass { batch = evaluation } else { batch = training }
        let S = max(w["sequences"], 1)
        m["reward"] = share(w["reward_count"] > 0 ? w["reward_sum"] / w["reward_count"] : .nan)
        m["reward_std"] = share(Self.std(sum: w["reward_sum"], squares: w["reward_squares"], count: w["reward_count"]))
        let batchStd = Self.std(sum: w["reward_sum"], squares: w["reward_squares"], count: w["reward_count"])
        m["frac_reward_zero_std"] = share(settings.scaleRewards == .batch ? (abs(batchStd) <= 1e-8 ? 1 : 0) : w["zero_std"] / S)
        for (f, name) in rewardNames.enumerated() {
            let count = w["reward_count/\(f)"]
            m["rewards/\(name)/mean"] = share(count > 0 ? w["reward_sum/\(f)"] / count : .nan)
            m["rewards/\(name)/std"] = share(Self.std(sum: w["reward_sum/\(f)"], squares: w["reward_squares/\(f)"], count: count))
        }
        m["completions/mean_length"] = share(w["length_sum"] / S)
        m["completions/clipped_ratio"] = share(w["clipped"] / S)
        m["completions/mean_terminated_length"] = share(w["terminated"] > 0 ? w["terminated_length_sum"] / w["terminated"] : 0)
        if ranks == 1 {
            m["completions/min_length"] = Double(batch.minLength)
            m["completions/max_length"] = Double(batch.maxLength)
            m["completions/min_terminated_length"] = Double(batch.minTerminated)
            m["completions/max_terminated_length"] = Double(batch.maxTerminated)
        }
        m["time/generation"] = share(w["generation_seconds"])
        m["time/rewards"] = share(w["reward_seconds"])
        return m.filter { !$0.value.isNaN }
    }

    /// The prompt and completion tokens generated for the window on a step that generated; 0 on
    /// the later iterations, which generate nothing.
    public func tokenCount(of window: [Example]) -> Int {
        generated ? Int(lastWindow["prompt_tokens"] + lastWindow["length_sum"]) : 0
    }
}
