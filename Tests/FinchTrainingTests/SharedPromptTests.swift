import XCTest
import FinchTestSupport
@testable import FinchKernels
@testable import FinchModels
@testable import FinchTraining

/// A pair's chosen and rejected rows run as one row holding their prompt once (`SharedPrompt`)
/// give the update and every metric of the two rows run apart.
final class SharedPromptTests: XCTestCase {
    let directory = TestSupport.fixtures.appendingPathComponent("parity/llama_tied").path

    /// Pairs whose prompts have different lengths, so the micro-batch shares only the shortest,
    /// and whose rows have different lengths (padding inside the shared row).
    func testTheSharedPrefixStopsWhereTheRowsOrTheirTargetsDiffer() throws {
        let model = try Transformer(files: ModelFiles.open(directory), fineTuning: .full)
        let objective = try PreferenceObjective(loss: .orpo(beta: 0.1))
        let examples = AccumulationTests.preferenceExamples()   // prompts of 4, 7, 3 and 5 tokens
        let p = objective.pass(examples, model: model)
        // The 3-token prompt's last token predicts a different first answer token in each row.
        XCTAssertEqual(p.shared?.prefix, 2)
        let two = objective.pass(Array(examples[1...1]), model: model)
        XCTAssertEqual(two.shared?.prefix, 6)
        let seq = two.batch.tokens.seq
        XCTAssertEqual(two.shared?.tokens.seq, 2 * seq - 6)
        // Every position of the two rows has its own place, except the prefix, which both share.
        let places = (0..<2 * seq).map { two.shared!.sharedIndex(row: $0 / seq, $0 % seq) }
        XCTAssertEqual(Set(places).count, 2 * seq - 6)
        XCTAssertEqual(two.shared?.tokens.positions[seq + 1], Int32(7), "the rejected branch keeps its own positions")
        objective.sharesPrompt = false
        XCTAssertNil(objective.pass(examples, model: model).shared)
    }

    func testSharedAndSeparateRowsGiveTheSameUpdateAndMetrics() throws {
        let saved = attentionQueryBlock
        defer { attentionQueryBlock = saved }
        attentionQueryBlock = 2   // blocks inside the rejected branch skip the chosen one
        let lora = FineTuning.lora(try PEFTAdapter.config(directory: directory + "/adapter"))
        let reference = try Transformer(files: ModelFiles.open(directory))
        let losses: [(String, FineTuning, PreferenceLoss, ReferenceModel?)] = [
            ("orpo lora", lora, .orpo(beta: 0.1), nil),
            ("orpo full", .full, .orpo(beta: 0.1), nil),
            ("dpo sigmoid", lora, .dpo(kind: .sigmoid, beta: 0.1, labelSmoothing: 0), .adaptersOff),
            ("dpo ipo", lora, .dpo(kind: .ipo, beta: 0.1, labelSmoothing: 0), .adaptersOff),
            ("dpo full", .full, .dpo(kind: .sigmoid, beta: 0.1, labelSmoothing: 0), .model(reference)),
            ("cpo", lora, .cpo(beta: 0.1, alpha: 1, labelSmoothing: 0.1), nil),
            ("simpo", lora, .simpo(beta: 2, gamma: 0.5, alpha: 0.3, labelSmoothing: 0), nil),
        ]
        for (label, tuning, loss, referenceModel) in losses {
            func run(shared: Bool) throws -> ([Float], [String: Double]) {
                let model = try Transformer(files: ModelFiles.open(directory), fineTuning: tuning)
                if case .lora = tuning { try PEFTAdapter.load(directory: directory + "/adapter", into: model) }
                let objective = try PreferenceObjective(loss: loss, reference: referenceModel)
                objective.sharesPrompt = shared
                let examples = AccumulationTests.preferenceExamples()
                XCTAssertEqual(objective.pass(examples, model: model).shared != nil, shared, label)
                let p = model.parameters!
                p.zeroGrads()
                let metrics = try objective.accumulate(examples, model: model, window: objective.normalisers(of: examples))
                return (Array(UnsafeBufferPointer(start: p.grads, count: p.count)), metrics)
            }
            let (apart, apartMetrics) = try run(shared: false)
            let (together, metrics) = try run(shared: true)
            XCTAssertGreaterThan(apart.map(abs).max()!, 0, label)
            XCTAssertLessThan(TestSupport.relativeL2(together, apart), 1e-5, "\(label): gradients")
            XCTAssertEqual(Set(metrics.keys), Set(apartMetrics.keys), label)
            for (key, value) in apartMetrics {
                XCTAssertEqual(metrics[key] ?? .nan, value, accuracy: 1e-5 * max(abs(value), 1e-3), "\(label) \(key)")
            }
        }
    }
}
