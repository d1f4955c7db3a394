import FinchKernels
import FinchIO

/// Token ids of `batch` rows of `seq` positions each, with padding mask and positions.
package struct TokenBatch: Sendable {
    /// Rows (sequences, or packs of sequences).
    public let batch: Int
    /// Positions per row, padding included.
    public let seq: Int
    /// Token ids, row-major; padding holds the pad id.
    public var ids: [Int32]          // [batch * seq]
    /// 1 at real tokens, 0 at padding [batch * seq]; nil when nothing is padded.
    public var mask: [Float]?
    /// RoPE position of each token; 0..<seq per row unless given (packed rows restart at each sequence).
    public var positions: [Int32]    // [batch * seq]
    /// Packed rows: the position where each token's own sequence starts [batch * seq]; attention
    /// stays within a sequence and positions restart at each start. Nil for one sequence per row.
    public var segmentStarts: [Int32]?
    /// Branches that share a prompt: keys before this position stay visible to the token though
    /// they come before its segment start (the shared prompt before its branch) [batch * seq].
    /// Needs `segmentStarts`; nil for none.
    public var prefixEnds: [Int32]?

    /// Calls `body` with what each token's attention sees (`segmentStarts`, `prefixEnds`).
    package func withKeyVisibility<R>(_ body: (KeyVisibility) -> R) -> R {
        segmentStarts.withOptionalPointer { starts in
            prefixEnds.withOptionalPointer { ends in body(KeyVisibility(segmentStarts: starts, prefixEnds: ends)) }
        }
    }

    /// batch * seq, padding included.
    public var tokenCount: Int { batch * seq }

    /// A batch from flat row-major ids; `positions` defaults to 0..<seq in every row.
    public init(batch: Int, seq: Int, ids: [Int32], mask: [Float]? = nil, positions: [Int32]? = nil) {
        precondition(ids.count == batch * seq, "ids must hold batch * seq values")
        self.batch = batch
        self.seq = seq
        self.ids = ids
        self.mask = mask
        // Training uses 0..<seq per row (as transformers does without position_ids).
        self.positions = positions ?? (0..<batch * seq).map { Int32($0 % seq) }
    }

    /// Rows of different lengths, right-padded with `padId` to the longest.
    public init(rows: [[Int]], padId: Int = 0) {
        let seq = rows.map(\.count).max() ?? 0
        var ids: [Int32] = [], mask: [Float] = []
        for row in rows {
            ids += row.map { Int32($0) } + Array(repeating: Int32(padId), count: seq - row.count)
            mask += Array(repeating: 1, count: row.count) + Array(repeating: 0, count: seq - row.count)
        }
        self.init(batch: rows.count, seq: seq, ids: ids, mask: mask.contains(0) ? mask : nil)
    }

    /// Rows each holding several sequences back to back (packing), right-padded with `padId`.
    /// Labels are per sequence (unshifted); the returned targets never cross from one sequence
    /// into the next.
    public static func packed(rows: [[[Int32]]], labels: [[[Int32]]], padId: Int32 = 0) -> (TokenBatch, [Int32]) {
        let seq = rows.map { $0.reduce(0) { $0 + $1.count } }.max() ?? 0
        var ids: [Int32] = [], mask: [Float] = [], positions: [Int32] = [], starts: [Int32] = [], targets: [Int32] = []
        for (row, rowLabels) in zip(rows, labels) {
            var used = 0
            for (sequence, sequenceLabels) in zip(row, rowLabels) {
                ids += sequence
                positions += (0..<sequence.count).map { Int32($0) }
                starts += [Int32](repeating: Int32(used), count: sequence.count)
                targets += (0..<sequence.count).map { t in t + 1 < sequence.count && sequenceLabels[t + 1] >= 0 ? sequenceLabels[t + 1] : -1 }
                used += sequence.count
            }
            let pad = seq - used
            ids += [Int32](repeating: padId, count: pad)
            positions += [Int32](repeating: 0, count: pad)
            starts += [Int32](repeating: Int32(used), count: pad)
            targets += [Int32](repeating: -1, count: pad)
            mask += [Float](repeating: 1, count: used) + [Float](repeating: 0, count: pad)
        }
        var batch = TokenBatch(batch: rows.count, seq: seq, ids: ids, mask: mask.contains(0) ? mask : nil, positions: positions)
        batch.segmentStarts = starts
        return (batch, targets)
    }

    /// Next-token targets from labels in transformers' unshifted convention: the target at
    /// position t is labels[t + 1]; -100 (or any negative) and each row's last position are ignored (-1).
    public static func shiftedTargets(labels: [Int32], batch: Int, seq: Int) -> [Int32] {
        var targets = [Int32](repeating: -1, count: batch * seq)
        for b in 0..<batch {
            for t in 0..<max(seq - 1, 0) {
                let next = labels[b * seq + t + 1]
                targets[b * seq + t] = next < 0 ? -1 : next
            }
        }
        return targets
    }
}
