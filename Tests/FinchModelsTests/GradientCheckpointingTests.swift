import XCTest
import FinchTestSupport
@testable import FinchKernels
@testable import FinchIO
@testable import FinchModels

/// Gradient checkpointing recomputes each layer in backward: the gradients, the loss and the
/// dropout draws must be those of the ordinary pass.
final class GradientCheckpointingTests: XCTestCase {
    let directories = ["llama_tied", "qwen2_bias", "qwen3_qknorm", "gemma2_softcap", "gemma3_sliding"].map { TestSupport.fixtures.appendingPathComponent("parity/\($0)").path }

    /// Two SFT steps (the second shows the random state after a step is unchanged) and one
    /// ORPO-style forward + backward(logProbGradients:), with LoRA dropout and in full fine-tuning.
    private func gradients(_ directory: String, _ tuning: FineTuning, checkpointing: Bool) throws -> [Float] {
        let model = try Transformer(files: ModelFiles.open(directory), fineTuning: tuning, seed: 4)
        model.gradientCheckpointing = checkpointing
        let rows = [[1, 17, 42, 9, 88, 3, 60], [5, 2, 8, 0, 0, 0, 0]]
        let batch = TokenBatch(rows: rows)
        let targets = TokenBatch.shiftedTargets(labels: batch.ids, batch: 2, seq: 7)
        var collected: [Float] = []
        for _ in 0..<2 {
            model.parameters!.zeroGrads()
            let r = model.crossEntropyStep(batch, targets: targets, weight: 0.1)
            collected.append(Float(r.sum))
            collected += Array(UnsafeBufferPointer(start: model.parameters!.grads, count: model.parameters!.count))
        }
        model.parameters!.zeroGrads()
        let stats = model.forwardForTraining(batch, targets: targets)
        model.backward(logProbGradients: stats.logProbs.indices.map { Float($0 % 3) - 1 })
        collected += stats.logProbs
        collected += Array(UnsafeBufferPointer(start: model.parameters!.grads, count: model.parameters!.count))
        return collected
    }

    func testCheckpointedGradientsEqualTheStoredOnes() throws {
        for directory in directories {
            for tuning in [FineTuning.lora(LoRAConfig(rank: 4, alpha: 8, dropout: 0.2)), .full] {
                let plain = try gradients(directory, tuning, checkpointing: false)
                let recomputed = try gradients(directory, tuning, checkpointing: true)
                XCTAssertEqual(plain.count, recomputed.count)
                XCTAssertLessThanOrEqual(TestSupport.maxRelativeError(recomputed, plain), 1e-6, "\(directory) \(tuning)")
            }
        }
    }
}
