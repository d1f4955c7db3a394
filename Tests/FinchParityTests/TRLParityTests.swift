import XCTest
import FinchTestSupport
@testable import Finch
@testable import FinchKernels
@testable import FinchIO
@testable import FinchTokenizers
@testable import FinchModels
@testable import FinchGeneration
@testable import FinchDistributed
@testable import FinchTraining
@testable import FinchExport

/// One SGD step (lr 1, full fine-tuning, no clipping) against TRL 1.16's own trainers on the
/// batches they collated (Fixtures/trainers, reference/make_trainer_fixtures.py): step-1 loss
/// and every logged metric within 1e-4, every weight's update within 1e-3 relative L2.
final class TRLParityTests: XCTestCase {
    typealias S = TestSupport
    static let root = TestSupport.fixtures.appendingPathComponent("trainers")
    var root: URL { Self.root }

    struct Case {
        let json: [String: Any]
        let tensors: [String: TensorData]
        var config: [String: Any] { json["config"] as! [String: Any] }
        var metrics: [String: Double] { (json["metrics"] as! [String: Any]).mapValues { ($0 as! NSNumber).doubleValue } }

        /// Rows of a [rows, T] tensor, each cut to its attention mask.
        func rows(_ name: String, mask: String) -> [[Int32]] {
            let values = dequantize(tensors[name]!), m = dequantize(tensors[mask]!)
            let shape = tensors[name]!.shape
            return (0..<shape[0]).map { r in
                (0..<shape[1]).filter { m[r * shape[1] + $0] != 0 }.map { Int32(values[r * shape[1] + $0]) }
            }
        }
        func rows(_ name: String, like mask: String) -> [[Int32]] { rows(name, mask: mask) }
    }

    static func load(_ name: String) throws -> Case {
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: root.appendingPathComponent("\(name).json"))) as! [String: Any]
        return Case(json: json, tensors: try SafeTensors.read(path: root.appendingPathComponent("\(name).safetensors").path))
    }

    static func examples(_ c: Case) -> [Example] {
        if c.tensors["batch.labels"] != nil {   // SFT
            let ids = c.rows("batch.input_ids", mask: "batch.attention_mask"), labels = c.rows("batch.labels", like: "batch.attention_mask")
            return zip(ids, labels).enumerated().map { Example(id: $0, fields: ["input_ids": $1.0, "labels": $1.1]) }
        }
        if let labels = c.tensors["batch.label"] {   // KTO: prompt + completion rows, loss on the completion
            let ids = c.rows("batch.input_ids", mask: "batch.attention_mask")
            let completion = c.rows("batch.completion_mask", mask: "batch.attention_mask")
            let desirable = dequantize(labels)
            return (0..<ids.count).map { i in
                Example(id: i, fields: ["input_ids": ids[i], "labels": zip(ids[i], completion[i]).map { $1 != 0 ? $0 : -100 },
                                        "label": [desirable[i] != 0 ? 1 : 0]])
            }
        }
        if c.tensors["batch.chosen_input_ids"] != nil {   // ORPO, CPO
            let ci = c.rows("batch.chosen_input_ids", mask: "batch.chosen_attention_mask")
            let cl = c.rows("batch.chosen_labels", like: "batch.chosen_attention_mask")
            let ri = c.rows("batch.rejected_input_ids", mask: "batch.rejected_attention_mask")
            let rl = c.rows("batch.rejected_labels", like: "batch.rejected_attention_mask")
            return (0..<ci.count).map { Example(id: $0, fields: ["chosen_input_ids": ci[$0], "chosen_labels": cl[$0],
                                                                  "rejected_input_ids": ri[$0], "rejected_labels": rl[$0]]) }
        }
        // DPO: rows 0..B-1 prompt+chosen, B..2B-1 prompt+rejected; labels where completion_mask is 1.
        let ids = c.rows("batch.input_ids", mask: "batch.attention_mask")
        let completion = c.rows("batch.completion_mask", mask: "batch.attention_mask")
        let labels = zip(ids, completion).map { row, mask in zip(row, mask).map { $1 != 0 ? $0 : -100 } }
        let B = ids.count / 2
        return (0..<B).map { Example(id: $0, fields: ["chosen_input_ids": ids[$0], "chosen_labels": labels[$0],
                                                       "rejected_input_ids": ids[B + $0], "rejected_labels": labels[B + $0]]) }
    }

    func objective(_ c: Case) throws -> Objective {
        let trainer = String((c.json["trainer"] as! String).split(separator: ".").last!)
        let config = c.config
        let beta = (config["beta"] as? NSNumber)?.doubleValue ?? 0.1
        let smoothing = (config["label_smoothing"] as? NSNumber)?.doubleValue ?? 0
        switch trainer {
        case "SFTTrainer": return SFTObjective()
        case "KTOTrainer":
            let reference = try Transformer(files: ModelFiles.open(root.appendingPathComponent(c.json["reference_model"] as! String).path))
            return KTOObjective(loss: KTOObjective.Loss(rawValue: config["loss_type"] as? String ?? "kto")!, beta: beta,
                                desirableWeight: (config["desirable_weight"] as? NSNumber)?.doubleValue ?? 1,
                                undesirableWeight: (config["undesirable_weight"] as? NSNumber)?.doubleValue ?? 1, reference: .model(reference))
        case "ORPOTrainer": return try PreferenceObjective(loss: .orpo(beta: beta))
        case "CPOTrainer":
            let alpha = (config["cpo_alpha"] as? NSNumber)?.doubleValue ?? 1
            if (config["loss_type"] as? String) == "simpo" {
                return try PreferenceObjective(loss: .simpo(beta: beta, gamma: (config["simpo_gamma"] as! NSNumber).doubleValue, alpha: alpha, labelSmoothing: smoothing))
            }
            return try PreferenceObjective(loss: .cpo(beta: beta, alpha: alpha, labelSmoothing: smoothing))
        default:
            let types = config["loss_type"] as? [String] ?? ["sigmoid"]
            let kind = PreferenceLoss.DPOKind(rawValue: types[0])!
            let reference = try Transformer(files: ModelFiles.open(root.appendingPathComponent("ref_model").path))
            return try PreferenceObjective(loss: .dpo(kind: kind, beta: beta, labelSmoothing: kind == .robust ? smoothing : 0),
                                           reference: .model(reference))
        }
    }

    func check(_ name: String) throws {
        let c = try Self.load(name)
        let policy = c.json["policy_model"] as? String ?? "model"
        let model = try Transformer(files: ModelFiles.open(root.appendingPathComponent(policy).path), fineTuning: .full)
        let p = model.parameters!
        let before = Array(UnsafeBufferPointer(start: p.values, count: p.count))
        var settings = TrainerSettings()
        settings.batchSize = 4; settings.gradAccum = 1; settings.learningRate = 1; settings.optimizer = .sgd
        settings.maxGradNorm = 0; settings.scheduler = .constant
        let trainer = try Trainer(model: model, objective: try objective(c), train: Self.examples(c), settings: settings)
        let log = try trainer.step()

        for (key, expected) in c.metrics {
            guard let value = log.metrics[key] else { XCTFail("\(name): Finch does not log \(key)"); continue }
            // Small differences of large sums (DPO rewards) get an absolute floor (TRL_SEMANTICS.md, Tolerances).
            let floor = key.hasPrefix("rewards/") ? 2e-5 : 1e-6
            XCTAssertEqual(value, expected, accuracy: max(1e-4 * abs(expected), floor), "\(name) \(key)")
        }
        let after = Array(UnsafeBufferPointer(start: p.values, count: p.count))
        for entry in p.entries {
            let update = (entry.offset..<entry.offset + entry.count).map { after[$0] - before[$0] }
            let expected = dequantize(c.tensors["update." + entry.name]!)
            XCTAssertLessThan(S.relativeL2(update, expected), 1e-3, "\(name) update of \(entry.name)")
        }
    }

    func testSFT() throws { for name in ["sft_completion", "sft_text", "sft_messages"] { try check(name) } }
    func testORPO() throws { for name in ["orpo", "orpo_chat"] { try check(name) } }
    func testDPO() throws { for name in ["dpo_sigmoid", "dpo_ipo", "dpo_hinge", "dpo_robust", "dpo_sigmoid_chat"] { try check(name) } }
    func testCPOAndSimPO() throws { for name in ["cpo_sigmoid", "simpo"] { try check(name) } }
    /// KTO with its KL estimate (positive here, so it moves the loss) and APO-zero without one.
    func testKTO() throws { for name in ["kto", "kto_apo"] { try check(name) } }
}
