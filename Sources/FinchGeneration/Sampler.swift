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
        // Unnormalised probabilities exp((logit - max) / T) of every token: one pass, no sort.
        let n = logits.count, inverse = 1 / s.temperature
        var top = 0
        for i in 1..<n where logits[i] > logits[top] { top = i }
        let m = logits[top]
        var probs = [Float](repeating: 0, count: n)
        for i in 0..<n { probs[i] = expf((logits[i] - m) * inverse) }
        return draw(from: Self.kept(probs, settings: s), probs: probs)
    }

    /// The tokens sampling may draw, given unnormalised probabilities: every token, or the top
    /// k (renormalised among themselves), then the descending prefix that min-p and top-p keep.
    static func kept(_ probs: [Float], settings s: SamplingSettings) -> [Int] {
        let n = probs.count
        var candidates: [Int]? = nil
        if s.topK > 0 && s.topK < n { candidates = largest(s.topK, of: probs) }
        if s.minP <= 0 && s.topP >= 1 { return candidates ?? Array(0..<n) }
        // min-p and top-p cut a prefix in descending order: sort only the tokens that can be in it,
        // those above a threshold whose mass already reaches top_p (lowered until it does).
        let pool = candidates ?? Array(0..<n)
        let mass = pool.reduce(Float(0)) { $0 + probs[$1] }
        var order: [Int] = []
        for threshold: Float in [1e-4, 1e-7, 0] {
            order = threshold == 0 ? pool : pool.filter { probs[$0] >= threshold }
            if threshold == 0 || order.reduce(Float(0), { $0 + probs[$1] }) >= s.topP * mass { break }
        }
        order.sort { probs[$0] > probs[$1] || probs[$0] == probs[$1] && $0 < $1 }
        var keep = order.count
        if s.minP > 0 {
            let limit = s.minP * probs[order[0]]
            keep = min(keep, max(1, order.firstIndex { probs[$0] < limit } ?? keep))
        }
        if s.topP < 1 {
            // The smallest prefix whose mass reaches top_p (at least one token).
            var cumulative: Float = 0
            for i in 0..<keep { cumulative += probs[order[i]]; if cumulative >= s.topP * mass { keep = i + 1; break } }
        }
        return Array(order.prefix(keep))
    }

    /// A token of `tokens` drawn with probability proportional to `probs`.
    mutating func draw(from tokens: [Int], probs: [Float]) -> Int {
        var total: Float = 0
        for t in tokens { total += probs[t] }
        var u = random.nextFloat() * total
        for t in tokens {
            u -= probs[t]
            if u <= 0 { return t }
        }
        return tokens.last!
    }

    /// The indices of the `k` largest values, largest first (ties: lower index first).
    static func largest(_ k: Int, of values: [Float]) -> [Int] {
        // The k-th largest value by selection on a copy, then the indices at or above it.
        var copy = values
        var low = 0, high = copy.count - 1, target = k - 1
        while low < high {
            let pivot = copy[(low + high) / 2]
            var i = low, j = high
            while i <= j {
                while copy[i] > pivot { i += 1 }
                while copy[j] < pivot { j -= 1 }
                if i <= j { copy.swapAt(i, j); i += 1; j -= 1 }
            }
            if target <= j { high = j } else if target >= i { low = i } else { break }
        }
        let kth = copy[target]
        var chosen = values.indices.filter { values[$0] > kth }
        for i in values.indices where values[i] == kth && chosen.count < k { chosen.append(i) }
        return chosen.sorted { values[$0] > values[$1] || values[$0] == values[$1] && $0 < $1 }
    }

    func argmax(_ values: [Float]) -> Int {
        var best = 0
        for i in values.indices where values[i] > values[best] { best = i }
        return best
    }
}
