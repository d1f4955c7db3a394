import Foundation
import FinchKernels
import FinchIO
import FinchTokenizers
import FinchModels
import FinchGeneration
import FinchDistributed

/// The knobs of a training run (flags and YAML keys of `finch train` map onto these).
public struct TrainerSettings: Sendable, Codable, Equatable {
    /// Examples per micro-batch on each rank (pairs for preference methods); an optimizer step sees
    /// batchSize x gradAccum x ranks examples. `--batch-size`, default 2.
    public var batchSize = 2
    /// Micro-batches per optimizer step, accumulated exactly (one normaliser over the window). `--grad-accum`.
    public var gradAccum = 1
    /// Passes over the training data; ignored when `maxSteps` > 0.
    public var epochs = 1
    /// Stops after this many optimizer steps when > 0 (wins over `epochs`).
    public var maxSteps = 0
    /// Peak learning rate, reached after `warmupSteps` (`--lr`).
    public var learningRate: Float = 2e-4
    /// AdamW (torch defaults for betas and epsilon) or plain SGD.
    public var optimizer: OptimizerKind = .adamw
    /// Decoupled weight decay (p -= lr * wd * p); biases and norm weights are never decayed.
    public var weightDecay: Float = 0
    /// Shape of the learning rate after warm-up, as transformers' `lr_scheduler_type`.
    public var scheduler: LRScheduleKind = .linear
    /// Optimizer steps over which the rate rises linearly from 0 to `learningRate`.
    public var warmupSteps = 0
    /// 0 turns clipping off.
    public var maxGradNorm: Float = 1
    /// Seeds LoRA initialisation, the per-epoch shuffle and dropout.
    public var seed: UInt64 = 42
    /// Writes a metrics.jsonl line every N steps (and at the last step); 0 writes none.
    public var loggingSteps = 1
    /// Evaluates every N steps and at the last; 0 evaluates at the end only. A baseline at step 0 runs either way.
    public var evalSteps = 0
    /// Writes a resumable checkpoint every N steps, except the last (the result is saved then); 0 writes none.
    public var saveSteps = 0
    /// Sorts each megabatch of 50 windows by length so windows hold similar lengths (less padding).
    public var groupByLength = true

    /// Finch's defaults, as listed in `finch train --help`.
    public init() {}
}

/// What a step with a NaN or infinite loss or gradient does (`--nan-policy`).
public enum NaNPolicy: String, Sendable, Codable, CaseIterable {
    /// Stop before updating, naming the step (the default): checkpoints stay intact.
    case stop
    /// Leave the parameters and optimizer as they were, move on to the next window, and count the
    /// step as skipped (as a mixed-precision loss scaler skips an overflowing step); stop after
    /// `Trainer.maxConsecutiveSkips` skipped steps in a row.
    case skipStep = "skip-step"
}

/// Why training stopped.
public enum TrainingError: Error, CustomStringConvertible, Equatable {
    /// The loss or the gradient norm of a step was NaN or infinite (a diverging run).
    case nonFinite(step: Int, loss: Double?, gradNorm: Double, learningRate: Double)
    /// The model predicts the uniform distribution (loss ln(vocab)) with an exactly zero gradient.
    case collapsed(step: Int, loss: Double, learningRate: Double)

    public var description: String {
        switch self {
        case let .nonFinite(step, loss, gradNorm, learningRate):
            let what = loss.map { $0.isFinite ? "gradient norm \(gradNorm)" : "loss \($0) (gradient norm \(gradNorm))" } ?? "gradient norm \(gradNorm)"
            return "step \(step): \(what) is not finite at learning rate \(learningRate): training diverged and stopped before "
                + "updating; checkpoints written before this step are intact (try a lower --lr or --max-grad-norm)"
        case let .collapsed(step, loss, learningRate):
            return String(format: "step %d: the model collapsed to a uniform distribution (loss %.4f = ln(vocab), gradient exactly 0) ", step, loss)
                + "at learning rate \(learningRate): training stopped before updating; checkpoints written before this step are intact (try a lower --lr)"
        }
    }
}

/// Where a run stands: saved in each checkpoint and broadcast from rank 0 on resume.
public struct TrainerState: Sendable, Codable, Equatable {
    /// Optimizer steps completed (skipped steps included).
    public var step = 0
    /// Epochs completed; the current epoch's index.
    public var epoch = 0
    /// Next window within `epoch` (windows are global: every rank's share of one optimizer step).
    public var windowInEpoch = 0
    /// The model's dropout generator.
    public var random: [UInt64] = []
    /// Real (unpadded) tokens trained on so far, TRL's `num_tokens`.
    public var numTokens = 0
}

/// What one optimizer step did, under TRL's metric names.
public struct StepLog: Sendable {
    /// The optimizer step just completed (1-based).
    public var step: Int
    /// Fractional epoch after this step (2.5 = half-way through the third epoch).
    public var epoch: Double
    /// Under TRL's names (`loss`, `learning_rate`, `grad_norm`, ...); summed over ranks at rank 0.
    public var metrics: [String: Double]
    /// Wall time of the step, in seconds.
    public var seconds = 0.0
    /// Of `seconds`, the part spent waiting in collectives (0 for a single process).
    public var collectiveSeconds = 0.0
}

/// Runs windows of micro-batches through an objective and applies optimizer updates.
///
/// Data parallel (`group.size` ranks): a window holds `ranks x batchSize x gradAccum` examples,
/// split into micro-batches of `ranks x batchSize` exactly as one process with that batch size
/// would split it; rank r trains on slice r of each. The window's normalisers are summed over the
/// ranks before the first backward and the gradients once before clipping, so every rank applies
/// the update one process would apply to the whole window.
public final class Trainer {
    /// The model being trained; its parameters are updated in place.
    public let model: Transformer
    /// The loss: SFT or a preference method.
    public let objective: Objective
    /// The settings the trainer was built with; fixed for its lifetime.
    public let settings: TrainerSettings
    /// What a non-finite step does.
    public var nanPolicy = NaNPolicy.stop
    /// With `.skipStep`: a run that skips this many steps in a row has diverged for good and stops.
    public static let maxConsecutiveSkips = 10
    private var consecutiveSkips = 0
    /// Steps skipped so far in this process (`.skipStep`).
    public private(set) var skippedSteps = 0
    /// Tokenized training examples; every rank holds all of them and trains on its slice.
    public let train: [Example]
    /// Tokenized evaluation examples; empty means no evaluation.
    public let eval: [Example]
    /// Holds the moments and step count that checkpoints save.
    public let optimizer: Optimizer
    /// Learning rate per step over `totalSteps`.
    public let schedule: LRSchedule
    /// Position in the run; `step()` advances it, a checkpoint restores it.
    public var state = TrainerState()
    /// The ranks of a data parallel job; `.single` in one process.
    public let group: ProcessGroup
    package let parameters: ParameterSet

    /// Throws `ObjectiveError` for a frozen model, no training examples, a non-positive batch size or
    /// grad accum, or examples missing the objective's fields.
    public init(model: Transformer, objective: Objective, train: [Example], eval: [Example] = [], settings: TrainerSettings,
                group: ProcessGroup = .single) throws {
        guard let parameters = model.parameters else {
            throw ObjectiveError.invalidSetting(objective: objective.name, name: "model", found: "frozen", expected: "LoRA or full fine-tuning")
        }
        guard !train.isEmpty else {
            throw ObjectiveError.invalidSetting(objective: objective.name, name: "training data", found: "no examples", expected: "at least one")
        }
        guard settings.batchSize > 0, settings.gradAccum > 0 else {
            throw ObjectiveError.invalidSetting(objective: objective.name, name: "batch size x grad accum",
                                                found: "\(settings.batchSize) x \(settings.gradAccum)", expected: "positive numbers")
        }
        try objective.validate(train)
        try objective.validate(eval)
        self.model = model
        self.objective = objective
        self.settings = settings
        self.train = train
        // Objectives cache per-example figures by id (DPO's and KTO's reference log-probs): an
        // evaluation set numbered from 0 like the training set would read the training rows'.
        let trainIDs = Set(train.map(\.id))
        self.eval = eval.contains { trainIDs.contains($0.id) }
            ? eval.enumerated().map { Example(id: (trainIDs.max() ?? -1) + 1 + $0.offset, fields: $0.element.fields) } : eval
        self.parameters = parameters
        self.group = group
        optimizer = Optimizer(kind: settings.optimizer, parameters: parameters, weightDecay: settings.weightDecay)
        let window = group.size * settings.batchSize * settings.gradAccum
        let windowsPerEpoch = (train.count + window - 1) / window
        let total = settings.maxSteps > 0 ? settings.maxSteps : settings.epochs * windowsPerEpoch * max(objective.iterationsPerWindow, 1)
        schedule = LRSchedule(kind: settings.scheduler, peak: settings.learningRate, warmupSteps: settings.warmupSteps, totalSteps: total)
    }

    /// Examples per optimizer step, over all ranks.
    public var windowSize: Int { group.size * settings.batchSize * settings.gradAccum }
    /// Optimizer steps per epoch; the last window may be partial.
    public var windowsPerEpoch: Int { (train.count + windowSize - 1) / windowSize }
    /// Steps the run takes: `maxSteps`, or epochs x windowsPerEpoch (x the objective's iterations per window).
    public var totalSteps: Int { schedule.totalSteps }
    /// True once `totalSteps` steps are done.
    public var isFinished: Bool { state.step >= totalSteps }

    /// The windows of one epoch, as example indices: a seeded shuffle, then (with length
    /// grouping) megabatches of 50 windows sorted by length so that windows hold similar lengths.
    /// It depends only on the seed, the epoch and the window size, never on how a window is split.
    package func windows(epoch: Int) -> [[Int]] {
        var rng = FinchRandom(seed: settings.seed &+ UInt64(epoch) &* 0x9E37_79B9)
        var order = Array(train.indices)
        order.shuffle(using: &rng)
        if settings.groupByLength {
            let mega = 50 * windowSize
            order = stride(from: 0, to: order.count, by: mega).flatMap { start in
                order[start..<min(start + mega, order.count)].sorted { train[$0].length > train[$1].length }
            }
        }
        return stride(from: 0, to: order.count, by: windowSize).map { Array(order[$0..<min($0 + windowSize, order.count)]) }
    }

    /// Splits a window into micro-batches of `ranks x batchSize`, longest first (less padding per
    /// batch), and keeps this rank's slice of each: the first `batchSize` examples for rank 0, the
    /// next for rank 1, ... A slice can be empty at the end of an epoch.
    func microBatches(_ window: [Int], of data: [Example]) -> [[Example]] {
        let sorted = window.map { data[$0] }.sorted { $0.length > $1.length }
        let b = settings.batchSize, global = group.size * b
        return stride(from: 0, to: sorted.count, by: global).map { start in
            Array(sorted[min(start + group.rank * b, sorted.count)..<min(start + (group.rank + 1) * b, sorted.count)])
        }.filter { !$0.isEmpty }
    }

    /// One optimizer step over the next window.
    public func step() throws -> StepLog {
        let start = MonotonicClock.now(), communicated = group.collectiveSeconds
        let window = windows(epoch: state.epoch)[state.windowInEpoch]
        let micro = microBatches(window, of: train)
        if group.size > 1 {
            // Dropout masks: a stream per rank and step, so any rank count resumes exactly.
            model.random = FinchRandom(seed: settings.seed ^ (UInt64(state.step + 1) &* 0x9E37_79B9_7F4A_7C15) ^ (UInt64(group.rank) &* 0xD1B5_4A32_D192_ED03))
        }
        // Each window takes `iterationsPerWindow` steps in a row (GRPO's num_iterations), so the
        // step count alone says which: a run resumes at the same place.
        let iterations = max(objective.iterationsPerWindow, 1)
        let pass = WindowPass.training(step: state.step, iteration: state.step % iterations)
        // Exact accumulation: every normaliser over the whole window (all ranks) before the first backward.
        let windowTerms = try objective.windowNormalisers(window.map { train[$0] }, mine: micro.flatMap { $0 }, model: model, pass: pass)
        let normalisers = try group.sum(micro.reduce(windowTerms) { $0 + objective.normalisers(of: $1) },
                                        "all-reduce of the normalisers (step \(state.step + 1))")
        parameters.zeroGrads()
        try countRouterChoices(micro)
        defer { model.routerWindow = nil }
        var metrics: [String: Double] = [:]
        for batch in micro {
            for (key, value) in try objective.accumulate(batch, model: model, window: normalisers) { metrics[key, default: 0] += value }
            if model.trainsRouterBalance {
                // The load-balancing loss (transformers' `aux_loss`) is part of the loss, times its coefficient.
                let aux = model.takeRouterAuxShare()
                metrics["aux_loss", default: 0] += aux
                metrics["loss", default: 0] += Double(model.routerAuxLossCoef) * aux
            }
        }
        for (key, value) in objective.finishWindow(pass) { metrics[key, default: 0] += value }
        try group.sum(parameters.grads, count: parameters.count, "all-reduce of the gradients (step \(state.step + 1))")
        metrics = try group.sumAtRoot(metrics, "gathering the metrics (step \(state.step + 1))")
        let gradNorm = clipGradientNorm(parameters, maxNorm: settings.maxGradNorm)
        let lr = schedule.rate(at: state.step)
        // A non-finite loss or gradient stops the run before the update: the parameters (and every
        // checkpoint written so far) stay as they were. The gradient is all-reduced, so every rank
        // sees the same norm and stops together.
        let skipped = !gradNorm.isFinite || metrics["loss"].map({ !$0.isFinite }) == true
        if skipped {
            let error = TrainingError.nonFinite(step: state.step + 1, loss: metrics["loss"], gradNorm: Double(gradNorm), learningRate: Double(lr))
            guard nanPolicy == .skipStep, consecutiveSkips + 1 < Self.maxConsecutiveSkips else { throw error }
            // Skip: no update, the optimizer's moments and step count untouched; the window is consumed.
            consecutiveSkips += 1
            skippedSteps += 1
            parameters.zeroGrads()
            metrics = metrics.filter { $0.value.isFinite }
            metrics["skipped_steps"] = Double(skippedSteps)
        } else {
            // Collapse: every prediction uniform (negative log-likelihood ln(vocab)) and nothing left
            // to learn from (gradient exactly zero), as a huge learning rate leaves a model.
            let uniform = log(Double(model.config.vocabSize))
            if gradNorm == 0, let nll = metrics["nll_loss"] ?? metrics["loss"], abs(nll - uniform) < 1e-3 * uniform {
                throw TrainingError.collapsed(step: state.step + 1, loss: nll, learningRate: Double(lr))
            }
            consecutiveSkips = 0
            optimizer.update(parameters, lr: lr)
        }

        state.step += 1
        if state.step % iterations == 0 { state.windowInEpoch += 1 }
        if state.windowInEpoch == windowsPerEpoch { state.epoch += 1; state.windowInEpoch = 0 }
        state.random = model.random.state
        let tokens = objective.tokenCount(of: window.map { train[$0] })
        state.numTokens += tokens
        if objective.logsTokenCount { metrics["num_tokens"] = Double(state.numTokens) }
        metrics["learning_rate"] = Double(lr)
        if gradNorm.isFinite { metrics["grad_norm"] = Double(gradNorm) }
        let seconds = MonotonicClock.now() - start
        metrics["tokens_per_second"] = Double(tokens) / seconds
        let windowShare = Double(state.windowInEpoch) + Double(state.step % iterations) / Double(iterations)
        return StepLog(step: state.step, epoch: Double(state.epoch) + windowShare / Double(windowsPerEpoch),
                       metrics: metrics, seconds: seconds, collectiveSeconds: group.collectiveSeconds - communicated)
    }

    /// A mixture of experts' load-balancing loss is a product of two means over the window (the
    /// share of choices and the mean probability of each expert), so its gradient needs the whole
    /// window's choices before the first backward: with several micro-batches or ranks, a forward
    /// of each micro-batch counts them first (the dropout stream is rewound after, so the
    /// training forwards draw what they would have), summed over ranks. One micro-batch on one
    /// process needs none: its own forward is the window.
    private func countRouterChoices(_ micro: [[Example]]) throws {
        guard model.trainsRouterBalance, micro.count > 1 || group.size > 1 else { return }
        let experts = model.config.experts!.expertCount
        var window = RouterTally(experts: experts)
        let random = model.random
        for examples in micro {
            guard let batches = (objective as? NamesItsTrainingBatches)?.trainingBatches(examples, model: model) else {
                throw ObjectiveError.invalidSetting(objective: objective.name, name: "router_aux_loss_coef with accumulation",
                                                    found: "\(model.routerAuxLossCoef) over \(micro.count) micro-batches x \(group.size) ranks",
                                                    expected: "0 (--router-aux-loss-coef 0), or one micro-batch on one process: this objective cannot count the router's choices before it runs")
            }
            for batch in batches {
                if let tally = model.routerTally(of: batch) { window = RouterTally(flattened: zip(window.flattened, tally.flattened).map { $0 + $1 }) }
            }
        }
        model.random = random
        var values = window.flattened
        try group.sum(&values, "all-reduce of the router's choices (step \(state.step + 1))")
        model.routerWindow = RouterTally(flattened: values)
    }

    /// Loss and metrics over the whole evaluation set (exact means, as one big batch). Ranks
    /// take turns over the batches; rank 0 gets the totals.
    public func evaluate() throws -> [String: Double] {
        guard !eval.isEmpty else { return [:] }
        let batches = stride(from: 0, to: eval.count, by: settings.batchSize).map { Array(eval[$0..<min($0 + settings.batchSize, eval.count)]) }
        let pass = WindowPass.evaluation(step: state.step)
        let normalisers = try batches.reduce(objective.windowNormalisers(eval, mine: eval, model: model, pass: pass)) { $0 + objective.normalisers(of: $1) }
        var metrics: [String: Double] = [:]
        // A mixture of experts' load-balancing loss, as in training: over the policy's forwards of
        // the whole set (one big batch), times its coefficient in the loss.
        if model.trainsRouterBalance, let experts = model.config.experts?.expertCount { model.evaluationTally = RouterTally(experts: experts) }
        defer { model.evaluationTally = nil }
        for (i, batch) in batches.enumerated() where i % group.size == group.rank {
            for (key, value) in try objective.evaluate(batch, model: model, window: normalisers) { metrics[key, default: 0] += value }
        }
        if group.isRoot { for (key, value) in objective.finishWindow(pass) { metrics[key, default: 0] += value } }
        if let tally = model.evaluationTally {
            var values = tally.flattened
            try group.sum(&values, "all-reduce of the router's choices (evaluation at step \(state.step))")
            let aux = RouterTally(flattened: values).loss
            if group.isRoot {
                metrics["aux_loss", default: 0] += aux
                metrics["loss", default: 0] += Double(model.routerAuxLossCoef) * aux
            }
        }
        return try group.sumAtRoot(metrics, "gathering the evaluation metrics (step \(state.step))")
    }

    /// Makes every rank hold rank 0's parameters, optimizer moments and position (after rank 0
    /// restored a checkpoint or loaded an adapter), and checks that all ranks read the same data.
    package func synchroniseWithRoot() throws {
        guard group.size > 1 else { return }
        let tokens = train.reduce(0) { $0 + $1.fields.values.reduce(0) { $0 + $1.count } }
        try group.checkSameAsRoot([Double(train.count), Double(tokens), Double(eval.count), Double(parameters.count)],
                                  what: "training examples, their tokens, evaluation examples, trainable parameters")
        try group.broadcast(parameters.values, count: parameters.count, "broadcast of the parameters from rank 0")
        let encoded = try group.broadcast(Array(try JSONEncoder().encode(state)), "broadcast of the trainer state from rank 0")
        state = try JSONDecoder().decode(TrainerState.self, from: Data(encoded))
        let optimizerStep = try group.broadcast(Array(String(optimizer.step).utf8), "broadcast of the optimizer step from rank 0")
        var m = optimizer.m, v = optimizer.v
        if !m.isEmpty {
            try m.withUnsafeMutableBufferPointer { try group.broadcast($0.baseAddress!, count: $0.count, "broadcast of AdamW's m from rank 0") }
            try v.withUnsafeMutableBufferPointer { try group.broadcast($0.baseAddress!, count: $0.count, "broadcast of AdamW's v from rank 0") }
        }
        optimizer.restore(step: Int(String(decoding: optimizerStep, as: UTF8.self)) ?? 0, m: m, v: v)
    }
}

extension ProcessGroup {
    /// The normalisers summed over all ranks.
    func sum(_ n: Normalisers, _ operation: @autoclosure () -> String) throws -> Normalisers {
        guard size > 1 else { return n }
        let names = n.named.keys.sorted()
        var values = [n.tokens, n.pairs, n.chosenTokens, n.rejectedTokens, n.positions, n.examples, n.desirable, n.undesirable, n.klSum, n.klCount]
            + names.map { n.named[$0]! }
        try sum(&values, operation())
        return Normalisers(tokens: values[0], pairs: values[1], chosenTokens: values[2], rejectedTokens: values[3], positions: values[4],
                           examples: values[5], desirable: values[6], undesirable: values[7], klSum: values[8], klCount: values[9],
                           named: Dictionary(uniqueKeysWithValues: zip(names, values[10...])))
    }
}
