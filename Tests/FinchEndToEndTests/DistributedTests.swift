import XCTest
import FinchTestSupport
@testable import FinchKernels
@testable import FinchIO
@testable import FinchTokenizers
@testable import FinchModels
@testable import FinchGeneration
@testable import FinchDistributed
@testable import FinchTraining
@testable import FinchExport

/// Data parallel training under Open MPI's `mpirun` on loopback: 2 ranks give the update of one
/// process with the whole batch; a rank that dies or hangs stops the job with a clear error in
/// bounded time, and the last checkpoint resumes (with another rank count too).
/// scripts/setup.sh installs Open MPI, so CI runs these; they skip only where mpirun is absent.
final class DistributedTests: TemporaryDirectoryTestCase {
    static let mpirun = ["/usr/bin/mpirun", "/usr/local/bin/mpirun"].first { FileManager.default.isExecutableFile(atPath: $0) }

    /// `mpirun -np <ranks> finch <arguments>`: as root (CI's containers), more ranks than cores allowed,
    /// no cross-memory-attach (often denied in containers).
    func mpirun(ranks: Int, _ arguments: [String], environment: [String: String] = [:], timeout: TimeInterval = 120) throws -> FinchProcess.Result {
        guard let mpirun = Self.mpirun else { throw XCTSkip("mpirun is not installed (scripts/setup.sh installs openmpi-bin)") }
        let env = ["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                   "OMPI_MCA_btl_vader_single_copy_mechanism": "none"].merging(environment) { $1 }
        return try FinchProcess.run(executable: URL(fileURLWithPath: mpirun),
                                    ["--oversubscribe", "-np", "\(ranks)", try FinchProcess.binary().path] + arguments,
                                    environment: env, timeout: timeout)
    }

    /// Rows of different lengths, so that the window's token counts matter.
    func data(preference: Bool, rows: Int) throws -> String {
        let animals = ["cat", "dog", "owl", "fox", "bee", "elk"]
        let lines = (0..<rows).map { i -> String in
            let a = animals[i % animals.count]
            let prompt = "What does a \(a) say? (\(i))" + String(repeating: " Please answer.", count: i % 4)
            let chosen = "A \(a) makes its own sound." + String(repeating: " Truly.", count: (i * 5) % 3)
            return preference
                ? #"{"prompt": "\#(prompt)", "chosen": "\#(chosen)", "rejected": "I am not sure what a \#(a) would say, it depends."}"#
                : #"{"prompt": "\#(prompt)", "completion": "\#(chosen)"}"#
        }
        return try write(preference ? "pairs.jsonl" : "sft.jsonl", lines.joined(separator: "\n") + "\n")
    }

    func arguments(method: String, data: String, output: String, steps: Int) throws -> [String] {
        ["train", "--method", method, "--model", try tinyChatModel(), "--data", data, "--output", output,
         "--max-steps", "\(steps)", "--lora-r", "4", "--seed", "5"]
    }

    func floats(_ path: String) throws -> [String: [Float]] {
        try SafeTensors.read(path: path).mapValues { dequantize($0) }
    }

    func lastMetrics(_ output: String) throws -> [String: Double] {
        let line = try String(contentsOfFile: output + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").last!
        return (try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]).compactMapValues { ($0 as? NSNumber)?.doubleValue }
    }

    /// One SGD step (its update is the gradient, unlike AdamW's first step) with 2 ranks against
    /// one process with the whole batch; LoRA's B starts at zero, so B is the update.
    func checkOneStepMatches(method: String, perRank: [String]) throws {
        let data = try data(preference: method != "sft", rows: 4)
        // fp32: the ranks' micro-batches lay rows out differently from the single process's
        // batch (ORPO's shared prompt spans the shortest one of each micro-batch), and bf16
        // rounding turns that order-of-summation noise into ~1e-3; the all-reduce is exact either way.
        let common = ["--optimizer", "sgd", "--lr", "0.5", "--precision", "fp32"]
        let single = temporary.appendingPathComponent("single").path
        let one = try FinchProcess.run(try arguments(method: method, data: data, output: single, steps: 1) + common + ["--batch-size", "4"])
        XCTAssertEqual(one.status, 0, one.err)
        let ranks = temporary.appendingPathComponent("ranks").path
        let two = try mpirun(ranks: 2, try arguments(method: method, data: data, output: ranks, steps: 1) + common + perRank)
        XCTAssertEqual(two.status, 0, two.out + two.err)
        XCTAssertEqual(two.out.components(separatedBy: "step 1/1").count - 1, 1, "only rank 0 reports progress: \(two.out)")

        let a = try floats(single + "/adapter_model.safetensors"), b = try floats(ranks + "/adapter_model.safetensors")
        XCTAssertEqual(a.keys.sorted(), b.keys.sorted())
        let names = a.keys.sorted().filter { $0.contains("lora_B") }
        XCTAssertFalse(names.isEmpty)
        let update = names.flatMap { a[$0]! }, distributed = names.flatMap { b[$0]! }
        XCTAssertGreaterThan(update.map(abs).max()!, 0, "the step changed nothing")
        let rel = TestSupport.relativeL2(distributed, update)
        print("DistributedTests \(method) 2 ranks \(perRank.joined(separator: " ")) vs 1 process --batch-size 4: update rel. L2 \(rel)")
        XCTAssertLessThan(rel, 1e-5)
        for name in a.keys.sorted() where name.contains("lora_A") { XCTAssertEqual(a[name]!, b[name]!, "\(name): A starts equal on every rank") }
        // Rank 0 logs the global loss and gradient norm.
        let m1 = try lastMetrics(single), m2 = try lastMetrics(ranks)
        for key in ["loss", "grad_norm"] { XCTAssertEqual(m2[key]!, m1[key]!, accuracy: 1e-5 * abs(m1[key]!), key) }
    }

    func testTwoRanksGiveTheWholeBatchUpdateSFT() throws {
        try checkOneStepMatches(method: "sft", perRank: ["--batch-size", "2"])
    }

    /// ORPO's NLL is normalised by the window's tokens and its odds-ratio term by its pairs; here
    /// each rank also accumulates two micro-batches of one pair (2 ranks x 1 x 2 = 4).
    func testTwoRanksGiveTheWholeBatchUpdateORPO() throws {
        try checkOneStepMatches(method: "orpo", perRank: ["--batch-size", "1", "--grad-accum", "2"])
    }

    /// GRPO: each rank samples and scores its prompts' completions (seeded by the example, so
    /// the same completions as one process), the window's counts are summed before the first
    /// backward, and the update is the whole batch's.
    func testTwoRanksGiveTheWholeBatchUpdateGRPO() throws {
        let data = try write("prompts.jsonl", (0..<4).map { #"{"prompt": "Count to \#($0 + 2), slowly (\#($0))."}"# }.joined(separator: "\n") + "\n")
        let common = ["--optimizer", "sgd", "--lr", "0.5", "--precision", "fp32", "--num-generations", "3", "--max-completion-length", "5",
                      "--reward-command", "awk '{ print length($0) % 7 }'", "--beta", "0.04", "--loss-type", "bnpo"]
        let single = temporary.appendingPathComponent("single").path
        let one = try FinchProcess.run(try arguments(method: "grpo", data: data, output: single, steps: 1) + common + ["--batch-size", "4"])
        XCTAssertEqual(one.status, 0, one.err)
        let ranks = temporary.appendingPathComponent("ranks").path
        let two = try mpirun(ranks: 2, try arguments(method: "grpo", data: data, output: ranks, steps: 1) + common + ["--batch-size", "1", "--grad-accum", "2"])
        XCTAssertEqual(two.status, 0, two.out + two.err)
        let a = try floats(single + "/adapter_model.safetensors"), b = try floats(ranks + "/adapter_model.safetensors")
        let names = a.keys.sorted().filter { $0.contains("lora_B") }
        let update = names.flatMap { a[$0]! }, distributed = names.flatMap { b[$0]! }
        XCTAssertGreaterThan(update.map(abs).max()!, 0, "the step changed nothing")
        let rel = TestSupport.relativeL2(distributed, update)
        print("DistributedTests grpo 2 ranks vs 1 process: update rel. L2 \(rel)")
        XCTAssertLessThan(rel, 1e-5)
        let m1 = try lastMetrics(single), m2 = try lastMetrics(ranks)
        for key in ["loss", "grad_norm", "reward", "reward_std", "completions/mean_length", "kl", "entropy", "num_tokens"] {
            XCTAssertEqual(m2[key] ?? .nan, m1[key] ?? .nan, accuracy: 1e-5 * max(abs(m1[key] ?? 1), 1e-3), key)
        }
        XCTAssertNil(m2["completions/min_length"], "extremes over ranks are left out")
    }

    /// Rank 1 dies after step 3 (checkpoint at step 2): mpirun stops rank 0, which says why;
    /// checkpoint-2 is intact and one process resumes it (same global batch: 1 x 2 x 2).
    func testKilledRankStopsTheJobAndOneProcessResumes() throws {
        let data = try data(preference: true, rows: 12)
        let output = temporary.appendingPathComponent("crashed").path
        let common = ["--save-steps", "2", "--batch-size", "2"]
        let start = Date()
        let crash = try mpirun(ranks: 2, try arguments(method: "orpo", data: data, output: output, steps: 6) + common,
                               environment: ["FINCH_TEST_FAILING_RANK": "1", "FINCH_TEST_CRASH_AFTER_STEP": "3"], timeout: 60)
        XCTAssertNotEqual(crash.status, 0)
        XCTAssertLessThan(Date().timeIntervalSince(start), 60)
        XCTAssertTrue(crash.err.contains("error: rank 0: stopped by mpirun"), crash.err)
        XCTAssertEqual(Checkpoint.latest(in: output), output + "/checkpoint-2")
        XCTAssertFalse(FileManager.default.fileExists(atPath: output + "/adapter_model.safetensors"))

        let wrong = try FinchProcess.run(try arguments(method: "orpo", data: data, output: output, steps: 6) + common + ["--resume"])
        XCTAssertEqual(wrong.status, 1)
        XCTAssertTrue(wrong.err.contains("2 x 2 x 1 = 4"), wrong.err)
        let resumed = try FinchProcess.run(try arguments(method: "orpo", data: data, output: output, steps: 6) + common
                                           + ["--grad-accum", "2", "--resume"])
        XCTAssertEqual(resumed.status, 0, resumed.err)
        XCTAssertTrue(resumed.out.contains("resuming at step 2"), resumed.out)

        let straight = temporary.appendingPathComponent("straight").path
        XCTAssertEqual(try mpirun(ranks: 2, try arguments(method: "orpo", data: data, output: straight, steps: 6) + common).status, 0)
        let a = try floats(straight + "/adapter_model.safetensors"), b = try floats(output + "/adapter_model.safetensors")
        let names = a.keys.sorted()
        let rel = TestSupport.relativeL2(names.flatMap { b[$0]! }, names.flatMap { a[$0]! })
        print("DistributedTests: 2 ranks killed at step 3, resumed by 1 process, vs 2 ranks straight: adapter rel. L2 \(rel)")
        XCTAssertLessThan(rel, 1e-5)
        let steps = try String(contentsOfFile: output + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["step"] as? Int
        }
        XCTAssertEqual(steps, [1, 2, 3, 4, 5, 6])
    }

    /// Rank 1 stops answering after step 3: rank 0's watchdog names itself and the collective,
    /// and aborts the job once --collective-timeout has passed.
    func testHungRankStopsTheJobWithinTheTimeout() throws {
        let data = try data(preference: true, rows: 12)
        let output = temporary.appendingPathComponent("hung").path
        let start = Date()
        let hung = try mpirun(ranks: 2, try arguments(method: "orpo", data: data, output: output, steps: 6)
                              + ["--save-steps", "2", "--batch-size", "2", "--collective-timeout", "3"],
                              environment: ["FINCH_TEST_FAILING_RANK": "1", "FINCH_TEST_HANG_AFTER_STEP": "3"], timeout: 60)
        let seconds = Date().timeIntervalSince(start)
        XCTAssertNotEqual(hung.status, 0)
        XCTAssertLessThan(seconds, 60)
        XCTAssertTrue(hung.err.contains("error: rank 0: all-reduce of the normalisers (step 4) did not complete within 3 s"), hung.err)
        XCTAssertEqual(Checkpoint.latest(in: output), output + "/checkpoint-2")
        print("DistributedTests: a hung rank stopped the job after \(String(format: "%.1f", seconds)) s (timeout 3 s)")
    }

    /// A resumed 1-process checkpoint continues on 2 ranks (2 x 2 x 1 = 1 x 2 x 2) to the same adapter.
    func testOneProcessCheckpointResumesOnTwoRanks() throws {
        let data = try data(preference: false, rows: 12)
        let common = ["--save-steps", "2", "--batch-size", "2"]
        let straight = temporary.appendingPathComponent("straight").path
        XCTAssertEqual(try FinchProcess.run(try arguments(method: "sft", data: data, output: straight, steps: 5) + common + ["--grad-accum", "2"]).status, 0)
        let output = temporary.appendingPathComponent("crashed").path
        let crash = try FinchProcess.run(try arguments(method: "sft", data: data, output: output, steps: 5) + common + ["--grad-accum", "2"],
                                         environment: ["FINCH_TEST_CRASH_AFTER_STEP": "3"])
        XCTAssertNotEqual(crash.status, 0)
        let resumed = try mpirun(ranks: 2, try arguments(method: "sft", data: data, output: output, steps: 5) + common + ["--resume"])
        XCTAssertEqual(resumed.status, 0, resumed.out + resumed.err)
        XCTAssertTrue(resumed.out.contains("resuming at step 2"), resumed.out)
        let a = try floats(straight + "/adapter_model.safetensors"), b = try floats(output + "/adapter_model.safetensors")
        let names = a.keys.sorted()
        XCTAssertLessThan(TestSupport.relativeL2(names.flatMap { b[$0]! }, names.flatMap { a[$0]! }), 1e-5)
    }
}
