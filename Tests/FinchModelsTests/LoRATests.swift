import XCTest
import FinchTestSupport
@testable import FinchKernels
@testable import FinchIO
@testable import FinchModels

final class LoRATests: XCTestCase {
    typealias S = TestSupport
    let directory = TestSupport.fixtures.appendingPathComponent("parity/llama_tied").path

    func batch() -> (TokenBatch, [Int32]) {
        let rows = [[5, 9, 17, 3, 44, 2, 8], [7, 7, 1, 90]]
        let batch = TokenBatch(rows: rows)
        var labels = [Int32](repeating: -100, count: batch.tokenCount)
        for (b, row) in rows.enumerated() { for (t, id) in row.enumerated() { labels[b * batch.seq + t] = Int32(id) } }
        return (batch, TokenBatch.shiftedTargets(labels: labels, batch: batch.batch, seq: batch.seq))
    }

    func testTargetsSelectModulesAndPEFTInitialisation() throws {
        let config = LoRAConfig(rank: 2, alpha: 4, targets: ["q_proj", "v_proj"])
        let model = try Transformer(files: ModelFiles.open(directory), fineTuning: .lora(config), seed: 3)
        let names = model.parameters!.entries.map(\.name)
        XCTAssertEqual(names.count, 2 * 2 * 2, "2 layers x 2 modules x (A, B)")
        XCTAssertTrue(names.allSatisfy { $0.contains("q_proj") || $0.contains("v_proj") })
        let a = model.parameters!.array("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")!
        let b = model.parameters!.array("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight")!
        XCTAssertTrue(b.allSatisfy { $0 == 0 }, "B starts at zero, so a new adapter leaves the model unchanged")
        XCTAssertLessThanOrEqual(a.map(abs).max()!, 1 / Float(64).squareRoot())
        XCTAssertGreaterThan(a.map(abs).max()!, 0.5 / Float(64).squareRoot())
        let base = try Transformer(files: ModelFiles.open(directory))
        let (tokens, _) = batch()
        XCTAssertEqual(model.logits(tokens), base.logits(tokens))
    }

    /// Gate and up's LoRA terms run as one (`JointLoRA`: A stacked, B block diagonal): the
    /// loss and every gradient equal those of the separate terms, to fp32 rounding.
    func testGateAndUpLoRATermsRunTogetherAsTheSeparateOnesDo() throws {
        let config = LoRAConfig(rank: 4, alpha: 8, targets: ["gate_proj", "up_proj", "q_proj"])
        let model = try Transformer(files: ModelFiles.open(directory), fineTuning: .lora(config), seed: 5)
        let p = model.parameters!
        for i in 0..<p.count { p.values[i] += Float(i % 7) * 0.01 - 0.03 }   // nonzero B
        let (tokens, targets) = batch()
        func run(joint: Bool) -> (loss: Double, grads: [Float]) {
            JointLoRA.enabled = joint
            defer { JointLoRA.enabled = true }
            p.zeroGrads()
            let loss = model.crossEntropyStep(tokens, targets: targets, weight: 1).sum
            return (loss, Array(UnsafeBufferPointer(start: p.grads, count: p.count)))
        }
        let together = run(joint: true), apart = run(joint: false)
        XCTAssertEqual(together.loss, apart.loss, accuracy: 1e-6 * abs(apart.loss))
        for entry in p.entries {
            let range = entry.offset..<entry.offset + entry.count
            let error = S.relativeL2(Array(together.grads[range]), Array(apart.grads[range]))
            XCTAssertLessThan(error, 1e-5, entry.name)
            XCTAssertGreaterThan(apart.grads[range].map(abs).max()!, 0, "\(entry.name) has a gradient")
        }
    }

    /// With dropout the gradient is that of the loss under the sampled mask: replaying the same
    /// random state makes the loss a deterministic function whose differences we can take.
    func testDropoutGradientMatchesFiniteDifferencesUnderTheSameMask() throws {
        let config = LoRAConfig(rank: 4, alpha: 8, dropout: 0.3)
        let model = try Transformer(files: ModelFiles.open(directory), fineTuning: .lora(config), seed: 5)
        let p = model.parameters!
        for i in 0..<p.count { p.values[i] = Float(i % 7) * 0.01 - 0.03 + p.values[i] }  // nonzero B
        let (tokens, targets) = batch()
        let start = model.random
        func loss() -> Double {
            model.random = start
            p.zeroGrads()
            return model.crossEntropyStep(tokens, targets: targets, weight: 1).sum
        }
        let sampled = loss()
        model.random = FinchRandom(seed: 99)
        p.zeroGrads()
        XCTAssertNotEqual(model.crossEntropyStep(tokens, targets: targets, weight: 1).sum, sampled, "another mask, another loss")
        _ = loss()
        let analytic = Array(UnsafeBufferPointer(start: p.grads, count: p.count))
        let evalLogits = model.logits(tokens)
        model.random = start
        XCTAssertEqual(model.logits(tokens), evalLogits, "no dropout outside training")
        // The largest gradients, probed by central differences.
        let probes = analytic.indices.sorted { abs(analytic[$0]) > abs(analytic[$1]) }.prefix(6)
        for i in probes {
            let saved = p.values[i], eps: Float = 1e-2
            p.values[i] = saved + eps; let plus = loss()
            p.values[i] = saved - eps; let minus = loss()
            p.values[i] = saved
            let numeric = (plus - minus) / Double(2 * eps)
            XCTAssertEqual(Double(analytic[i]), numeric, accuracy: 2e-2 * abs(numeric) + 1e-4, "parameter \(i)")
        }
    }
}

final class ChecksumTests: XCTestCase {
    func testKnownDigestsOfDataFilesAndFolders() throws {
        func digest(_ s: String) -> String { Checksum.sha256Hex(Data(s.utf8)) }
        XCTAssertEqual(digest(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(digest("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("finch-checksum-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let file = folder.appendingPathComponent("a.txt")
        try Data(String(repeating: "a", count: 1000).utf8).write(to: file)
        let fileDigest = "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"
        XCTAssertEqual(try Checksum.sha256Hex(ofPath: file.path), fileDigest)
        // A folder: the digest of its files' "name digest" lines, as run.json has always recorded it.
        XCTAssertEqual(try Checksum.sha256Hex(ofPath: folder.path), digest("a.txt \(fileDigest)\n"))
        XCTAssertThrowsError(try Checksum.sha256Hex(ofPath: folder.appendingPathComponent("missing").path))
    }
}
