import XCTest
import FinchTestSupport
@testable import FinchKernels
@testable import FinchIO
@testable import FinchTokenizers
@testable import FinchModels
@testable import FinchGeneration
@testable import FinchDistributed
@testable import FinchTraining

/// SFT packing: sequences laid end to end in one row give the same loss and update as the same
/// sequences in separate padded rows, because attention, positions and targets stay per sequence.
final class PackingTests: XCTestCase {
    let directory = TestSupport.fixtures.appendingPathComponent("parity/qwen2_bias").path

    func update(_ examples: [Example], batch: Int, tuning: FineTuning) throws -> ([Float], Double) {
        let model = try Transformer(files: ModelFiles.open(directory), fineTuning: tuning)
        if case .lora = tuning { try PEFTAdapter.load(directory: directory + "/adapter", into: model) }
        let p = model.parameters!
        let before = Array(UnsafeBufferPointer(start: p.values, count: p.count))
        var settings = TrainerSettings()
        settings.batchSize = batch; settings.learningRate = 1; settings.optimizer = .sgd; settings.maxGradNorm = 0
        settings.scheduler = .constant
        let log = try Trainer(model: model, objective: SFTObjective(), train: examples, settings: settings).step()
        return (zip(UnsafeBufferPointer(start: p.values, count: p.count), before).map { $0 - $1 }, log.metrics["loss"]!)
    }

    func testPackedRowsTrainLikeSeparateRows() throws {
        let examples = AccumulationTests.sftExamples()
        let packed = TrainingData.pack(examples, maxLength: 40)
        XCTAssertEqual(packed.count, 1)
        XCTAssertEqual(packed[0]["segment_lengths"], [5, 12, 7, 9])
        for tuning in [FineTuning.lora(try PEFTAdapter.config(directory: directory + "/adapter")), .full] {
            let separate = try update(examples, batch: 4, tuning: tuning)
            let together = try update(packed, batch: 4, tuning: tuning)
            XCTAssertEqual(together.1, separate.1, accuracy: 1e-5 * separate.1)
            XCTAssertLessThan(TestSupport.relativeL2(together.0, separate.0), 1e-5)
        }
        // Two rows when a row would overflow.
        XCTAssertEqual(TrainingData.pack(examples, maxLength: 20).map { $0["segment_lengths"] }, [[5, 12], [7, 9]])
    }
}
