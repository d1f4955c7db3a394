import Foundation

/// The knobs of a training run (flags and YAML keys of `finch train` map onto these).
public struct TrainerSettings: Sendable, Codable, Equatable {
    public var batchSize = 2
    public var gradAccum = 1
    public var epochs = 1
    /// Stops after this many optimizer steps when > 0 (wins over `epochs`).
    public var maxSteps = 0
    public var learningRate: Float = 2e-4
    public var optimizer: OptimizerKind = .adamw
    public var weightDecay: Float = 0
    public var scheduler: LRScheduleKind = .linear
    public var warmupSteps = 0
    /// 0 turns clipping off.
    public var maxGradNorm: Float = 1
    public var seed: UInt64 = 42
    public var loggingSteps = 1
    public var evalSteps = 0
    public var saveSteps = 0
    public var groupByLength = true

    public init() {}
}

/// Where a run stands: enough, with the parameters and optimizer moments, to resume bit for bit.
public struct TrainerState: Sendable, Codable, Equatable {
    public var step = 0
    public var epoch = 0
    /// Next window within `epoch`.
    public var windowInEpoch = 0
    /// The model's dropout generator.
    public var random: [UInt64] = []
    /// Real (unpadded) tokens trained on so far, TRL's `num_tokens`.
    public var numTokens = 0
}

/// What one optimizer step did, under TRL's metric names.
public struct StepLog: Sendable {
    public var step: Int
    public var epoch: Double
    public var metrics: [String: Double]
}

/// Runs windows of micro-batches through an objective and applies optimizer updates.
public final class Trainer {
    public let model: Transformer
    public let objective: Objective
    public let settings: TrainerSettings
    public let train: [Example]
    public let eval: [Example]
    public let optimizer: Optimizer
    public let schedule: LRSchedule
    public var state = TrainerState()
    let parameters: ParameterSet

    public init(model: Transformer, objective: Objective, train: [Example], eval: [Example] = [], settings: TrainerSettings) throws {
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
        self.eval = eval
        self.parameters = parameters
        optimizer = Optimizer(kind: settings.optimizer, parameters: parameters, weightDecay: settings.weightDecay)
        let windowsPerEpoch = (train.count + settings.batchSize * settings.gradAccum - 1) / (settings.batchSize * settings.gradAccum)
        let total = settings.maxSteps > 0 ? settings.maxSteps : settings.epochs * windowsPerEpoch
        schedule = LRSchedule(kind: settings.scheduler, peak: settings.learningRate, warmupSteps: settings.warmupSteps, totalSteps: total)
    }

    public var windowSize: Int { settings.batchSize * settings.gradAccum }
    public var windowsPerEpoch: Int { (train.count + windowSize - 1) / windowSize }
    public var totalSteps: Int { schedule.totalSteps }
    public var isFinished: Bool { state.step >= totalSteps }

    /// The windows of one epoch, as example indices: a seeded shuffle, then (with length
    /// grouping) megabatches of 50 windows sorted by length so that windows hold similar lengths.
    /// It depends only on the seed, the epoch and the window size, never on how a window is split.
    public func windows(epoch: Int) -> [[Int]] {
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

    /// Splits a window into micro-batches of `batchSize`, longest first (less padding per batch).
    func microBatches(_ window: [Int], of data: [Example]) -> [[Example]] {
        let sorted = window.map { data[$0] }.sorted { $0.length > $1.length }
        return stride(from: 0, to: sorted.count, by: settings.batchSize).map { Array(sorted[$0..<min($0 + settings.batchSize, sorted.count)]) }
    }

    /// One optimizer step over the next window.
    public func step() throws -> StepLog {
        let start = MonotonicClock.now()
        let window = windows(epoch: state.epoch)[state.windowInEpoch]
        let micro = microBatches(window, of: train)
        // Exact accumulation: every normaliser over the whole window before the first backward.
        let normalisers = micro.reduce(Normalisers()) { $0 + objective.normalisers(of: $1) }
        parameters.zeroGrads()
        var metrics: [String: Double] = [:]
        for batch in micro {
            for (key, value) in try objective.accumulate(batch, model: model, window: normalisers) { metrics[key, default: 0] += value }
        }
        let gradNorm = clipGradientNorm(parameters, maxNorm: settings.maxGradNorm)
        let lr = schedule.rate(at: state.step)
        optimizer.update(parameters, lr: lr)

        state.step += 1
        state.windowInEpoch += 1
        if state.windowInEpoch == windowsPerEpoch { state.epoch += 1; state.windowInEpoch = 0 }
        state.random = model.random.state
        let tokens = window.reduce(0) { total, i in
            total + ["input_ids", "chosen_input_ids", "rejected_input_ids"].reduce(0) { $0 + train[i][$1].count }
        }
        state.numTokens += tokens
        if objective.logsTokenCount { metrics["num_tokens"] = Double(state.numTokens) }
        metrics["learning_rate"] = Double(lr)
        metrics["grad_norm"] = Double(gradNorm)
        metrics["tokens_per_second"] = Double(tokens) / (MonotonicClock.now() - start)
        return StepLog(step: state.step, epoch: Double(state.epoch) + Double(state.windowInEpoch) / Double(windowsPerEpoch),
                       metrics: metrics)
    }

    /// Loss and metrics over the whole evaluation set (exact means, as one big batch).
    public func evaluate() throws -> [String: Double] {
        guard !eval.isEmpty else { return [:] }
        let batches = stride(from: 0, to: eval.count, by: settings.batchSize).map { Array(eval[$0..<min($0 + settings.batchSize, eval.count)]) }
        let normalisers = batches.reduce(Normalisers()) { $0 + objective.normalisers(of: $1) }
        var metrics: [String: Double] = [:]
        for batch in batches {
            for (key, value) in try objective.evaluate(batch, model: model, window: normalisers) { metrics[key, default: 0] += value }
        }
        return metrics
    }
}
