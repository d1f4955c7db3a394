import FinchCPU
import Foundation
import FinchKernels
import FinchIO
import FinchTokenizers
import FinchModels
import FinchGeneration
import FinchDistributed
import FinchTraining
import FinchExport

/// Measurements printed by `finch bench`. Timings are medians over repetitions after a warm-up.
public enum Benchmarks {
    static func now() -> Double { MonotonicClock.now() }

    static func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }

    /// Where a timed product runs.
    public enum GEMMPath: String, CaseIterable, Sendable {
        case fp32 = "fp32"                 // the fp32 backend (oneDNN, or OpenBLAS without it)
        case bf16 = "bf16"                 // bf16 weights and inputs, fp32 accumulation (native or portable)
        case openBLAS = "fp32 OpenBLAS"    // OpenBLAS alone, for comparison
    }

    /// GFLOP/s of a linear layer's forward product y[m, n] = x[m, k] W^T, W [n, k] (2mnk FLOPs
    /// per product), median over repetitions. bf16 times the product as training runs it: the
    /// weights stored bf16, the activations converted inside the timed call.
    public static func gemm(m: Int, n: Int, k: Int, path: GEMMPath, repetitions: Int = 5) -> Double {
        let a = UnsafeMutablePointer<Float>.allocate(capacity: m * k)
        let b = UnsafeMutablePointer<Float>.allocate(capacity: k * n)
        let b16 = UnsafeMutablePointer<UInt16>.allocate(capacity: k * n)
        let c = UnsafeMutablePointer<Float>.allocate(capacity: m * n)
        defer { a.deallocate(); b.deallocate(); b16.deallocate(); c.deallocate() }
        var rng = FinchRandom(seed: 1)
        for i in 0..<m * k { a[i] = rng.nextFloat() - 0.5 }
        for i in 0..<k * n { b[i] = rng.nextFloat() - 0.5 }
        BFloat16.convert(b, to: b16, count: k * n)
        var times: [Double] = []
        for rep in 0...repetitions {
            let start = now()
            switch path {
            case .fp32: GEMM.sgemm(.none, .transpose, m: m, n: n, k: k, a: a, lda: k, b: b, ldb: k, c: c, ldc: n)
            case .bf16: GEMM.multiply(.none, .transpose, m: m, n: n, k: k, a: .f32(a), lda: k, b: .bf16(b16), ldb: k,
                                      c: c, ldc: n, precision: .bf16)
            case .openBLAS: BLAS.sgemm(.none, .transpose, m: m, n: n, k: k, a: a, lda: k, b: b, ldb: k, c: c, ldc: n)
            }
            if rep > 0 { times.append(now() - start) }
        }
        return 2 * Double(m) * Double(n) * Double(k) / median(times) / 1e9
    }

    /// The arithmetic peaks of this CPU on all of this process's cores, measured.
    public struct Peaks: Sendable {
        /// fp32 FMA GFLOP/s with the widest vectors Finch may use (AVX-512 or AVX2).
        public var fp32: Double
        /// Which loop measured `fp32`: "AVX-512 FMA" or "AVX2 FMA" (0 GFLOP/s without AVX2 + FMA).
        public var fp32Kind: String
        /// bf16 dot-product GFLOP/s (AVX512_BF16 `vdpbf16ps`), where the CPU has it.
        public var bf16Dot: Double?
        /// bf16 tile-product GFLOP/s (AMX `tdpbf16ps`), where the CPU has it and Linux grants it.
        public var amx: Double?
        /// The bf16 peak: AMX's where the CPU has it (oneDNN runs bf16 products there), else the
        /// AVX512_BF16 dot product's.
        public var bf16: Double? { amx ?? bf16Dot }
        /// Which loop measured `bf16`.
        public var bf16Kind: String { amx != nil ? "AMX tiles" : "AVX512_BF16 dot" }
    }

    /// Best of `repetitions` runs of the peak loops on every core at once.
    public static func peaks(repetitions: Int = 3) -> Peaks {
        let cores = Parallel.coreCount
        func measure(kind: Int32, flopsPerIteration: Double, iterations: Int64 = 20_000_000) -> Double {
            var best = 0.0
            for _ in 0..<repetitions {
                let start = now()
                concurrentPerform(iterations: cores) { _ in _ = finchPeakLoop(kind, iterations) }
                let seconds = now() - start
                best = max(best, Double(cores) * Double(iterations) * flopsPerIteration / seconds / 1e9)
            }
            return best
        }
        let f = CPU.features
        let wide = f.contains(.avx512f)
        let fp32 = f.contains(.avx2) && f.contains(.fma) ? measure(kind: wide ? 1 : 0, flopsPerIteration: 12 * (wide ? 16 : 8) * 2) : 0
        let dot = f.contains(.avx512bf16) ? measure(kind: 2, flopsPerIteration: 12 * 32 * 2) : nil
        // Each thread asks for the tile state: Linux grants it per process, the call is cheap.
        let amx = f.isSuperset(of: [.amxTile, .amxBF16]) && finchAMXRequest()
            ? measure(kind: 3, flopsPerIteration: 4 * 16 * 16 * 32 * 2, iterations: 2_000_000) : nil
        return Peaks(fp32: fp32, fp32Kind: wide ? "AVX-512 FMA" : "AVX2 FMA", bf16Dot: dot, amx: amx)
    }

    /// The speed of one training step (median over the timed repetitions).
    public struct StepTiming: Sendable {
        /// Median wall time of one step.
        public var secondsPerStep: Double
        /// Tokens of all rows (padding included) per second of step time.
        public var tokensPerSecond: Double
        /// Matmul FLOPs of one forward + backward, counted as 2 per multiply-add.
        public var flops: Double
    }

    /// Time of one forward + backward step (cross-entropy on every position) of `model`.
    public static func step(model: Transformer, batch: Int, seq: Int, repetitions: Int = 3) -> StepTiming {
        var rng = FinchRandom(seed: 2)
        let ids = (0..<batch * seq).map { _ in Int32(rng.next() % UInt64(model.config.vocabSize)) }
        let tokens = TokenBatch(batch: batch, seq: seq, ids: ids)
        let targets = TokenBatch.shiftedTargets(labels: ids, batch: batch, seq: seq)
        var times: [Double] = []
        for rep in 0...repetitions {
            model.parameters?.zeroGrads()
            let start = now()
            model.crossEntropyStep(tokens, targets: targets, weight: 1 / Float(batch * (seq - 1)))
            if rep > 0 { times.append(now() - start) }
        }
        let t = median(times)
        return StepTiming(secondsPerStep: t, tokensPerSecond: Double(batch * seq) / t,
                          flops: stepFLOPs(config: model.config, fineTuning: model.fineTuning, batch: batch, seq: seq))
    }

    /// The objectives `trainingStep` can time.
    public enum Method: String, CaseIterable, Sendable { case sft, orpo }

    /// Time of one real training step through `Trainer` and the objective's own code: `batch`
    /// SFT rows of `seq` random tokens (loss on every token), or `batch` ORPO pairs whose chosen
    /// and rejected rows are `seq` tokens each (the first `promptLength` shared and masked, beta
    /// 0.1), so one step runs 2 * batch rows. With `optimizer`, a step is zero grads, forward,
    /// backward, gradient clipping at norm 1 and an AdamW update, as TRL's trainers do; without
    /// it, only the objective's forward and backward. With `repetitions` 0 the one (cold) step is timed.
    /// `sharePrompt` false runs ORPO's chosen and rejected rows apart rather than as one row per
    /// pair holding the prompt once; tokens/s and FLOPs count the two rows either way.
    public static func trainingStep(model: Transformer, method: Method, batch: Int, seq: Int, promptLength: Int,
                                    optimizer: Bool, microBatch: Int? = nil, sharePrompt: Bool = true,
                                    repetitions: Int = 3) throws -> StepTiming {
        let micro = microBatch ?? batch
        precondition(micro > 0 && batch % micro == 0, "the micro-batch must divide the batch")
        var rng = FinchRandom(seed: 2)
        func randomIds(_ n: Int) -> [Int32] { (0..<n).map { _ in Int32(rng.next() % UInt64(model.config.vocabSize)) } }
        let objective: Objective
        let examples: [Example]
        switch method {
        case .sft:
            objective = SFTObjective()
            examples = (0..<batch).map { i in
                let ids = randomIds(seq)
                return Example(id: i, fields: ["input_ids": ids, "labels": ids])
            }
        case .orpo:
            precondition(promptLength < seq, "the prompt must leave room for a completion")
            let preference = try PreferenceObjective(loss: .orpo(beta: 0.1))
            preference.sharesPrompt = sharePrompt
            objective = preference
            let masked = [Int32](repeating: -100, count: promptLength)
            examples = (0..<batch).map { i in
                let prompt = randomIds(promptLength)
                let chosen = prompt + randomIds(seq - promptLength), rejected = prompt + randomIds(seq - promptLength)
                return Example(id: i, fields: ["chosen_input_ids": chosen, "chosen_labels": masked + chosen[promptLength...],
                                               "rejected_input_ids": rejected, "rejected_labels": masked + rejected[promptLength...]])
            }
        }
        let rows = method == .orpo ? 2 * batch : batch
        var settings = TrainerSettings()
        // A step is one window of `batch` examples, run as batch / micro micro-batches whose
        // gradients accumulate exactly (the same update as one batch, to float rounding).
        settings.batchSize = micro
        settings.gradAccum = batch / micro
        settings.maxSteps = repetitions + 1
        settings.learningRate = 1e-4
        settings.scheduler = .constant
        settings.groupByLength = false
        let trainer = try Trainer(model: model, objective: objective, train: examples, settings: settings)
        let window = objective.normalisers(of: examples)
        var times: [Double] = []
        for rep in 0...repetitions {
            let start = now()
            if optimizer {
                _ = try trainer.step()
            } else {
                model.parameters?.zeroGrads()
                _ = try objective.accumulate(examples, model: model, window: window)
            }
            if rep > 0 || repetitions == 0 { times.append(now() - start) }
        }
        let t = median(times)
        return StepTiming(secondsPerStep: t, tokensPerSecond: Double(rows * seq) / t,
                          flops: stepFLOPs(config: model.config, fineTuning: model.fineTuning, batch: rows, seq: seq))
    }

    /// Seconds of each phase of one step: the decoder's forward, the head's fused
    /// cross-entropy (forward and backward), and the decoder's backward.
    public static func stepPhases(model: Transformer, batch: Int, seq: Int) -> [(String, Double)] {
        var rng = FinchRandom(seed: 2)
        let ids = (0..<batch * seq).map { _ in Int32(rng.next() % UInt64(model.config.vocabSize)) }
        let tokens = TokenBatch(batch: batch, seq: seq, ids: ids)
        let targets = TokenBatch.shiftedTargets(labels: ids, batch: batch, seq: seq)
        model.crossEntropyStep(tokens, targets: targets, weight: 1)   // warm-up: allocations, caches
        let acts = model.activations(for: tokens, training: true)
        let n = tokens.tokenCount, C = model.config.hiddenSize
        let t0 = now()
        let hidden = model.forward(tokens, acts: acts)
        let t1 = now()
        let dFinal = UnsafeMutablePointer<Float>.allocate(capacity: n * C)
        defer { dFinal.deallocate() }
        dFinal.initialize(repeating: 0, count: n * C)
        targets.withUnsafeBufferPointer {
            _ = crossEntropy(hidden: hidden, targets: $0.baseAddress!, rows: n, head: model.head,
                             backward: CrossEntropyBackward(uniformWeight: 1 / Float(n), dHidden: dFinal, dHead: model.headGrad), softcap: model.logitSoftcap)
        }
        let t2 = now()
        model.backward(tokens, acts: acts, dFinal: dFinal)
        let t3 = now()
        return [("decoder forward", t1 - t0), ("head + cross-entropy", t2 - t1), ("decoder backward", t3 - t2)]
    }

    /// Matmul FLOPs of one training step, counted as the model needs them (causal attention
    /// counted in full, as most reports do): forward 2*N*P for the weights, backward 2*N*P for
    /// input gradients, plus 2*N*P more for weight gradients in full fine-tuning.
    public static func stepFLOPs(config c: ModelConfig, fineTuning: FineTuning, batch: Int, seq: Int) -> Double {
        let n = Double(batch * seq)
        let perLayer = Double(c.hiddenSize * (c.qDim + 2 * c.kvDim) + c.qDim * c.hiddenSize + 3 * c.hiddenSize * c.intermediateSize)
        let weights = perLayer * Double(c.layerCount) + Double(c.vocabSize * c.hiddenSize)
        let attention = 2 * Double(seq) * Double(c.qDim) * Double(c.layerCount)   // QK^T and PV per token
        var forward = 2 * n * (weights + attention)
        var loraExtra = 0.0
        if case let .lora(lora) = fineTuning {
            let perLayerLoRA = Double(lora.rank) * Double((c.hiddenSize + c.qDim) + 2 * (c.hiddenSize + c.kvDim)
                + (c.qDim + c.hiddenSize) + 3 * (c.hiddenSize + c.intermediateSize))
            loraExtra = 2 * n * perLayerLoRA * Double(c.layerCount)
            forward += loraExtra
        }
        let backward = fineTuning == .full ? 2 * forward : forward + 2 * loraExtra
        return forward + backward
    }
}

extension Benchmarks {
    /// The speed of generation, prefill and decode apart (medians).
    public struct DecodeTiming: Sendable {
        /// Prompt length the figures were measured with.
        public var promptTokens: Int
        /// Tokens generated per run.
        public var newTokens: Int
        /// Prompt tokens per second of prefill.
        public var prefillTokensPerSecond: Double
        /// New tokens after the first per second of decoding (the first comes from the prefill).
        public var decodeTokensPerSecond: Double
    }

    /// Greedy generation of `newTokens` after a prompt of `promptTokens` (random ids, batch 1,
    /// no EOS so every token is made): prefill and decode speed, medians over `repetitions`
    /// after a warm-up run.
    public static func decode(model: Transformer, promptTokens: Int, newTokens: Int, repetitions: Int = 3) -> DecodeTiming {
        var rng = FinchRandom(seed: 3)
        let prompt = (0..<promptTokens).map { _ in Int(rng.next() % UInt64(model.config.vocabSize)) }
        let generator = Generator(model: model)
        var prefill: [Double] = [], decode: [Double] = []
        for rep in 0...repetitions {
            let r = generator.generate(prompt: prompt, sampling: SamplingSettings(),
                                       stop: StopRules(maxNewTokens: newTokens, eosTokenIds: []))
            precondition(r.tokens.count == newTokens)
            if rep > 0 {
                prefill.append(Double(promptTokens) / r.promptSeconds)
                // The first new token comes from the prefill's logits; the other n-1 each cost a decode step.
                decode.append(Double(newTokens - 1) / r.decodeSeconds)
            }
        }
        return DecodeTiming(promptTokens: promptTokens, newTokens: newTokens,
                            prefillTokensPerSecond: median(prefill), decodeTokensPerSecond: median(decode))
    }
}

/// The C peak loop (kind 0 AVX2 FMA, 1 AVX-512 FMA, 2 AVX512_BF16 dot, 3 AMX tiles), called only where the CPU has it.
@inline(never)
func finchPeakLoop(_ kind: Int32, _ iterations: Int64) -> Float { finch_peak_loop(kind, iterations) }

/// Whether Linux grants this process AMX's tile state.
func finchAMXRequest() -> Bool { finch_amx_request() == 1 }
