import Foundation
import FinchKernels
import FinchIO
import FinchTokenizers
import FinchModels
import FinchGeneration
import FinchDistributed
import FinchTraining
import FinchExport

extension Benchmarks {
    /// What data parallel training costs per step, as rank 0 saw it.
    public struct DataParallelTiming: Sendable {
        /// Processes in the group.
        public var ranks: Int
        /// Per optimizer step (medians over the timed steps).
        public var stepSeconds: Double
        /// Time inside collectives per step, waiting for the slower rank included.
        public var collectiveSeconds: Double
        /// One all-reduce of the gradient buffer alone, after the ranks lined up.
        public var gradientAllReduceSeconds: Double
        /// Size of the gradient buffer each all-reduce sums (4 bytes per trainable parameter).
        public var gradientBytes: Int
    }

    /// Trainer steps (SFT on random tokens, `globalBatch` sequences of `seq` tokens per step) of
    /// `model` over the ranks of `group`: step time, time in collectives, and the gradient
    /// all-reduce on its own. Every rank runs this; the figures are rank 0's.
    public static func dataParallelStep(model: Transformer, group: ProcessGroup, globalBatch: Int, seq: Int,
                                        steps: Int = 3) throws -> DataParallelTiming {
        precondition(globalBatch % group.size == 0, "the global batch must divide among the ranks")
        var rng = FinchRandom(seed: 3)
        let examples = (0..<globalBatch * (steps + 1)).map { i -> Example in
            let ids = (0..<seq).map { _ in Int32(rng.next() % UInt64(model.config.vocabSize)) }
            return Example(id: i, fields: ["input_ids": ids, "labels": ids])
        }
        var settings = TrainerSettings()
        settings.batchSize = globalBatch / group.size
        settings.maxSteps = steps + 1
        settings.groupByLength = false
        let trainer = try Trainer(model: model, objective: SFTObjective(), train: examples, settings: settings, group: group)
        try trainer.synchroniseWithRoot()
        var stepTimes: [Double] = [], collectiveTimes: [Double] = []
        for step in 0...steps {
            let log = try trainer.step()
            if step > 0 { stepTimes.append(log.seconds); collectiveTimes.append(log.collectiveSeconds) }
        }
        let p = trainer.parameters
        var allReduce: [Double] = []
        for _ in 0..<3 {
            var line = [0.0]
            try group.sum(&line, "lining up the ranks")
            let start = now()
            try group.sum(p.grads, count: p.count, "all-reduce of the gradients")
            allReduce.append(now() - start)
        }
        return DataParallelTiming(ranks: group.size, stepSeconds: median(stepTimes), collectiveSeconds: median(collectiveTimes),
                                  gradientAllReduceSeconds: group.size > 1 ? median(allReduce) : 0, gradientBytes: p.count * 4)
    }
}
