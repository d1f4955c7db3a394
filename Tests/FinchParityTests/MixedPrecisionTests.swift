import XCTest
import FinchTestSupport
@testable import FinchKernels
@testable import FinchIO
@testable import FinchTokenizers
@testable import FinchModels
@testable import FinchGeneration
@testable import FinchDistributed
@testable import FinchTraining

/// bf16 mixed precision on a whole training step: the native path (oneDNN, AVX512_BF16) and the
/// portable one (bf16-rounded inputs through the fp32 GEMM) compute the same numbers up to the
/// order of summation, and both stay close to fp32.
final class MixedPrecisionTests: XCTestCase {
    typealias S = TestSupport

    /// One ORPO step (TRL's fixture batch) with LoRA r=4 on every projection, B initialised at
    /// random so that every LoRA gradient is non-zero: the loss and all LoRA gradients.
    func orpoStep(precision: Precision, portable: Bool = false, bf16Activations: Bool = true) throws -> (loss: Double, grads: [Float]) {
        GEMM.portableBF16 = portable
        defer { GEMM.portableBF16 = false }
        let c = try TRLParityTests.load("orpo")
        let model = try Transformer(files: ModelFiles.open(TRLParityTests.root.appendingPathComponent("model").path),
                                    fineTuning: .lora(LoRAConfig(rank: 4, alpha: 8)), seed: 1, precision: precision)
        model.keepsActivationsInBF16 = bf16Activations
        let parameters = try XCTUnwrap(model.parameters)
        var rng = FinchRandom(seed: 9)
        for e in parameters.entries where e.name.contains("lora_B") {
            for i in 0..<e.count { parameters.values[e.offset + i] = rng.nextGaussian() * 0.05 }
        }
        let examples = TRLParityTests.examples(c)
        let objective = try PreferenceObjective(loss: .orpo(beta: 0.1))
        parameters.zeroGrads()
        let metrics = try objective.accumulate(examples, model: model, window: objective.normalisers(of: examples))
        return (try XCTUnwrap(metrics["loss"]), Array(UnsafeBufferPointer(start: parameters.grads, count: parameters.count)))
    }

    func testBF16StepIsNearFP32AndPathsAgree() throws {
        let fp32 = try orpoStep(precision: .fp32)
        let portable = try orpoStep(precision: .bf16, portable: true)
        let lossGap = abs(portable.loss - fp32.loss) / abs(fp32.loss), gradGap = S.relativeL2(portable.grads, fp32.grads)
        XCTAssertLessThan(lossGap, 1e-2, "bf16 loss vs fp32")
        XCTAssertLessThan(gradGap, 5e-2, "bf16 LoRA gradients vs fp32")
        XCTAssertGreaterThan(gradGap, 1e-5, "bf16 rounding changed nothing: the products did not run in bf16")
        print(String(format: "MixedPrecisionTests: bf16 vs fp32: loss %.2e, LoRA gradients %.2e relative", lossGap, gradGap))
        guard GEMM.nativeBF16 else {
            throw XCTSkip("testBF16StepIsNearFP32AndPathsAgree: the native half needs AVX512_BF16 or AMX and oneDNN (\(CPU.description))")
        }
        let native = try orpoStep(precision: .bf16)
        let pathLoss = abs(native.loss - portable.loss) / abs(portable.loss), pathGrad = S.relativeL2(native.grads, portable.grads)
        print(String(format: "MixedPrecisionTests: native vs portable bf16: loss %.2e, LoRA gradients %.2e relative", pathLoss, pathGrad))
        XCTAssertLessThan(pathLoss, 1e-4, "native vs portable bf16 loss")
        XCTAssertLessThan(pathGrad, 0.1 * gradGap, "native vs portable bf16 gradients: not much closer than bf16 to fp32")
    }

    /// bf16 training keeps q, k, v, the attention output and gate/up in bf16 for backward: the
    /// step moves by bf16 rounding only (far inside the bf16-vs-fp32 gap), and the activation
    /// memory shrinks by exactly those tensors' f32 bytes less their bf16 copies.
    func testBF16SavedActivations() throws {
        let kept = try orpoStep(precision: .bf16, portable: true)
        let f32 = try orpoStep(precision: .bf16, portable: true, bf16Activations: false)
        let fp32 = try orpoStep(precision: .fp32)
        let gap = S.relativeL2(kept.grads, f32.grads), bf16Gap = S.relativeL2(f32.grads, fp32.grads)
        print(String(format: "MixedPrecisionTests: bf16 saved activations vs f32 ones: loss %.2e, LoRA gradients %.2e relative",
                     abs(kept.loss - f32.loss) / abs(f32.loss), gap))
        XCTAssertGreaterThan(gap, 0, "the saved activations were not rounded")
        XCTAssertLessThan(gap, 5e-2, "bf16 saved activations moved the gradients too far")
        XCTAssertLessThan(gap, 2 * bf16Gap, "bf16 saved activations cost more than bf16 products do")
        XCTAssertEqual(kept.loss, f32.loss, accuracy: 1e-2 * abs(f32.loss))

        let config = try ModelFiles.open(TRLParityTests.root.appendingPathComponent("model").path).config
        let (batch, seq, L) = (2, 16, config.layerCount)
        let tensorsPerToken = 2 * config.qDim + 2 * config.kvDim + 2 * config.intermediateSize
        let plain = Activations(config: config, layers: Array(repeating: [], count: L), batch: batch, seq: seq, training: true)
        let lean = Activations(config: config, layers: Array(repeating: [], count: L), batch: batch, seq: seq, training: true, bf16Saved: true)
        XCTAssertEqual(lean.keptBF16Count, L * batch * seq * tensorsPerToken)
        XCTAssertEqual(plain.arena.floatCount - lean.arena.floatCount, (L - 1) * batch * seq * tensorsPerToken,
                       "one f32 set of q, k, v, att, gate/up shared by all layers")
        let checkpointed = Activations(config: config, layers: Array(repeating: [], count: L), batch: batch, seq: seq, training: true,
                                       checkpointing: true, bf16Saved: true)
        XCTAssertEqual(checkpointed.keptBF16Count, 0, "checkpointing keeps no layer's tensors")
    }

    /// One ORPO step in bf16 against a real TRL ORPOTrainer step at its default bf16=True (autocast
    /// around the forward, fp32 log-probs) on the same LoRA weights and batch
    /// (reference/make_bf16_fixtures.py): loss within 1e-2 relative, LoRA
    /// gradients within 5e-2 relative L2; and the fp32 step against the fp32 reference as tightly
    /// as ever, so that the bf16 tolerance is not hiding a wrong step.
    func testBF16StepMatchesPyTorchAutocast() throws {
        let folder = TestSupport.fixtures.appendingPathComponent("bf16")
        let record = try JSONSerialization.jsonObject(with: Data(contentsOf: folder.appendingPathComponent("orpo_lora.json"))) as! [String: Any]
        let tensors = try SafeTensors.read(path: folder.appendingPathComponent("orpo_lora.safetensors").path)
        let lora = record["lora"] as! [String: Any]
        func step(_ precision: Precision) throws -> (loss: Double, grads: [String: [Float]]) {
            let model = try Transformer(files: ModelFiles.open(TRLParityTests.root.appendingPathComponent("model").path),
                                        fineTuning: .lora(LoRAConfig(rank: lora["r"] as! Int, alpha: Float((lora["alpha"] as! NSNumber).doubleValue))),
                                        precision: precision)
            let parameters = try XCTUnwrap(model.parameters)
            for e in parameters.entries {
                let values = dequantize(try XCTUnwrap(tensors["lora." + e.name], "fixture lacks \(e.name)"))
                XCTAssertEqual(values.count, e.count, e.name)
                values.withUnsafeBufferPointer { parameters.value(e.name)!.update(from: $0.baseAddress!, count: e.count) }
            }
            let examples = TRLParityTests.examples(try TRLParityTests.load("orpo"))
            let objective = try PreferenceObjective(loss: .orpo(beta: 0.1))
            parameters.zeroGrads()
            let metrics = try objective.accumulate(examples, model: model, window: objective.normalisers(of: examples))
            return (try XCTUnwrap(metrics["loss"]), Dictionary(uniqueKeysWithValues: parameters.entries.map { ($0.name, parameters.array($0.name, gradient: true)!) }))
        }
        func flat(_ grads: [String: [Float]]) -> [Float] { grads.keys.sorted().flatMap { grads[$0]! } }
        func reference(_ prefix: String) -> [Float] {
            tensors.keys.filter { $0.hasPrefix(prefix) }.sorted().flatMap { dequantize(tensors[$0]!) }
        }
        let expected16 = ((record["bf16"] as! [String: Any])["loss"] as! NSNumber).doubleValue
        let expected32 = ((record["fp32"] as! [String: Any])["loss"] as! NSNumber).doubleValue
        let fp32 = try step(.fp32)
        XCTAssertEqual(fp32.loss, expected32, accuracy: 1e-4 * abs(expected32), "fp32 loss vs PyTorch fp32")
        XCTAssertLessThan(S.relativeL2(flat(fp32.grads), reference("grad_fp32.")), 1e-3, "fp32 LoRA gradients vs PyTorch fp32")
        let bf16 = try step(.bf16)
        let lossGap = abs(bf16.loss - expected16) / abs(expected16), gradGap = S.relativeL2(flat(bf16.grads), reference("grad_bf16."))
        print(String(format: "MixedPrecisionTests: bf16 vs PyTorch autocast: loss %.2e, LoRA gradients %.2e relative L2", lossGap, gradGap))
        XCTAssertLessThan(lossGap, 1e-2, "bf16 loss vs PyTorch's bf16 autocast")
        XCTAssertLessThan(gradGap, 5e-2, "bf16 LoRA gradients vs PyTorch's bf16 autocast")
    }
}
