import FinchModels

/// The chosen and rejected rows of each pair in one row that holds their common start once:
/// [shared prefix | the rest of the chosen row | the rest of the rejected row], the rejected
/// branch attending to the prefix and itself (`TokenBatch.prefixEnds`), each token at the RoPE
/// position it has in its own row. Every position of the two-row layout keeps its hidden state
/// exactly (padding included, which ORPO's and CPO's logit metrics average over), so the
/// objectives' figures and gradients are those of the two rows; the prefix's layers run once
/// instead of twice (ORPO on 2 pairs of 256 tokens with 64-token prompts: 12% fewer tokens).
///
/// The prefix is the run of positions where both rows have the same ids so far and targets
/// that agree (the same token, or one of them scored nowhere): it stops one token before the
/// answers differ, as the last prompt token predicts a different first answer token in each row.
/// One length for every pair of the micro-batch (the shortest), so the rows stay the same length.
struct SharedPrompt {
    /// P rows of 2 * seq - prefix tokens.
    let tokens: TokenBatch
    /// Positions shared by both rows of each pair.
    let prefix: Int
    /// Positions per row in the two-row layout.
    let seq: Int
    let pairs: Int

    /// The shared layout of `batch` (chosen rows 0..<P then rejected rows P..<2P) with the
    /// targets `targets` of each position, or nil when the pairs share no position.
    init?(_ batch: TokenBatch, pairs P: Int, targets: [Int32]) {
        let T = batch.seq
        precondition(batch.batch == 2 * P && targets.count == 2 * P * T)
        var L = T
        for i in 0..<P {
            let c = i * T, r = (P + i) * T
            var t = 0
            while t < min(L, T), batch.ids[c + t] == batch.ids[r + t], (batch.mask?[c + t] ?? 1) != 0, (batch.mask?[r + t] ?? 1) != 0,
                  targets[c + t] < 0 || targets[r + t] < 0 || targets[c + t] == targets[r + t] {
                t += 1
            }
            L = min(L, t)
        }
        guard L > 0 && L < T else { return nil }
        let width = 2 * T - L
        var ids = [Int32](repeating: 0, count: P * width), mask = [Float](repeating: 1, count: P * width)
        var positions = [Int32](repeating: 0, count: P * width)
        var starts = [Int32](repeating: 0, count: P * width), ends = [Int32](repeating: 0, count: P * width)
        prefix = L; seq = T; pairs = P
        for i in 0..<P {
            for t in 0..<T {
                for row in [i, P + i] {
                    let index = Self.index(row: row, t, pairs: P, seq: T, prefix: L)
                    ids[index] = batch.ids[row * T + t]
                    mask[index] = batch.mask?[row * T + t] ?? 1
                    positions[index] = batch.positions[row * T + t]
                }
            }
            for j in T..<width { starts[i * width + j] = Int32(T); ends[i * width + j] = Int32(L) }
        }
        var shared = TokenBatch(batch: P, seq: width, ids: ids, mask: mask.contains(0) ? mask : nil, positions: positions)
        shared.segmentStarts = starts
        shared.prefixEnds = ends
        tokens = shared
    }

    /// Where position t of row `row` (of the two-row layout) sits in the shared layout.
    @inline(__always)
    func sharedIndex(row: Int, _ t: Int) -> Int { Self.index(row: row, t, pairs: pairs, seq: seq, prefix: prefix) }

    @inline(__always)
    private static func index(row: Int, _ t: Int, pairs: Int, seq: Int, prefix: Int) -> Int {
        (row % pairs) * (2 * seq - prefix) + (row < pairs || t < prefix ? t : seq + t - prefix)
    }

    /// Targets of the two-row layout moved to the shared one (where both rows score a prefix
    /// position they agree on the token).
    func targets(_ targets: [Int32]) -> [Int32] {
        var shared = [Int32](repeating: -1, count: tokens.tokenCount)
        for row in 0..<2 * pairs { for t in 0..<seq {
            let index = sharedIndex(row: row, t)
            shared[index] = max(shared[index], targets[row * seq + t])
        } }
        return shared
    }

    /// Per-position statistics of the shared layout read back in the two-row layout.
    func unshare(_ stats: TokenStatistics) -> TokenStatistics {
        var out = TokenStatistics(count: 2 * pairs * seq)
        for row in 0..<2 * pairs { for t in 0..<seq {
            let from = sharedIndex(row: row, t), to = row * seq + t
            out.logProbs[to] = stats.logProbs[from]
            out.logitSums[to] = stats.logitSums[from]
            out.entropies[to] = stats.entropies[from]
            out.correct[to] = stats.correct[from]
        } }
        return out
    }

    /// d loss / d log p of the two-row layout summed into the shared layout.
    func share(_ gradients: [Float]) -> [Float] {
        var shared = [Float](repeating: 0, count: tokens.tokenCount)
        for row in 0..<2 * pairs { for t in 0..<seq { shared[sharedIndex(row: row, t)] += gradients[row * seq + t] } }
        return shared
    }
}
