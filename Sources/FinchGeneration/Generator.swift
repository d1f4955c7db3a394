import Foundation
import FinchKernels
import FinchIO
import FinchTokenizers
import FinchModels

/// What stops a generation.
public struct StopRules: Sendable, Equatable {
    /// Most tokens generated per row, the EOS token included; 0 returns at once with "length".
    public var maxNewTokens: Int
    /// Token ids that end a sequence (the config's EOS ids, generation_config.json's).
    public var eosTokenIds: Set<Int>

    /// Stop after `maxNewTokens` or at any of `eosTokenIds`.
    public init(maxNewTokens: Int, eosTokenIds: Set<Int>) {
        self.maxNewTokens = maxNewTokens
        self.eosTokenIds = eosTokenIds
    }
}

/// The output of one row of a generation.
public struct GenerationResult: Sendable {
    /// The new tokens, prompt excluded; ends with the EOS token when `finishReason` is "eos".
    public var tokens: [Int]
    /// Why it stopped: "eos", "length", or "stop" (a callback asked).
    public var finishReason: String
    /// Wall time of the prefill (all prompt tokens of the batch).
    public var promptSeconds: Double
    /// Wall time from the end of prefill until this row stopped.
    public var decodeSeconds: Double
}

/// Incremental decoding with a KV cache, using the same model (and adapters) as training.
/// Several prompts decode together: they are left-padded to one length (padding masked out of
/// attention, positions counted from each prompt's first real token), so each step runs one
/// token of every row through the model at once.
public final class Generator {
    /// The model that decodes; its adapters apply as they are enabled.
    public let model: Transformer
    /// Prompt tokens run through the model this many at a time (chunked prefill).
    public var prefillChunk = 256

    /// A generator over `model`; each `generate` call allocates its own KV cache.
    public init(model: Transformer) { self.model = model }

    /// Continues `prompt`; `onToken` sees each new token and may return false to stop.
    public func generate(prompt: [Int], sampling: SamplingSettings, stop: StopRules,
                         onToken: (Int) -> Bool = { _ in true }) -> GenerationResult {
        generate(prompts: [prompt], sampling: sampling, stop: stop) { _, token in onToken(token) }[0]
    }

    /// Continues each prompt; `onToken(row, token)` sees each new token of a row and may return
    /// false to stop that row. Row r samples with seed `sampling.seed + r`, so a batch of one
    /// reproduces `generate(prompt:)`. Rows that stop early wait (their later tokens are discarded).
    /// Each result's decodeSeconds runs until its own row stopped.
    /// `seeds` gives each row its own sampling seed instead (GRPO seeds each prompt's completions
    /// by the example, so they do not depend on how a window is split).
    public func generate(prompts: [[Int]], sampling: SamplingSettings, stop: StopRules, seeds: [UInt64]? = nil,
                         onToken: (_ row: Int, _ token: Int) -> Bool = { _, _ in true }) -> [GenerationResult] {
        precondition(!prompts.isEmpty && prompts.allSatisfy { !$0.isEmpty }, "generation needs at least one prompt token per row")
        let rows = prompts.count
        let longest = prompts.map(\.count).max()!
        let padding = prompts.map { longest - $0.count }
        let cache = KVCache(config: model.config, batch: rows, capacity: longest + stop.maxNewTokens)
        var samplers = (0..<rows).map { r in
            var settings = sampling
            settings.seed = seeds?[r] ?? sampling.seed &+ UInt64(r)
            return Sampler(settings)
        }
        var seen = prompts.map { prompt in prompt.reduce(into: [Int: Int]()) { $0[$1, default: 0] += 1 } }

        let start = MonotonicClock.now()
        var logits: [Float] = []
        var column = 0
        while column < longest {
            let width = min(prefillChunk, longest - column)
            var ids = [Int32](), mask = [Float](), positions = [Int32]()
            for r in 0..<rows {
                for c in column..<column + width {
                    let real = c >= padding[r]
                    ids.append(real ? Int32(prompts[r][c - padding[r]]) : 0)
                    mask.append(real ? 1 : 0)
                    positions.append(Int32(max(c - padding[r], 0)))
                }
            }
            logits = model.decode(TokenBatch(batch: rows, seq: width, ids: ids, mask: mask.contains(0) ? mask : nil,
                                             positions: positions), cache: cache)
            column += width
        }
        let prefillDone = MonotonicClock.now()

        let vocab = model.config.vocabSize
        var outputs = [[Int]](repeating: [], count: rows)
        var reasons = [String?](repeating: stop.maxNewTokens == 0 ? "length" : nil, count: rows)
        var finishedAt = [Double](repeating: prefillDone, count: rows)
        while reasons.contains(where: { $0 == nil }) {
            for r in 0..<rows where reasons[r] == nil {
                let token = logits.withUnsafeBufferPointer {
                    samplers[r].next(logits: UnsafeBufferPointer(rebasing: $0[r * vocab..<(r + 1) * vocab]), seen: seen[r])
                }
                outputs[r].append(token)
                seen[r][token, default: 0] += 1
                if stop.eosTokenIds.contains(token) { reasons[r] = "eos" }
                else if !onToken(r, token) { reasons[r] = "stop" }
                else if outputs[r].count >= stop.maxNewTokens { reasons[r] = "length" }
                if reasons[r] != nil { finishedAt[r] = MonotonicClock.now() }
            }
            guard reasons.contains(where: { $0 == nil }) else { break }
            // Every row feeds its newest token (a finished row's is ignored) at its next position.
            let ids = outputs.map { Int32($0.last!) }
            let positions = (0..<rows).map { Int32(prompts[$0].count + outputs[$0].count - 1) }
            logits = model.decode(TokenBatch(batch: rows, seq: 1, ids: ids, positions: positions), cache: cache)
        }
        return (0..<rows).map { r in
            GenerationResult(tokens: outputs[r], finishReason: reasons[r]!, promptSeconds: prefillDone - start,
                             decodeSeconds: finishedAt[r] - prefillDone)
        }
    }
}
