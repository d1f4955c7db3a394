import ArgumentParser

extension PrecisionChoice: ExpressibleByArgument {}
import Finch
import Foundation

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench", abstract: "Print speed figures (build with -c release).",
        subcommands: [Peak.self, GEMMBench.self, Step.self, Decode.self, DataParallel.self])

    struct Peak: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "This CPU's measured fp32 FMA peak and, where it has AVX512_BF16 or AMX, its bf16 peak (AMX's tile products where present).")

        func run() {
            print("CPU: \(CPU.description)")
            let p = Benchmarks.peaks()
            print(String(format: "finch peak fp32 (%@, %d threads): %.1f GFLOP/s", p.fp32Kind, Parallel.coreCount, p.fp32))
            if let bf16 = p.bf16 {
                print(String(format: "finch peak bf16 (%@, %d threads): %.1f GFLOP/s", p.bf16Kind, Parallel.coreCount, bf16))
                if p.amx != nil, let dot = p.bf16Dot {
                    print(String(format: "finch peak bf16 dot products (AVX512_BF16, %d threads): %.1f GFLOP/s", Parallel.coreCount, dot))
                }
            } else {
                print("finch peak bf16: this CPU has no AVX512_BF16 or AMX (within FINCH_ISA)")
            }
        }
    }

    struct GEMMBench: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "gemm",
            abstract: "Matmul GFLOP/s on SmolLM2-135M's training shapes, fp32 and bf16, as a share of this CPU's measured peaks.")
        @Option(help: "Repetitions per shape (median reported).") var repetitions = 5

        func run() {
            print("CPU: \(CPU.description)")
            print("GEMM: \(GEMM.description); bf16 \(GEMM.nativeBF16 ? "native" : "portable (rounded inputs, fp32 GEMM)")")
            let peaks = Benchmarks.peaks()
            print(String(format: "peaks: fp32 %.1f GFLOP/s (%@)%@", peaks.fp32, peaks.fp32Kind,
                         peaks.bf16.map { String(format: ", bf16 %.1f GFLOP/s (%@)", $0, peaks.bf16Kind) } ?? ""))
            for (m, n, k) in [(2048, 576, 576), (2048, 1536, 576), (2048, 576, 1536), (2048, 49152, 576)] {
                for path in Benchmarks.GEMMPath.allCases {
                    if path == .openBLAS && GEMM.backend is OpenBLASGEMM { continue }
                    let gflops = Benchmarks.gemm(m: m, n: n, k: k, path: path, repetitions: repetitions)
                    let peak = path == .bf16 && GEMM.nativeBF16 ? peaks.bf16 : peaks.fp32
                    let share = peak.map { String(format: ", %.0f%% of the %@ peak", 100 * gflops / $0, path == .bf16 && GEMM.nativeBF16 ? "bf16" : "fp32") } ?? ""
                    print(String(format: "finch gemm %@ %dx%dx%d: %.1f GFLOP/s%@", path.rawValue, m, n, k, gflops, share))
                }
            }
        }
    }

    struct DataParallel: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "data-parallel",
            abstract: "Trainer step time on this process or over the ranks of `mpirun -np N`, with the all-reduce time apart.",
            discussion: "Run it as `finch bench data-parallel` and as `mpirun -np 2 finch bench data-parallel` (bench/data_parallel.sh does both).")
        @Option(name: .customLong("shape"), help: "Random model shape: smollm2-135m or llama3.2-1b.") var shape = "smollm2-135m"
        @Option(help: "Sequences per optimizer step, over all ranks.") var batch = 8
        @Option var seq = 128
        @Option(name: .customLong("lora-r")) var loraRank = 16
        @Flag(help: "Train every weight instead of LoRA adapters.") var full = false
        @Option var steps = 3

        func run() throws {
            try runReportingErrors {
                let group = try ProcessGroup.launched()
                let config: ModelConfig
                switch shape {
                case "smollm2-135m": config = .smolLM2_135M
                case "llama3.2-1b": config = .llama32_1B
                default: throw ValidationError("unknown --shape \(shape); use smollm2-135m or llama3.2-1b")
                }
                guard batch % group.size == 0 else { throw ValidationError("--batch \(batch) does not divide among \(group.size) ranks") }
                let tuning: FineTuning = full ? .full : .lora(LoRAConfig(rank: loraRank, alpha: Float(2 * loraRank)))
                let model = try Transformer(files: .random(config: config), fineTuning: tuning)
                let t = try Benchmarks.dataParallelStep(model: model, group: group, globalBatch: batch, seq: seq, steps: steps)
                if group.isRoot {
                    print(BLAS.description + ", \(Parallel.coreCount) threads per rank")
                    print(String(format: "finch data-parallel (%@, %@, %d rank%@, global batch %d x %d): %.3f s/step, %.0f tokens/s; "
                                 + "in collectives %.3f s/step; gradient all-reduce alone (%.2f MB): %.3f s",
                                 shape, full ? "full" : "LoRA r=\(loraRank)", t.ranks, t.ranks == 1 ? "" : "s", batch, seq, t.stepSeconds,
                                 Double(batch * seq) / t.stepSeconds, t.collectiveSeconds, Double(t.gradientBytes) / 1e6,
                                 t.gradientAllReduceSeconds))
                }
                group.finish()
            }
        }
    }

    struct Step: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Time one LoRA (or full) forward + backward step.")
        @Option(help: "A model folder or .gguf; default: random weights of SmolLM2-135M's shape.") var model: String?
        @Option(name: .customLong("shape"), help: "Random model shape when no --model: smollm2-135m, llama3.2-1b or moe-smollm2 (8 experts, top 2, SmolLM2's FLOPs per token).")
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
        @Option(name: .customLong("micro-batch"), help: "With --method: run each step's --batch examples as micro-batches of this many (exact gradient accumulation: the same update, the activations of one micro-batch).")
        var microBatch: Int?
        @Option(help: "Random model weights: f32, or a 4-bit base (q4_0, q4_1) for every matrix.")
        var base = "f32"
        @Flag(name: .customLong("gradient-checkpointing"), help: "Recompute each layer in backward (as finch train --gradient-checkpointing).")
        var gradientCheckpointing = false
        @Flag(name: .customLong("keep-quantized"), help: "Keep a quantized base quantized (as finch train --keep-quantized).")
        var keepQuantized = false
        @Option(help: "Precision of the base model's products: auto (bf16 where the CPU computes it natively), fp32 or bf16.")
        var precision: PrecisionChoice = .auto
        @Flag(help: "With --method: print the time of each kind of matrix product over the timed steps.")
        var profile = false
        @Flag(name: .customLong("separate-rows"), help: "ORPO: run each pair's chosen and rejected rows apart, instead of one row that holds their shared prompt once (as finch train does).")
        var separateRows = false

        func run() throws {
            try runReportingErrors {
                GEMM.reportBackend()
                let (chosen, reason) = precision.resolved()
                let files: ModelFiles
                if let model { files = try ModelFiles.open(try HubCache.resolve(model)) } else {
                    guard let dtype = DType(rawValue: base.uppercased()), [.f32, .q4_0, .q4_1].contains(dtype) else {
                        throw ValidationError("unknown --base \(base); use f32, q4_0 or q4_1")
                    }
                    switch shape {
                    case "smollm2-135m": files = .random(config: .smolLM2_135M, quantization: dtype)
                    case "llama3.2-1b": files = .random(config: .llama32_1B, quantization: dtype)
                    case "moe-smollm2": files = .random(config: .moeSmolLM2Shape, quantization: dtype)
                    default: throw ValidationError("unknown --shape \(shape); use smollm2-135m, llama3.2-1b or moe-smollm2")
                    }
                }
                let tuning: FineTuning = full ? .full : .lora(LoRAConfig(rank: loraRank, alpha: loraAlpha))
                let transformer = try Transformer(files: files, fineTuning: tuning,
                                                  denseLimitBytes: keepQuantized ? 0 : Transformer.defaultDenseLimitBytes,
                                                  precision: chosen)
                transformer.gradientCheckpointing = gradientCheckpointing
                if let method {
                    guard let kind = Benchmarks.Method(rawValue: method) else {
                        throw ValidationError("unknown --method \(method); use sft or orpo")
                    }
                    if let microBatch, microBatch < 1 || batch % microBatch != 0 {
                        throw ValidationError("--micro-batch \(microBatch) does not divide --batch \(batch)")
                    }
                    if profile { GEMM.profile = GEMM.Profile() }
                    let t = try Benchmarks.trainingStep(model: transformer, method: kind, batch: batch, seq: seq,
                                                        promptLength: promptLength, optimizer: optimizer, microBatch: microBatch,
                                                        sharePrompt: !separateRows, repetitions: repetitions)
                    if let p = GEMM.profile {
                        print("matrix products over \(repetitions + 1) steps (the first one cold):")
                        for line in p.report().prefix(25) { print("  " + line) }
                    }
                    print("\(GEMM.description); precision \(chosen.rawValue) (\(reason))")
                    var rows = kind == .orpo ? "\(batch) pairs (\(2 * batch) rows)" : "\(batch) rows"
                    if let microBatch, microBatch < batch { rows += " in micro-batches of \(microBatch)" }
                    print(String(format: "finch train step (%@, %@, %@, %@ x %d%@): %.3f s/step, %.0f tokens/s, %.1f GFLOP/s",
                                 files.source, kind.rawValue, full ? "full" : "LoRA r=\(loraRank)", rows, seq,
                                 optimizer ? ", AdamW" : "", t.secondsPerStep, t.tokensPerSecond, t.flops / t.secondsPerStep / 1e9))
                    return
                }
                let t = Benchmarks.step(model: transformer, batch: batch, seq: seq, repetitions: repetitions)
                print("\(GEMM.description); precision \(chosen.rawValue) (\(reason))")
                for (phase, seconds) in Benchmarks.stepPhases(model: transformer, batch: batch, seq: seq) {
                    print(String(format: "  %@: %.3f s", phase, seconds))
                }
                print(String(format: "finch step (%@, %@, batch %d x %d): %.3f s/step, %.0f tokens/s, %.1f GFLOP/s",
                             files.source, full ? "full" : "LoRA r=\(loraRank)", batch, seq,
                             t.secondsPerStep, t.tokensPerSecond, t.flops / t.secondsPerStep / 1e9))
            }
        }
    }

    struct Decode: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Prefill and decode tokens/s of greedy generation, batch 1 (bench/hf_generate.py is transformers' side).")
        @Option(help: "A model folder or .gguf.") var model: String
        @Option(help: "A PEFT adapter folder applied without merging.") var adapter: String?
        @Option(name: .customLong("prompt-tokens")) var promptTokens = 128
        @Option(name: .customLong("new-tokens")) var newTokens = 128
        @Option var repetitions = 3
        @Flag(name: .customLong("int8-activations"), help: "Decode with activations rounded to 8 bits against quantized weights (as finch generate --int8-activations).")
        var int8Activations = false

        func run() throws {
            try runReportingErrors {
                let transformer = try Transformer(files: ModelFiles.open(try HubCache.resolve(model)), adapter: adapter)
                transformer.int8Activations = int8Activations
                let t = Benchmarks.decode(model: transformer, promptTokens: promptTokens, newTokens: newTokens,
                                          repetitions: repetitions)
                print(String(format: "finch decode (%@%@, prompt %d, %d new, batch 1): prefill %.1f tokens/s, decode %.1f tokens/s",
                             model, int8Activations ? ", int8 activations" : "", t.promptTokens, t.newTokens, t.prefillTokensPerSecond, t.decodeTokensPerSecond))
            }
        }
    }
}
