import XCTest
import FinchTestSupport
@testable import FinchKernels
@testable import FinchIO
@testable import FinchTokenizers
@testable import FinchModels
@testable import FinchGeneration
@testable import FinchDistributed
@testable import FinchTraining

/// Each objective's hand-derived gradient against central differences of its own loss.
final class ObjectiveGradientTests: XCTestCase {
    let directory = TestSupport.fixtures.appendingPathComponent("parity/llama_tied").path

    func check(_ label: String, examples: [Example], objective: Objective, eps: Float = 1e-2) throws {
        let model = try Transformer(files: ModelFiles.open(directory), fineTuning: .lora(try PEFTAdapter.config(directory: directory + "/adapter")))
        try PEFTAdapter.load(directory: directory + "/adapter", into: model)
        let p = model.parameters!
        // KTO's KL estimate is part of the window and has no gradient (as in TRL): held fixed here.
        let window = try objective.normalisers(of: examples) + objective.windowNormalisers(examples, mine: examples, model: model, pass: .training(step: 0, iteration: 0))
        p.zeroGrads()
        _ = try objective.accumulate(examples, model: model, window: window)
        let analytic = Array(UnsafeBufferPointer(start: p.grads, count: p.count))
        func loss() throws -> Double { try objective.evaluate(examples, model: model, window: window)["loss"]! }
        for i in analytic.indices.sorted(by: { abs(analytic[$0]) > abs(analytic[$1]) }).prefix(5) {
            let saved = p.values[i]
            p.values[i] = saved + eps; let plus = try loss()
            p.values[i] = saved - eps; let minus = try loss()
            p.values[i] = saved
            let numeric = (plus - minus) / Double(2 * eps)
            XCTAssertEqual(Double(analytic[i]), numeric, accuracy: 3e-2 * abs(numeric) + 1e-5, "\(label) parameter \(i)")
        }
    }

    func testEveryObjectiveAgainstFiniteDifferences() throws {
        let pairs = AccumulationTests.preferenceExamples()
        try check("sft", examples: AccumulationTests.sftExamples(), objective: SFTObjective())
        try check("orpo", examples: pairs, objective: try PreferenceObjective(loss: .orpo(beta: 0.5)))
        for kind in PreferenceLoss.DPOKind.allCases {
            try check("dpo \(kind)", examples: pairs,
                      objective: try PreferenceObjective(loss: .dpo(kind: kind, beta: 0.5, labelSmoothing: 0.2), reference: .adaptersOff),
                      eps: kind == .hinge ? 1e-3 : 1e-2)  // hinge has a kink: keep the probe on one side
        }
        try check("simpo", examples: pairs, objective: try PreferenceObjective(loss: .simpo(beta: 2, gamma: 0.5, alpha: 0.3, labelSmoothing: 0)))
        try check("cpo", examples: pairs, objective: try PreferenceObjective(loss: .cpo(beta: 0.5, alpha: 1, labelSmoothing: 0.1)))
        try check("kto", examples: AccumulationTests.ktoExamples(), objective: KTOObjective(beta: 0.5, undesirableWeight: 1.3, reference: .adaptersOff))
    }
}
