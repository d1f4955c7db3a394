import Foundation

/// What stops a generation.
public struct StopRules: Sendable, Equatable {
    public var maxNewTokens: Int
    /// Token ids that end a sequence (the config's EOS ids, generation_config.json's).
    public var eosTokenIds: Set<Int>

    public init(maxNewTokens: Int, eosTokenIds: Set<Int>) {
        self.maxNewTokens = maxNewTokens
        self.eosTokenIds = eosTokenIds
    }
}

public struct GenerationResult: Sendable {
    public var tokens: [Int]
    /// Why it stopped: "eos", "length", or "stop" (a callback asked).
    public var finishReason: String
    public var promptSeconds: Double
    public var decodeSeconds: Double
}

/// Incremental decoding with a KV cache, using the same model (and adapters) as training.
public final class Generator {
    public let model: Transformer
    /// Prompt tokens run through the model this many at a time (chunked prefill).
    public var prefillChunk = 256

    public init(model: Transformer) { self.model = model }

    /// Continues `prompt`; `onToken` sees each new token and may return false to stop.
    public func generate(prompt: [Int], sampling: SamplingSettings, stop: StopRules,
                         onToken: (Int) -> Bool = { _ in true }) -> GenerationResult {
        precondition(!prompt.isEmpty, "generation needs at least one prompt token")
        let capacity = prompt.count + stop.maxNewTokens
        let cache = KVCache(config: model.config, batch: 1, capacity: capacity)
        var sampler = Sampler(sampling)
        var seen: [Int: Int] = [:]
        for t in prompt { seen[t, default: 0] += 1 }

        let start = MonotonicClock.now()
        var logits: [Float] = []
        var position = 0
        while position < prompt.count {
            let chunk = Array(prompt[position..<min(position + prefillChunk, prompt.count)])
            logits = model.decode(TokenBatch(batch: 1, seq: chunk.count, ids: chunk.map(Int32.init),
                                             positions: (0..<chunk.count).map { Int32(position + $0) }), cache: cache)
            position += chunk.count
        }
        let prefillDone = MonotonicClock.now()
        var output: [Int] = []
        var reason = "length"
        while output.count < stop.maxNewTokens {
            let token = logits.withUnsafeBufferPointer { sampler.next(logits: $0, seen: seen) }
            output.append(token)
            seen[token, default: 0] += 1
            if stop.eosTokenIds.contains(token) { reason = "eos"; break }
            if !onToken(token) { reason = "stop"; break }
            if output.count == stop.maxNewTokens { break }
            logits = model.decode(TokenBatch(batch: 1, seq: 1, ids: [Int32(token)], positions: [Int32(position)]), cache: cache)
            position += 1
        }
        return GenerationResult(tokens: output, finishReason: reason, promptSeconds: prefillDone - start,
                                decodeSeconds: MonotonicClock.now() - prefillDone)
    }
}
