/// Token ids of `batch` rows of `seq` positions each, with padding mask and positions.
public struct TokenBatch: Sendable {
    public let batch: Int
    public let seq: Int
    public var ids: [Int32]          // [batch * seq]
    /// 1 at real tokens, 0 at padding [batch * seq]; nil when nothing is padded.
    public var mask: [Float]?
    public var positions: [Int32]    // [batch * seq]

    public var tokenCount: Int { batch * seq }

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
