import ArgumentParser
import Finch
import Foundation

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench", abstract: "Print speed figures (build with -c release).",
        subcommands: [GEMM.self, Step.self])

    struct GEMM: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "sgemm GFLOP/s on SmolLM2-135M's training shapes.")
        @Option(help: "Repetitions per shape (median reported).") var repetitions = 5

        func run() {
            print(BLAS.description)
            for (m, n, k) in [(2048, 576, 576), (2048, 1536, 576), (2048, 49152, 576)] {
                let gflops = Benchmarks.sgemm(m: m, n: n, k: k, repetitions: repetitions)
                print(String(format: "finch sgemm %dx%dx%d: %.1f GFLOP/s", m, n, k, gflops))
            }
        }
    }

    struct Step: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Time one LoRA (or full) forward + backward step.")
        @Option(help: "A model folder or .gguf; default: random weights of SmolLM2-135M's shape.") var model: String?
        @Option(name: .customLong("shape"), help: "Random model shape when no --model: smollm2-135m or llama3.2-1b.")
        var shape = "smollm2-135m"
        @Option var batch = 4
        @Option var seq = 512
        @Option(name: .customLong("lora-r")) var loraRank = 16
        @Option(name: .customLong("lora-alpha")) var loraAlpha: Float = 32
        @Flag(help: "Train every weight instead of LoRA adapters.") var full = false
        @Option var repetitions = 3
        @Option(help: "Time a real training step of this objective (sft: --batch rows; orpo: --batch pairs, so 2 x batch rows of --seq) through the Trainer, instead of the bare cross-entropy step with per-phase times.")
        var method: String?
        @Option(name: .customLong("prompt-length"), help: "ORPO: shared, masked prompt tokens at the start of each row.")
        var promptLength = 64
        @Flag(help: "With --method: include gradient clipping and the AdamW update, as a trainer's step does.")
        var optimizer = false
        @Option(help: "Random model weights: f32, or a 4-bit base (q4_0, q4_1) for every matrix.")
        var base = "f32"

        func run() throws {
            try runReportingErrors {
                let files: ModelFiles
                if let model { files = try ModelFiles.open(model) } else {
                    guard let dtype = DType(rawValue: base.uppercased()), [.f32, .q4_0, .q4_1].contains(dtype) else {
                        throw ValidationError("unknown --base \(base); use f32, q4_0 or q4_1")
                    }
                    switch shape {
                    case "smollm2-135m": files = .random(config: .smolLM2_135M, quantization: dtype)
                    case "llama3.2-1b": files = .random(config: .llama32_1B, quantization: dtype)
                    default: throw ValidationError("unknown --shape \(shape); use smollm2-135m or llama3.2-1b")
                    }
                }
                let tuning: FineTuning = full ? .full : .lora(LoRAConfig(rank: loraRank, alpha: loraAlpha))
                let transformer = try Transformer(files: files, fineTuning: tuning)
                if let method {
                    guard let kind = Benchmarks.Method(rawValue: method) else {
                        throw ValidationError("unknown --method \(method); use sft or orpo")
                    }
                    let t = try Benchmarks.trainingStep(model: transformer, method: kind, batch: batch, seq: seq,
                                                        promptLength: promptLength, optimizer: optimizer, repetitions: repetitions)
                    print(BLAS.description)
                    let rows = kind == .orpo ? "\(batch) pairs (\(2 * batch) rows)" : "\(batch) rows"
                    print(String(format: "finch train step (%@, %@, %@, %@ x %d%@): %.3f s/step, %.0f tokens/s, %.1f GFLOP/s",
                                 files.source, kind.rawValue, full ? "full" : "LoRA r=\(loraRank)", rows, seq,
                                 optimizer ? ", AdamW" : "", t.secondsPerStep, t.tokensPerSecond, t.flops / t.secondsPerStep / 1e9))
                    return
                }
                let t = Benchmarks.step(model: transformer, batch: batch, seq: seq, repetitions: repetitions)
                print(BLAS.description)
                for (phase, seconds) in Benchmarks.stepPhases(model: transformer, batch: batch, seq: seq) {
                    print(String(format: "  %@: %.3f s", phase, seconds))
                }
                print(String(format: "finch step (%@, %@, batch %d x %d): %.3f s/step, %.0f tokens/s, %.1f GFLOP/s",
                             files.source, full ? "full" : "LoRA r=\(loraRank)", batch, seq,
                             t.secondsPerStep, t.tokensPerSecond, t.flops / t.secondsPerStep / 1e9))
            }
        }
    }
}
