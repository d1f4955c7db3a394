import Foundation
import FinchKernels
import FinchIO
import FinchTokenizers
import FinchModels

/// How the next token is chosen from the logits, with the conventions of transformers'
/// logits processors (repetition penalty) and OpenAI's API (presence / frequency penalties).
public struct SamplingSettings: Sendable, Equatable, Codable {
    /// 0 means greedy.
    public var temperature: Float = 0
    /// 0 keeps every token.
    public var topK = 0
    /// Nucleus sampling: keep the most likely tokens whose mass first reaches topP; 1 keeps all.
    public var topP: Float = 1
    /// Drop tokens whose probability is below minP x the top token's; 0 keeps all.
    public var minP: Float = 0
    /// > 1 discourages tokens already present (logit / p when positive, * p when negative).
    public var repetitionPenalty: Float = 1
    /// Subtracted once from the logit of every token already seen (prompt included), as OpenAI's.
    public var presencePenalty: Float = 0
    /// Subtracted from a seen token's logit per occurrence, as OpenAI's.
    public var frequencyPenalty: Float = 0
    /// Seeds the sampler's generator (row r of a batch uses seed + r); unused when greedy.
    public var seed: UInt64 = 0

    /// Settings whose defaults disable every option: greedy decoding.
    public init(temperature: Float = 0, topK: Int = 0, topP: Float = 1, minP: Float = 0, repetitionPenalty: Float = 1,
                presencePenalty: Float = 0, frequencyPenalty: Float = 0, seed: UInt64 = 0) {
        self.temperature = temperature; self.topK = topK; self.topP = topP; self.minP = minP
        self.repetitionPenalty = repetitionPenalty; self.presencePenalty = presencePenalty
        self.frequencyPenalty = frequencyPenalty; self.seed = seed
    }
}

struct Sampler {
    /// The settings this sampler applies; its seed started `random`.
    public let settings: SamplingSettings
    var random: FinchRandom

    /// A sampler whose random stream starts at `settings.seed`.
    public init(_ settings: SamplingSettings) {
        self.settings = settings
        random = FinchRandom(seed: settings.seed)
    }

    /// The next token given `logits` [vocab] and the counts of tokens seen so far (prompt and output).
    public mutating func next(logits input: UnsafeBufferPointer<Float>, seen: [Int: Int]) -> Int {
        var logits = Array(input)
        let s = settings
        if s.repetitionPenalty != 1 || s.presencePenalty != 0 || s.frequencyPenalty != 0 {
            for (token, count) in seen where token < logits.count {
                if s.repetitionPenalty != 1 {
                    logits[token] = logits[token] > 0 ? logits[token] / s.repetitionPenalty : logits[token] * s.repetitionPenalty
                }
                logits[token] -= s.presencePenalty + s.frequencyPenalty * Float(count)
            }
        }
        if s.temperature <= 0 { return argmax(logits) }
        for i in logits.indices { logits[i] /= s.temperature }
        // Candidates in descending order of logit, cut by top-k, then probabilities.
        var order = Array(logits.indices)
        if s.topK > 0 && s.topK < order.count {
            order = Array(order.sorted { logits[$0] > logits[$1] }.prefix(s.topK))
        } else {
            order.sort { logits[$0] > logits[$1] }
        }
        let m = logits[order[0]]
        var probs = order.map { expf(logits[$0] - m) }
        let total = probs.reduce(0, +)
        for i in probs.indices { probs[i] /= total }
        var keep = probs.count
        if s.minP > 0 {
            let threshold = s.minP * probs[0]
            keep = min(keep, max(1, probs.prefix(keep).firstIndex { $0 < threshold } ?? keep))
        }
        if s.topP < 1 {
            // The smallest prefix whose mass reaches top_p (at least one token).
            var mass: Float = 0
            for i in 0..<keep { mass += probs[i]; if mass >= s.topP { keep = i + 1; break } }
        }
        let kept = probs.prefix(keep)
        var u = random.nextFloat() * kept.reduce(0, +)
        for (i, p) in kept.enumerated() {
            u -= p
            if u <= 0 { return order[i] }
        }
        return order[keep - 1]
    }

    func argmax(_ values: [Float]) -> Int {
        var best = 0
        for i in values.indices where values[i] > values[best] { best = i }
        return best
    }
}
