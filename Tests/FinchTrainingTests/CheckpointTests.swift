import XCTest
import FinchTestSupport
@testable import FinchKernels
@testable import FinchIO
@testable import FinchTokenizers
@testable import FinchModels
@testable import FinchGeneration
@testable import FinchDistributed
@testable import FinchTraining

final class CheckpointTests: XCTestCase {
    let directory = TestSupport.fixtures.appendingPathComponent("parity/llama_tied").path

    func trainer() throws -> Trainer {
        let config = LoRAConfig(rank: 4, alpha: 8, dropout: 0.1)
        let model = try Transformer(files: ModelFiles.open(directory), fineTuning: .lora(config), seed: 7)
        var settings = TrainerSettings()
        settings.batchSize = 1; settings.gradAccum = 2; settings.epochs = 3; settings.learningRate = 1e-2
        settings.warmupSteps = 2; settings.scheduler = .cosine; settings.weightDecay = 0.01
        return try Trainer(model: model, objective: try PreferenceObjective(loss: .orpo(beta: 0.1)),
                           train: AccumulationTests.preferenceExamples(), settings: settings)
    }

    func values(_ t: Trainer) -> [Float] { Array(UnsafeBufferPointer(start: t.parameters.values, count: t.parameters.count)) }

    func testResumeContinuesBitForBit() throws {
        let run = FileManager.default.temporaryDirectory.appendingPathComponent("finch-ckpt-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: run) }
        let straight = try trainer()
        XCTAssertEqual(straight.totalSteps, 6)
        var straightLosses: [Double] = []
        while !straight.isFinished { straightLosses.append(try straight.step().metrics["loss"]!) }

        let first = try trainer()
        for _ in 0..<3 { _ = try first.step() }
        let saved = try Checkpoint.save(first, runDirectory: run)
        XCTAssertEqual(Checkpoint.latest(in: run), saved)
        // An empty newer folder (issue 18: it blocked resuming) is passed over.
        try FileManager.default.createDirectory(atPath: run + "/checkpoint-5", withIntermediateDirectories: true)
        XCTAssertEqual(Checkpoint.latest(in: run), saved)
        XCTAssertTrue(FileManager.default.fileExists(atPath: saved + "/adapter_model.safetensors"), "LoRA checkpoints hold a PEFT adapter")

        let resumed = try trainer()
        try Checkpoint.restore(resumed, from: saved)
        var resumedLosses: [Double] = []
        while !resumed.isFinished { resumedLosses.append(try resumed.step().metrics["loss"]!) }
        XCTAssertEqual(resumedLosses, Array(straightLosses.suffix(3)))
        XCTAssertEqual(values(resumed), values(straight), "parameters after resuming equal an uninterrupted run's, bit for bit")
        XCTAssertEqual(resumed.optimizer.m, straight.optimizer.m)
    }

    func testRestoreRefusesOtherSettings() throws {
        let run = FileManager.default.temporaryDirectory.appendingPathComponent("finch-ckpt-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: run) }
        let t = try trainer()
        _ = try t.step()
        let saved = try Checkpoint.save(t, runDirectory: run)
        let model = try Transformer(files: ModelFiles.open(directory), fineTuning: .lora(LoRAConfig(rank: 4, alpha: 8)))
        var settings = t.settings
        settings.seed = 1
        let other = try Trainer(model: model, objective: try PreferenceObjective(loss: .orpo(beta: 0.1)),
                                train: AccumulationTests.preferenceExamples(), settings: settings)
        XCTAssertThrowsError(try Checkpoint.restore(other, from: saved)) { XCTAssertTrue("\($0)".contains("seed"), "\($0)") }
    }

    /// Hand-edited positions (issue 18: examplesInEpoch -7 crashed the next step; step 1,000,000
    /// "resumed" and trained nothing) are refused with the file and the field.
    func testRestoreRefusesImpossiblePositions() throws {
        let run = FileManager.default.temporaryDirectory.appendingPathComponent("finch-ckpt-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: run) }
        let t = try trainer()
        _ = try t.step()
        let saved = try Checkpoint.save(t, runDirectory: run)
        let statePath = saved + "/" + Checkpoint.stateFile
        // As a checkpoint from before manifests (the manifest would catch any edit first).
        try FileManager.default.removeItem(atPath: saved + "/" + Checkpoint.manifestFile)
        let original = try Data(contentsOf: URL(fileURLWithPath: statePath))
        func corrupt(_ edit: (inout [String: Any]) -> Void) throws {
            var object = try JSONSerialization.jsonObject(with: original) as! [String: Any]
            edit(&object)
            try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: statePath))
        }
        let cases: [(String, (inout [String: Any]) -> Void)] = [
            ("examplesInEpoch", { $0["examplesInEpoch"] = -7 }),
            ("state.step", { var s = $0["state"] as! [String: Any]; s["step"] = 1_000_000; $0["state"] = s }),
            ("state.step", { var s = $0["state"] as! [String: Any]; s["step"] = -5; $0["state"] = s }),
            ("state.random", { var s = $0["state"] as! [String: Any]; s["random"] = [1, 2]; $0["state"] = s }),
        ]
        for (field, edit) in cases {
            try corrupt(edit)
            XCTAssertThrowsError(try Checkpoint.restore(try trainer(), from: saved)) {
                XCTAssertTrue("\($0)".contains(Checkpoint.stateFile) && "\($0)".contains(field), "\($0)")
            }
        }
        try original.write(to: URL(fileURLWithPath: statePath))
        XCTAssertNoThrow(try Checkpoint.restore(try trainer(), from: saved))
    }

    /// A checkpoint carries a manifest of its files' sizes and SHA-256: one flipped bit in the
    /// optimizer moments, or a truncated adapter, is refused naming the file; a writer's leftover
    /// `.partial-PID` folder is cleared by the next save.
    func testManifestDetectsDamagedFiles() throws {
        let run = FileManager.default.temporaryDirectory.appendingPathComponent("finch-ckpt-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: run) }
        let t = try trainer()
        _ = try t.step()
        try FileManager.default.createDirectory(atPath: run + "/checkpoint-1.partial-99999", withIntermediateDirectories: true)
        let saved = try Checkpoint.save(t, runDirectory: run)
        XCTAssertFalse(FileManager.default.fileExists(atPath: run + "/checkpoint-1.partial-99999"), "a dead writer's folder is cleared")
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: saved + "/manifest.json"))) as! [String: Any]
        let files = (manifest["files"] as! [String: Any]).keys.sorted()
        XCTAssertEqual(files, ["adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "parameters.safetensors", "trainer_state.json"])
        XCTAssertNoThrow(try Checkpoint.restore(try trainer(), from: saved))

        let optimizer = URL(fileURLWithPath: saved + "/optimizer.safetensors")
        let original = try Data(contentsOf: optimizer)
        var flipped = original
        flipped[flipped.count - 3] ^= 0x10
        try flipped.write(to: optimizer)
        XCTAssertThrowsError(try Checkpoint.restore(try trainer(), from: saved)) {
            XCTAssertTrue("\($0)".contains("optimizer.safetensors") && "\($0)".contains("SHA-256") && "\($0)".contains("damaged"), "\($0)")
        }
        try original.write(to: optimizer)
        let adapter = URL(fileURLWithPath: saved + "/adapter_model.safetensors")
        try Data(contentsOf: adapter).dropLast(10).write(to: adapter)
        XCTAssertThrowsError(try Checkpoint.restore(try trainer(), from: saved)) {
            XCTAssertTrue("\($0)".contains("adapter_model.safetensors") && "\($0)".contains("bytes"), "\($0)")
        }
    }
}
