import XCTest
import FinchTestSupport
@testable import FinchKernels
@testable import FinchIO
@testable import FinchTokenizers
@testable import FinchModels
@testable import FinchGeneration
@testable import FinchDistributed
@testable import FinchTraining

/// DESIGN.md's exact accumulation: one SGD step from batch 4 x accumulation 1, 2 x 2 and 1 x 4
/// gives the same update, for every objective, because each window counts its normalisers first.
final class AccumulationTests: XCTestCase {
    var directory = TestSupport.fixtures.appendingPathComponent("parity/llama_tied").path

    /// Rows of different lengths, so that micro-batch means differ from the window mean.
    static func sftExamples() -> [Example] {
        var rng = FinchRandom(seed: 11)
        return (0..<4).map { i in
            let length = [5, 12, 7, 9][i]
            let ids = (0..<length).map { _ in Int32(3 + rng.next() % 120) }
            let prompt = [2, 4, 3, 5][i]
            let labels = ids.enumerated().map { $0.offset < prompt ? Int32(-100) : $0.element }
            return Example(id: i, fields: ["input_ids": ids, "labels": labels])
        }
    }

    static func preferenceExamples() -> [Example] {
        var rng = FinchRandom(seed: 12)
        func tokens(_ n: Int) -> [Int32] { (0..<n).map { _ in Int32(3 + rng.next() % 120) } }
        return (0..<4).map { i in
            let prompt = [1] + tokens([3, 6, 2, 4][i])
            let chosen = tokens([2, 5, 8, 3][i]) + [2], rejected = tokens([6, 2, 4, 7][i]) + [2]
            func labels(_ completion: [Int32]) -> [Int32] { [Int32](repeating: -100, count: prompt.count) + completion }
            return Example(id: i, fields: ["chosen_input_ids": prompt + chosen, "chosen_labels": labels(chosen),
                                           "rejected_input_ids": prompt + rejected, "rejected_labels": labels(rejected)])
        }
    }

    /// Unpaired prompt + completion rows with desirability labels (KTO), of different lengths.
    static func ktoExamples() -> [Example] {
        var rng = FinchRandom(seed: 13)
        func tokens(_ n: Int) -> [Int32] { (0..<n).map { _ in Int32(3 + rng.next() % 120) } }
        return (0..<4).map { i in
            let prompt = [1] + tokens([3, 6, 2, 4][i]), completion = tokens([2, 5, 8, 3][i]) + [2]
            return Example(id: i, fields: ["input_ids": prompt + completion,
                                           "labels": [Int32](repeating: -100, count: prompt.count) + completion,
                                           "label": [[1, 0, 0, 1][i]]])
        }
    }

    /// The parameter update of one SGD step (lr 1, no clipping) with the given split.
    func update(tuning: FineTuning, examples: [Example], batch: Int, accum: Int,
                objective makeObjective: (Transformer) throws -> Objective) throws -> (update: [Float], loss: Double, metrics: [String: Double]) {
        let model = try Transformer(files: ModelFiles.open(directory), fineTuning: tuning)
        if case .lora = tuning { try PEFTAdapter.load(directory: directory + "/adapter", into: model) }
        let p = model.parameters!
        let before = Array(UnsafeBufferPointer(start: p.values, count: p.count))
        var settings = TrainerSettings()
        settings.batchSize = batch; settings.gradAccum = accum; settings.learningRate = 1
        settings.optimizer = .sgd; settings.maxGradNorm = 0; settings.scheduler = .constant
        let trainer = try Trainer(model: model, objective: try makeObjective(model), train: examples, settings: settings)
        let log = try trainer.step()
        let after = Array(UnsafeBufferPointer(start: p.values, count: p.count))
        return (zip(after, before).map { $0 - $1 }, log.metrics["loss"]!, log.metrics)
    }

    func assertExact(_ label: String, tuning: FineTuning, examples: [Example], objective: (Transformer) throws -> Objective) throws {
        let full = try update(tuning: tuning, examples: examples, batch: 4, accum: 1, objective: objective)
        XCTAssertGreaterThan(full.update.map(abs).max()!, 0, "\(label): the step changed nothing")
        for (batch, accum) in [(2, 2), (1, 4)] {
            let split = try update(tuning: tuning, examples: examples, batch: batch, accum: accum, objective: objective)
            let gap = TestSupport.relativeL2(split.update, full.update)
            XCTAssertLessThan(gap, 1e-5, "\(label) \(batch)x\(accum): update differs from 4x1 by \(gap)")
            XCTAssertEqual(split.loss, full.loss, accuracy: 1e-5 * abs(full.loss), "\(label) \(batch)x\(accum) loss")
            // ORPO's and CPO's logits/* average over padded positions as TRL defines them, so they
            // depend on how rows share a padded micro-batch; everything else must not.
            let paddingDependent = label.hasPrefix("orpo") || label.hasPrefix("cpo") || label.hasPrefix("simpo")
                ? ["logits/chosen", "logits/rejected"] : []
            for (key, value) in full.metrics where !(["tokens_per_second", "grad_norm"] + paddingDependent).contains(key) {
                XCTAssertEqual(split.metrics[key] ?? .nan, value, accuracy: 1e-5 * max(abs(value), 1e-3), "\(label) \(batch)x\(accum) \(key)")
            }
        }
    }

    func lora() throws -> FineTuning { .lora(try PEFTAdapter.config(directory: directory + "/adapter")) }

    func testSFT() throws {
        try assertExact("sft lora", tuning: try lora(), examples: Self.sftExamples()) { _ in SFTObjective() }
        try assertExact("sft full", tuning: .full, examples: Self.sftExamples()) { _ in SFTObjective() }
    }

    func testORPO() throws {
        try assertExact("orpo lora", tuning: try lora(), examples: Self.preferenceExamples()) { _ in try PreferenceObjective(loss: .orpo(beta: 0.1)) }
        try assertExact("orpo full", tuning: .full, examples: Self.preferenceExamples()) { _ in try PreferenceObjective(loss: .orpo(beta: 0.1)) }
    }

    /// A mixture of experts (Qwen3-MoE's and OLMoE's fixtures: the load-balancing loss in the loss at
    /// coefficient 0.1, LoRA on the experts too): the loss's auxiliary term is a product of two
    /// window means, so the split runs count the window's router choices first; the update, the
    /// loss and `aux_loss` equal the one batch's.
    func testMixtureOfExpertsWithItsLoadBalancingLoss() throws {
        for fixture in ["qwen3_moe", "olmoe_moe"] {
            directory = TestSupport.fixtures.appendingPathComponent("parity/\(fixture)").path
            try assertExact("sft lora \(fixture)", tuning: try lora(), examples: Self.sftExamples()) { _ in SFTObjective() }
            try assertExact("sft full \(fixture)", tuning: .full, examples: Self.sftExamples()) { _ in SFTObjective() }
            try assertExact("orpo lora \(fixture)", tuning: try lora(), examples: Self.preferenceExamples()) { _ in
                try PreferenceObjective(loss: .orpo(beta: 0.1))
            }
            let full = try update(tuning: try lora(), examples: Self.sftExamples(), batch: 4, accum: 1) { _ in SFTObjective() }
            let aux = try XCTUnwrap(full.metrics["aux_loss"], fixture)
            XCTAssertGreaterThan(aux, 1, "\(fixture): E * sum f_e P_e is at least 1 (1 when perfectly balanced)")
        }
    }

    /// Evaluation adds the load-balancing loss too (TRL's eval loss is the model's loss, aux term
    /// included): over the policy's forwards of the whole set, as one batch, times its coefficient;
    /// DPO's reference passes (adapters off) are not counted.
    func testEvaluationAddsTheLoadBalancingLoss() throws {
        directory = TestSupport.fixtures.appendingPathComponent("parity/qwen3_moe").path
        let eval = Self.sftExamples()
        func evaluate(coef: Float?, _ objective: any Objective, _ examples: [Example]) throws -> [String: Double] {
            let model = try Transformer(files: ModelFiles.open(directory), fineTuning: try lora())
            try PEFTAdapter.load(directory: directory + "/adapter", into: model)
            if let coef { model.routerAuxLossCoef = coef }
            var settings = TrainerSettings()
            settings.batchSize = 2
            return try Trainer(model: model, objective: objective, train: examples, eval: examples, settings: settings).evaluate()
        }
        let with = try evaluate(coef: nil, SFTObjective(), eval), without = try evaluate(coef: 0, SFTObjective(), eval)
        let aux = try XCTUnwrap(with["aux_loss"])
        XCTAssertNil(without["aux_loss"])
        XCTAssertEqual(with["loss"]!, without["loss"]! + Double(Float(0.1)) * aux, accuracy: 1e-9)  // the config's coefficient, as a Float
        // The tally of one forward of the whole set, counted independently.
        let model = try Transformer(files: ModelFiles.open(directory), fineTuning: try lora())
        try PEFTAdapter.load(directory: directory + "/adapter", into: model)
        let batch = TokenBatch(rows: eval.map { $0.fields["input_ids"]!.map(Int.init) })
        let expected = try XCTUnwrap(model.routerTally(of: batch)).loss
        XCTAssertEqual(aux, expected, accuracy: 1e-6 * expected)
        XCTAssertGreaterThan(aux, 1)
        // DPO: the reference (adapters off) routes differently; only the policy counts, so the
        // aux term is the ORPO evaluation's of the same rows (both score chosen and rejected).
        let pairs = Self.preferenceExamples()
        let dpo = try evaluate(coef: nil, try PreferenceObjective(loss: .dpo(kind: .sigmoid, beta: 0.1, labelSmoothing: 0), reference: .adaptersOff), pairs)
        let orpo = try evaluate(coef: nil, try PreferenceObjective(loss: .orpo(beta: 0.1)), pairs)
        XCTAssertEqual(try XCTUnwrap(dpo["aux_loss"]), try XCTUnwrap(orpo["aux_loss"]), accuracy: 1e-7 * orpo["aux_loss"]!)
    }

    func testDPO() throws {
        for kind in PreferenceLoss.DPOKind.allCases {
            try assertExact("dpo \(kind) lora", tuning: try lora(), examples: Self.preferenceExamples()) { _ in
                try PreferenceObjective(loss: .dpo(kind: kind, beta: 0.1, labelSmoothing: kind == .robust ? 0.1 : 0), reference: .adaptersOff)
            }
        }
        let reference = try Transformer(files: ModelFiles.open(directory))
        try assertExact("dpo full", tuning: .full, examples: Self.preferenceExamples()) { _ in
            try PreferenceObjective(loss: .dpo(kind: .sigmoid, beta: 0.1, labelSmoothing: 0), reference: .model(reference))
        }
    }

    func testSimPOAndCPO() throws {
        try assertExact("simpo", tuning: try lora(), examples: Self.preferenceExamples()) { _ in
            try PreferenceObjective(loss: .simpo(beta: 2, gamma: 0.5, alpha: 0, labelSmoothing: 0))
        }
        try assertExact("cpo", tuning: try lora(), examples: Self.preferenceExamples()) { _ in
            try PreferenceObjective(loss: .cpo(beta: 0.1, alpha: 1, labelSmoothing: 0))
        }
    }

    /// KTO's KL estimate is counted over the whole window before the first backward, so its
    /// loss, metrics (the estimate itself, rewards, logits) and update do not depend on the split.
    func testKTO() throws {
        try assertExact("kto lora", tuning: try lora(), examples: Self.ktoExamples()) { _ in
            KTOObjective(beta: 0.5, desirableWeight: 1, undesirableWeight: 1.3, reference: .adaptersOff)
        }
        let reference = try Transformer(files: ModelFiles.open(directory))
        try assertExact("kto full", tuning: .full, examples: Self.ktoExamples()) { _ in
            KTOObjective(beta: 0.5, reference: .model(reference))
        }
        try assertExact("kto apo", tuning: try lora(), examples: Self.ktoExamples()) { _ in
            KTOObjective(loss: .apoZeroUnpaired, beta: 0.5, reference: .adaptersOff)
        }
    }

    /// DPO caches reference log-probs by example id; an evaluation set numbered from 0 like the
    /// training set must still be scored with its own (the trainer renumbers it).
    func testEvaluationDoesNotReuseTheTrainingRowsReferenceFigures() throws {
        var rng = FinchRandom(seed: 77)
        func tokens(_ n: Int) -> [Int32] { (0..<n).map { _ in Int32(3 + rng.next() % 120) } }
        let eval = (0..<2).map { i -> Example in
            let prompt = [1] + tokens(5), chosen = tokens(4) + [2], rejected = tokens(6) + [2]
            let masked = [Int32](repeating: -100, count: prompt.count)
            return Example(id: i, fields: ["chosen_input_ids": prompt + chosen, "chosen_labels": masked + chosen,
                                           "rejected_input_ids": prompt + rejected, "rejected_labels": masked + rejected])
        }
        func model() throws -> Transformer {
            let m = try Transformer(files: ModelFiles.open(directory), fineTuning: try lora())
            try PEFTAdapter.load(directory: directory + "/adapter", into: m)
            return m
        }
        let policy = try model()
        let objective = try PreferenceObjective(loss: .dpo(kind: .sigmoid, beta: 0.1, labelSmoothing: 0), reference: .adaptersOff)
        var settings = TrainerSettings()
        settings.batchSize = 2
        let trainer = try Trainer(model: policy, objective: objective, train: Self.preferenceExamples(), eval: eval, settings: settings)
        _ = try objective.evaluate(Self.preferenceExamples(), model: policy, window: objective.normalisers(of: Self.preferenceExamples()))
        let got = try trainer.evaluate()
        let alone = try PreferenceObjective(loss: .dpo(kind: .sigmoid, beta: 0.1, labelSmoothing: 0), reference: .adaptersOff)
        let expected = try alone.evaluate(eval, model: try model(), window: alone.normalisers(of: eval))
        XCTAssertNotEqual(expected["rewards/chosen"], 0)
        for key in ["loss", "rewards/chosen", "rewards/rejected"] {
            XCTAssertEqual(got[key] ?? .nan, expected[key]!, accuracy: 1e-6 * max(abs(expected[key]!), 1), key)
        }
    }

    func testAnObjectiveNamesTheFieldsItLacks() throws {
        let model = try Transformer(files: ModelFiles.open(directory), fineTuning: try lora())
        let objective = try PreferenceObjective(loss: .orpo(beta: 0.1))
        XCTAssertThrowsError(try Trainer(model: model, objective: objective, train: Self.sftExamples(), settings: TrainerSettings())) { error in
            XCTAssertEqual("\(error)", "orpo: example 0 lacks the field(s) chosen_input_ids, chosen_labels, rejected_input_ids, rejected_labels this objective needs")
        }
    }
}
