import Foundation
import FinchCPU

/// Sizes of one causal self-attention call. Tensors are token-major:
/// q and out are [batch * seq, heads * headDim]; k and v are [batch * seq, kvHeads * headDim].
package struct AttentionShape: Sendable {
    var batch: Int
    var seq: Int
    var heads: Int
    var kvHeads: Int
    var headDim: Int
    /// Multiplier of q . k: 1 / sqrt(headDim) unless the model says otherwise (Gemma's
    /// `query_pre_attn_scalar`^-1/2).
    package var scale: Float
    /// Scores become softcap * tanh(score / softcap) before masking and softmax (Gemma 2's
    /// `attn_logit_softcapping`); 0: none.
    package var softcap: Float
    /// Sliding window: query i sees key j only when i - j < window (positions, not counting
    /// padding apart from its place); 0: every earlier key.
    package var window: Int
    /// The products take bf16-rounded inputs (q, k, v, the probabilities and, in backward, dO
    /// and dS) with f32 accumulation, as PyTorch's attention runs under bf16 autocast; softmax,
    /// its log-sum-exp and every sum outside the products stay f32.
    package var bf16Products = false

    package init(batch: Int, seq: Int, heads: Int, kvHeads: Int, headDim: Int, scale: Float? = nil, softcap: Float = 0, window: Int = 0) {
        self.batch = batch; self.seq = seq; self.heads = heads; self.kvHeads = kvHeads; self.headDim = headDim
        self.scale = scale ?? 1 / Float(headDim).squareRoot()
        self.softcap = softcap; self.window = window
    }
    var qStride: Int { heads * headDim }
    var kvStride: Int { kvHeads * headDim }
    var group: Int { heads / kvHeads }

    /// The first key query `i` (its position in the keys) may see, given its sequence's first key.
    @inline(__always)
    func firstKey(query i: Int, sequenceStart: Int) -> Int { window > 0 ? max(sequenceStart, i + 1 - window) : sequenceStart }
}

/// How many parts the query blocks of each (batch row, KV head) are split into: 1 when those
/// pairs share out evenly over the cores, else one per core, so that no core idles while another
/// finishes a pair (one row of SmolLM2's 3 KV heads on 2 cores left one core idle for a third of
/// the attention time: micro-batches of one row ran ~15% slower per token than of two).
private func attentionParts(_ shape: AttentionShape) -> Int {
    let tasks = shape.batch * shape.kvHeads
    return tasks % Parallel.coreCount == 0 ? 1 : Parallel.coreCount
}

/// The query blocks 0..<blocks dealt into `parts` sets of about equal work, block j attending
/// to j + 1 blocks of keys: largest first, each to the part with the least so far (8 blocks in
/// 2 parts: 18 and 18, where two consecutive ranges could do no better than 15 and 21).
/// With `offset`, each block also sees that many blocks of keys before the first query.
func attentionBlockSets(blocks: Int, parts: Int, offset: Int = 0) -> [[Int]] {
    var sets = [[Int]](repeating: [], count: parts), work = [Int](repeating: 0, count: parts)
    for block in stride(from: blocks - 1, through: 0, by: -1) {
        let least = work.indices.min { work[$0] < work[$1] }!
        sets[least].append(block)
        work[least] += offset + block + 1
    }
    return sets
}

/// Runs `body(b, kvHead, blocks, part, scratch)` for every (batch row, KV head) pair and every
/// part of its query blocks (`attentionParts`) on all cores. The q heads that share a KV head
/// run in one task, so that dK and dV of that head have a single writer per part.
/// Inside the parallel region BLAS runs single-threaded; with one task it keeps its threads.
private func forEachKVGroup(_ shape: AttentionShape, parts: Int, queryStart: Int = 0, scratchFloats: Int,
                            _ body: (Int, Int, [Int], Int, UnsafeMutablePointer<Float>, AttentionProducts) -> Void) {
    let B = min(attentionQueryBlock, shape.seq)
    let sets = attentionBlockSets(blocks: (shape.seq + B - 1) / B, parts: parts, offset: queryStart / B)
    let tasks = shape.batch * shape.kvHeads * parts
    let workers = min(tasks, Parallel.coreCount)
    func run(_ task: Int, _ scratch: UnsafeMutablePointer<Float>) {
        let pair = task / parts, part = task % parts
        body(pair / shape.kvHeads, pair % shape.kvHeads, sets[part], part, scratch, AttentionProducts(inTask: workers > 1))
    }
    if workers <= 1 {
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: scratchFloats)
        defer { scratch.deallocate() }
        for task in 0..<tasks { run(task, scratch) }
        return
    }
    BLAS.setThreadCount(1)
    defer { BLAS.setThreadCount(Parallel.coreCount) }
    concurrentPerform(iterations: workers) { w in
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: scratchFloats)
        defer { scratch.deallocate() }
        var task = w
        while task < tasks {
            run(task, scratch)
            task += workers
        }
    }
}

/// One input of an attention product: f32, or bf16, rows `ld` apart.
enum AttentionOperand {
    case f32(UnsafePointer<Float>, ld: Int)
    case bf16(UnsafePointer<UInt16>, ld: Int)

    /// The operand from row `rows` on.
    func advanced(rows: Int) -> AttentionOperand {
        switch self {
        case let .f32(p, ld): .f32(p + rows * ld, ld: ld)
        case let .bf16(p, ld): .bf16(p + rows * ld, ld: ld)
        }
    }

    /// The operand from column `columns` on.
    func advanced(columns: Int) -> AttentionOperand {
        switch self {
        case let .f32(p, ld): .f32(p + columns, ld: ld)
        case let .bf16(p, ld): .bf16(p + columns, ld: ld)
        }
    }
}

/// Per task, the bf16 copies an attention kernel multiplies with (`AttentionShape.bf16Products`):
/// one (row, KV head)'s keys and values, and a query block's stacked rows and probabilities.
struct AttentionBF16Scratch {
    let keys, values, queries, outputGradients, probabilities, scoreGradients: UnsafeMutablePointer<UInt16>

    /// For `keyRows` keys and blocks of `blockRows` stacked rows over at most `columns` keys.
    init(keyRows: Int, blockRows: Int, columns: Int, headDim D: Int) {
        keys = .allocate(capacity: keyRows * D); values = .allocate(capacity: keyRows * D)
        queries = .allocate(capacity: blockRows * D); outputGradients = .allocate(capacity: blockRows * D)
        probabilities = .allocate(capacity: blockRows * columns); scoreGradients = .allocate(capacity: blockRows * columns)
    }

    func deallocate() {
        for p in [keys, values, queries, outputGradients, probabilities, scoreGradients] { p.deallocate() }
    }

    /// One (row, KV head)'s first `rows` keys and values as the products read them: rounded into
    /// `half` when there is one (bf16 products), else the f32 originals (rows `kvStride` apart).
    static func operands(_ half: AttentionBF16Scratch?, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, rows: Int,
                         shape: AttentionShape) -> (keys: AttentionOperand, values: AttentionOperand) {
        guard let half else { return (.f32(keys, ld: shape.kvStride), .f32(values, ld: shape.kvStride)) }
        round(keys, ld: shape.kvStride, rows: rows, columns: shape.headDim, into: half.keys)
        round(values, ld: shape.kvStride, rows: rows, columns: shape.headDim, into: half.values)
        return (.bf16(half.keys, ld: shape.headDim), .bf16(half.values, ld: shape.headDim))
    }

    /// Rounds `rows` x `columns` f32 values (rows `ld` apart) into `dst` (rows `columns` apart).
    static func round(_ src: UnsafePointer<Float>, ld: Int, rows: Int, columns: Int, into dst: UnsafeMutablePointer<UInt16>) {
        finch_f32_to_bf16_rows(src, ld, dst, rows, columns)
    }
}

/// Attention's matrix products: on the calling thread alone inside a parallel task (oneDNN
/// with the thread's own primitives, or single-threaded OpenBLAS), else on every core.
struct AttentionProducts {
    let inTask: Bool

    /// C = alpha op(A) op(B) + beta C, both inputs f32 or both bf16.
    @inline(__always)
    func gemm(_ transA: BLAS.Transpose, _ transB: BLAS.Transpose, m: Int, n: Int, k: Int, alpha: Float = 1,
              a: AttentionOperand, b: AttentionOperand, beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        switch (a, b) {
        case let (.f32(pa, lda), .f32(pb, ldb)):
            sgemm(transA, transB, m: m, n: n, k: k, alpha: alpha, a: pa, lda: lda, b: pb, ldb: ldb, beta: beta, c: c, ldc: ldc)
        case let (.bf16(pa, lda), .bf16(pb, ldb)):
            if inTask {
                GEMM.taskBF16GEMM(transA, transB, m: m, n: n, k: k, alpha: alpha, a: pa, lda: lda, b: pb, ldb: ldb, beta: beta, c: c, ldc: ldc)
            } else {
                GEMM.multiply(transA, transB, m: m, n: n, k: k, alpha: alpha, a: .bf16(pa), lda: lda, b: .bf16(pb), ldb: ldb,
                              beta: beta, c: c, ldc: ldc, precision: .bf16)
            }
        default:
            preconditionFailure("attention products take two f32 or two bf16 inputs")
        }
    }

    @inline(__always)
    func sgemm(_ transA: BLAS.Transpose, _ transB: BLAS.Transpose, m: Int, n: Int, k: Int, alpha: Float = 1,
               a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int, beta: Float = 0,
               c: UnsafeMutablePointer<Float>, ldc: Int) {
        if inTask {
            GEMM.taskSGEMM(transA, transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
        } else {
            GEMM.sgemm(transA, transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
        }
    }
}

/// Softmax of one score row over its first `visible` columns, skipping keys whose mask is 0
/// and the columns `hidden`; the rest of the row (up to `length`) becomes 0. Column c holds key
/// `keys.key(c)` (the block's skipped keys are not in the row). Returns the log-sum-exp, or
/// -infinity (and an all-zero row) when no key is visible.
@inline(__always)
private func softmaxCausalRow(_ s: UnsafeMutablePointer<Float>, visible: Int, length: Int, mask: UnsafePointer<Float>?,
                              hidden: Range<Int> = 0..<0, keys: BlockKeys = .contiguous) -> Float {
    hideColumns(s, visible: visible, mask: mask, hidden: hidden, keys: keys)
    let (m, _) = maxAndIndex(s, count: visible)
    if visible < length { (s + visible).update(repeating: 0, count: length - visible) }
    guard m > -.infinity else { s.update(repeating: 0, count: visible); return -.infinity }
    let sum = expShiftedInPlace(s, count: visible, shift: m)
    let inverse = 1 / sum
    for j in 0..<visible { s[j] *= inverse }
    return m + logf(sum)
}

/// `softmaxCausalRow` for a bf16 P V product: the row's exponentials, shifted by its largest
/// score and rounded to bf16, go to `p` (0 past `visible`, up to `length`) unnormalised, and the
/// product's row is divided by their sum afterwards, as PyTorch's fused CPU attention rounds its
/// probabilities. Returns the log-sum-exp and 1 / sum (-infinity and 0 when no key is visible).
@inline(__always)
private func exponentialsRowBF16(_ s: UnsafeMutablePointer<Float>, visible: Int, length: Int, mask: UnsafePointer<Float>?,
                                 hidden: Range<Int>, keys: BlockKeys, into p: UnsafeMutablePointer<UInt16>) -> (lse: Float, inverse: Float) {
    hideColumns(s, visible: visible, mask: mask, hidden: hidden, keys: keys)
    let m = maxValue(s, count: visible)
    guard m > -.infinity else { p.update(repeating: 0, count: length); return (-.infinity, 0) }
    let sum = finch_exp_to_bf16(s, Int64(visible), Int64(length), m, p)
    return (m + logf(sum), 1 / sum)
}

/// Sets to -infinity the columns among the first `visible` whose key is padding (mask 0) or
/// in `hidden`.
@inline(__always)
private func hideColumns(_ s: UnsafeMutablePointer<Float>, visible: Int, mask: UnsafePointer<Float>?,
                         hidden: Range<Int>, keys: BlockKeys) {
    if let mask {
        for j in 0..<min(keys.gapStart, visible) where mask[j] == 0 { s[j] = -.infinity }
        if visible > keys.gapStart {
            for j in keys.gapStart..<visible where mask[j + keys.gapLength] == 0 { s[j] = -.infinity }
        }
    }
    for j in hidden.clamped(to: 0..<visible) { s[j] = -.infinity }
}

/// The keys of one query block's score rows: keys 0..<gapStart, then keys from gapStart +
/// gapLength on. The gap is a run of keys that no query of the block sees (the keys before a
/// packed sequence's start, outside a sliding window, or of the other branch of a shared
/// prompt), so its products are skipped rather than computed and masked.
struct BlockKeys {
    var gapStart = Int.max, gapLength = 0
    static var contiguous: BlockKeys { BlockKeys() }

    /// The gap of the query block `queries` (key positions `S + i`): the keys hidden from every
    /// query, [largest prefix end, smallest first key), when that run is not empty.
    init(queries: Range<Int>, S: Int, shape: AttentionShape, b: Int, visibility: KeyVisibility) {
        guard visibility.segmentStarts != nil || shape.window > 0 else { return }
        var start = 0, end = Int.max
        for i in queries {
            let (prefixEnd, first) = visibility.hidden(query: S + i, at: b * shape.seq + i, shape: shape)
            start = max(start, prefixEnd)
            end = min(end, first)
        }
        if end > start { gapStart = start; gapLength = end - start }
    }
    private init() {}

    /// The runs of keys in `0..<keys` outside the gap, as (first column, first key, count).
    func runs(keys: Int) -> [(column: Int, key: Int, count: Int)] {
        guard gapLength > 0 else { return [(0, 0, keys)] }
        let head = min(gapStart, keys), tail = keys - min(keys, gapStart + gapLength)
        return [(0, 0, head), (head, gapStart + gapLength, tail)].filter { $0.count > 0 }
    }

    /// Query `i` (a key position of the block) as columns of its row: how many it sees up to
    /// itself, and which of those stay hidden. The gap lies inside every query's hidden keys and
    /// before the query, so the keys after it move left by its length and what is left hidden is one run.
    func columns(query i: Int, hidden: (prefixEnd: Int, first: Int)) -> (visible: Int, hidden: Range<Int>) {
        (i + 1 - gapLength, hidden.prefixEnd < hidden.first ? hidden.prefixEnd..<(hidden.first - gapLength) : 0..<0)
    }
}

/// Which earlier keys each query sees beyond plain causal attention, per token [batch, seq]:
/// with `segmentStarts` (packed sequences, or a branch of a shared prompt) query i sees keys
/// [0, prefixEnds[i]) and [segmentStarts[i], i] only. Nil pointers: every earlier key. A
/// sliding window narrows packed sequences too; shared prompts take no window.
package struct KeyVisibility {
    /// The first key of each token's own sequence or branch.
    package var segmentStarts: UnsafePointer<Int32>?
    /// Keys before this one stay visible though before the segment start (the prompt a branch
    /// shares); nil: none.
    package var prefixEnds: UnsafePointer<Int32>?

    /// Every earlier key.
    package static var causal: KeyVisibility { KeyVisibility(segmentStarts: nil) }

    /// Packed sequences and shared prompts (`prefixEnds` needs `segmentStarts`).
    package init(segmentStarts: UnsafePointer<Int32>?, prefixEnds: UnsafePointer<Int32>? = nil) {
        precondition(prefixEnds == nil || segmentStarts != nil, "prefixEnds needs segmentStarts")
        self.segmentStarts = segmentStarts; self.prefixEnds = prefixEnds
    }

    /// The keys hidden from query `i` (its key position; `token` its index in the batch):
    /// [prefixEnd, first), empty when prefixEnd >= first.
    @inline(__always)
    func hidden(query i: Int, at token: Int, shape: AttentionShape) -> (prefixEnd: Int, first: Int) {
        let first = shape.firstKey(query: i, sequenceStart: segmentStarts.map { Int($0[token]) } ?? 0)
        return (min(prefixEnds.map { Int($0[token]) } ?? 0, first), first)
    }
}

/// Query rows per block of causal attention: a block of queries ending at position e needs
/// keys 0..<e only, so the products skip the upper triangle block by block (three eighths of
/// the work at 256 tokens, seven sixteenths at 512). 64 rows (192 stacked with 3 q heads per KV
/// head) ran attention forward + backward 10% faster than 128 at 4 x 512 tokens; 32 was no
/// faster. Tests set it smaller.
nonisolated(unsafe) var attentionQueryBlock = 64

/// Causal attention with grouped KV heads and a key padding mask [batch, seq] (1 keep, 0 pad).
/// `visibility` narrows what each query sees: packed sequences (a query sees only keys from the
/// start of its own sequence on) and branches that share a prompt (a branch's query sees the
/// prompt and its own branch, not the branches between).
/// Writes out and the log-sum-exp of each score row, lse [batch, heads, seq], which is all
/// backward needs to rebuild the probabilities. A query with no visible key outputs zeros.
///
/// The q heads that share a KV head are stacked into one matrix per query block, so each
/// block is two GEMMs of group * block rows against the visible keys; a run of keys that no
/// query of the block sees is left out of its products (`BlockKeys`).
///
/// For a KV cache (a prompt's prefill, in chunks): `queryStart` is the position of the first
/// query (each query at queryStart + i sees keys 0...queryStart + i), and `kvRows` the positions
/// per batch row in k, v and keyMask (the cache's capacity). Defaults: 0 and `shape.seq`.
package func attentionForward(out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                             q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                             keyMask: UnsafePointer<Float>?, visibility: KeyVisibility = .causal, shape: AttentionShape,
                             queryStart: Int = 0, kvRows: Int? = nil) {
    let T = shape.seq, D = shape.headDim, G = shape.group, B = min(attentionQueryBlock, T)
    let R = kvRows ?? T, S = queryStart, K = S + T   // K: keys of the last query
    precondition(S == 0 || visibility.segmentStarts == nil, "attentionForward: packed sequences start at position 0")
    precondition(visibility.prefixEnds == nil || shape.window == 0, "attentionForward: a shared prompt with a sliding window")
    forEachKVGroup(shape, parts: attentionParts(shape), queryStart: S, scratchFloats: G * B * (K + 2 * D + 1)) { b, kvh, blocks, _, scratch, products in
        let kb = k + b * R * shape.kvStride + kvh * D
        let vb = v + b * R * shape.kvStride + kvh * D
        let mask = keyMask.map { $0 + b * R }
        let scores = scratch, stackedQ = scratch + G * B * K, stackedOut = stackedQ + G * B * D
        let inverses = stackedOut + G * B * D   // [G * B] 1 / sum of each row's exponentials (bf16 products)
        let half = shape.bf16Products ? AttentionBF16Scratch(keyRows: K, blockRows: G * B, columns: K, headDim: D) : nil
        defer { half?.deallocate() }
        let (keys, values) = AttentionBF16Scratch.operands(half, keys: kb, values: vb, rows: K, shape: shape)
        for block in blocks {
            let i0 = block * B, rows = min(B, T - i0), m = G * rows
            let blockKeys = BlockKeys(queries: i0..<i0 + rows, S: S, shape: shape, b: b, visibility: visibility)
            let runs = blockKeys.runs(keys: S + i0 + rows)
            let columns = runs.reduce(0) { $0 + $1.count }
            let heads = QueryBlock(shape: shape, b: b, kvh: kvh, start: i0, rows: rows)
            heads.gather(q, into: stackedQ)
            var queries = AttentionOperand.f32(stackedQ, ld: D)
            if let half {
                AttentionBF16Scratch.round(stackedQ, ld: D, rows: m, columns: D, into: half.queries)
                queries = .bf16(half.queries, ld: D)
            }
            // scores = scale * Q K^T   [G * rows, columns]
            for run in runs {
                products.gemm(.none, .transpose, m: m, n: run.count, k: D, alpha: shape.scale, a: queries,
                              b: keys.advanced(rows: run.key), c: scores + run.column, ldc: columns)
            }
            for g in 0..<G {
                let lseRow = lse + (b * shape.heads + kvh * G + g) * T
                for r in 0..<rows {
                    let i = i0 + r, index = g * rows + r, row = scores + index * columns
                    let cols = blockKeys.columns(query: S + i, hidden: visibility.hidden(query: S + i, at: b * T + i, shape: shape))
                    if shape.softcap > 0 { softcapInPlace(row, count: cols.visible, cap: shape.softcap) }
                    if let half {
                        (lseRow[i], inverses[index]) = exponentialsRowBF16(row, visible: cols.visible, length: columns, mask: mask,
                                                                           hidden: cols.hidden, keys: blockKeys,
                                                                           into: half.probabilities + index * columns)
                    } else {
                        lseRow[i] = softmaxCausalRow(row, visible: cols.visible, length: columns, mask: mask,
                                                     hidden: cols.hidden, keys: blockKeys)
                    }
                }
            }
            let probabilities = half.map { AttentionOperand.bf16($0.probabilities, ld: columns) } ?? .f32(scores, ld: columns)
            // out = P V   [G * rows, D]
            for (index, run) in runs.enumerated() {
                products.gemm(.none, .none, m: m, n: D, k: run.count, a: probabilities.advanced(columns: run.column),
                              b: values.advanced(rows: run.key), beta: index == 0 ? 0 : 1, c: stackedOut, ldc: D)
            }
            if half != nil { for index in 0..<m { scaleInPlace(stackedOut + index * D, count: D, by: inverses[index]) } }
            heads.scatter(stackedOut, into: out)
        }
    }
}

/// The rows [start, start + rows) of the q heads of KV head `kvh` in batch row `b`, stacked
/// head by head into a [group * rows, headDim] matrix (and back).
private struct QueryBlock {
    let shape: AttentionShape, b: Int, kvh: Int, start: Int, rows: Int

    private func row(_ g: Int, _ r: Int) -> Int {
        (b * shape.seq + start + r) * shape.qStride + (kvh * shape.group + g) * shape.headDim
    }

    func gather(_ source: UnsafePointer<Float>, into stacked: UnsafeMutablePointer<Float>) {
        let D = shape.headDim
        for g in 0..<shape.group { for r in 0..<rows { (stacked + (g * rows + r) * D).update(from: source + row(g, r), count: D) } }
    }

    func scatter(_ stacked: UnsafePointer<Float>, into destination: UnsafeMutablePointer<Float>) {
        let D = shape.headDim
        for g in 0..<shape.group { for r in 0..<rows { (destination + row(g, r)).update(from: stacked + (g * rows + r) * D, count: D) } }
    }
}

/// Backward of `attentionForward`. Writes dq, dk and dv (not accumulating).
/// P is rebuilt from lse; dS = P * (dP - rowsum(dO * O)). Blocked and stacked as the forward.
package func attentionBackward(dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                              dout: UnsafePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>,
                              v: UnsafePointer<Float>, out: UnsafePointer<Float>, lse: UnsafePointer<Float>,
                              keyMask: UnsafePointer<Float>?, visibility: KeyVisibility = .causal, shape: AttentionShape) {
    let T = shape.seq, D = shape.headDim, G = shape.group, B = min(attentionQueryBlock, T)
    _ = CPU.vectorLevel   // finch_attention_row_grad_bf16's level
    // Parts after the first of a (row, KV head) sum their dK and dV into buffers of their own,
    // [T, D] each, added to dk and dv in part order afterwards (the same sums on every run).
    let parts = attentionParts(shape), pairs = shape.batch * shape.kvHeads
    let partials = UnsafeMutablePointer<Float>.allocate(capacity: parts > 1 ? pairs * (parts - 1) * 2 * T * D : 0)
    defer { partials.deallocate() }
    forEachKVGroup(shape, parts: parts, scratchFloats: G * B * (2 * T + 4 * D) + T) { b, kvh, blocks, part, scratch, products in
        let p = scratch, ds = scratch + G * B * T
        let stackedQ = ds + G * B * T, stackedO = stackedQ + G * B * D
        let stackedDO = stackedO + G * B * D, stackedDQ = stackedDO + G * B * D
        let capSlope = stackedDQ + G * B * D   // [T] 1 - tanh^2 of one row's scores, with a softcap
        let kb = k + b * T * shape.kvStride + kvh * D
        let vb = v + b * T * shape.kvStride + kvh * D
        let dkb: UnsafeMutablePointer<Float>, dvb: UnsafeMutablePointer<Float>, ldkv: Int
        if part == 0 {
            dkb = dk + b * T * shape.kvStride + kvh * D
            dvb = dv + b * T * shape.kvStride + kvh * D
            ldkv = shape.kvStride
        } else {
            dkb = partials + ((b * shape.kvHeads + kvh) * (parts - 1) + part - 1) * 2 * T * D
            dvb = dkb + T * D
            ldkv = D
        }
        for t in 0..<T {
            (dkb + t * ldkv).update(repeating: 0, count: D)
            (dvb + t * ldkv).update(repeating: 0, count: D)
        }
        let mask = keyMask.map { $0 + b * T }
        let half = shape.bf16Products ? AttentionBF16Scratch(keyRows: T, blockRows: G * B, columns: T, headDim: D) : nil
        defer { half?.deallocate() }
        let (keys, values) = AttentionBF16Scratch.operands(half, keys: kb, values: vb, rows: T, shape: shape)
        let fused = shape.softcap == 0   // with bf16 products: P and dS rounded row by row as they are made
        for block in blocks {
            let i0 = block * B, rows = min(B, T - i0), m = G * rows
            let blockKeys = BlockKeys(queries: i0..<i0 + rows, S: 0, shape: shape, b: b, visibility: visibility)
            let runs = blockKeys.runs(keys: i0 + rows)
            let columns = runs.reduce(0) { $0 + $1.count }
            let heads = QueryBlock(shape: shape, b: b, kvh: kvh, start: i0, rows: rows)
            heads.gather(q, into: stackedQ)
            heads.gather(out, into: stackedO)
            heads.gather(dout, into: stackedDO)
            var queries = AttentionOperand.f32(stackedQ, ld: D), outputGradients = AttentionOperand.f32(stackedDO, ld: D)
            if let half {
                AttentionBF16Scratch.round(stackedQ, ld: D, rows: m, columns: D, into: half.queries)
                AttentionBF16Scratch.round(stackedDO, ld: D, rows: m, columns: D, into: half.outputGradients)
                queries = .bf16(half.queries, ld: D); outputGradients = .bf16(half.outputGradients, ld: D)
            }
            // S = scale Q K^T and dP = dO V^T   [m, keys]
            for run in runs {
                products.gemm(.none, .transpose, m: m, n: run.count, k: D, alpha: shape.scale, a: queries,
                              b: keys.advanced(rows: run.key), c: p + run.column, ldc: columns)
                products.gemm(.none, .transpose, m: m, n: run.count, k: D, a: outputGradients,
                              b: values.advanced(rows: run.key), c: ds + run.column, ldc: columns)
            }
            for g in 0..<G {
                let lseRow = lse + (b * shape.heads + kvh * G + g) * T
                for r in 0..<rows {
                    let i = i0 + r, row = g * rows + r
                    let pr = p + row * columns, dsr = ds + row * columns
                    let l = lseRow[i]
                    var delta: Float = 0
                    for d in 0..<D { delta += stackedDO[row * D + d] * stackedO[row * D + d] }
                    if l == -Float.infinity {   // no visible key: P and dS are 0 (in bf16 where made there)
                        if let half, fused {
                            (half.probabilities + row * columns).update(repeating: 0, count: columns)
                            (half.scoreGradients + row * columns).update(repeating: 0, count: columns)
                        } else {
                            pr.update(repeating: 0, count: columns); dsr.update(repeating: 0, count: columns)
                        }
                        continue
                    }
                    let cols = blockKeys.columns(query: i, hidden: visibility.hidden(query: i, at: b * T + i, shape: shape))
                    let visible = cols.visible
                    if let half, fused {
                        // P and dS rounded to bf16 in one pass over the row (the same values as below)
                        hideColumns(pr, visible: visible, mask: mask, hidden: cols.hidden, keys: blockKeys)
                        finch_attention_row_grad_bf16(pr, dsr, Int64(visible), Int64(columns), l, delta,
                                                      half.probabilities + row * columns, half.scoreGradients + row * columns)
                        continue
                    }
                    // S = c tanh(S0 / c) with a softcap: dS0 = dS (1 - tanh^2)
                    if shape.softcap > 0 {
                        let c = shape.softcap
                        for j in 0..<visible {
                            let t = tanhf(pr[j] / c)
                            pr[j] = c * t
                            capSlope[j] = 1 - t * t
                        }
                    }
                    // P = exp(S - lse) on visible keys, 0 elsewhere; dS = P * (dP - delta)
                    hideColumns(pr, visible: visible, mask: mask, hidden: cols.hidden, keys: blockKeys)
                    scaledExpInPlace(pr, count: visible, shift: l, scale: 1)
                    for j in 0..<visible { dsr[j] = pr[j] * (dsr[j] - delta) }
                    if shape.softcap > 0 { for j in 0..<visible { dsr[j] *= capSlope[j] } }
                    if visible < columns {
                        (pr + visible).update(repeating: 0, count: columns - visible)
                        (dsr + visible).update(repeating: 0, count: columns - visible)
                    }
                }
            }
            var probabilities = AttentionOperand.f32(p, ld: columns), scoreGradients = AttentionOperand.f32(ds, ld: columns)
            if let half {
                if !fused {
                    AttentionBF16Scratch.round(p, ld: columns, rows: m, columns: columns, into: half.probabilities)
                    AttentionBF16Scratch.round(ds, ld: columns, rows: m, columns: columns, into: half.scoreGradients)
                }
                probabilities = .bf16(half.probabilities, ld: columns); scoreGradients = .bf16(half.scoreGradients, ld: columns)
            }
            // dV += P^T dO ; dQ = scale * dS K ; dK += scale * dS^T Q   (over the visible keys)
            for (index, run) in runs.enumerated() {
                products.gemm(.transpose, .none, m: run.count, n: D, k: m, a: probabilities.advanced(columns: run.column),
                              b: outputGradients, beta: 1, c: dvb + run.key * ldkv, ldc: ldkv)
                products.gemm(.none, .none, m: m, n: D, k: run.count, alpha: shape.scale, a: scoreGradients.advanced(columns: run.column),
                              b: keys.advanced(rows: run.key), beta: index == 0 ? 0 : 1, c: stackedDQ, ldc: D)
                products.gemm(.transpose, .none, m: run.count, n: D, k: m, alpha: shape.scale, a: scoreGradients.advanced(columns: run.column),
                              b: queries, beta: 1, c: dkb + run.key * ldkv, ldc: ldkv)
            }
            heads.scatter(stackedDQ, into: dq)
        }
    }
    guard parts > 1 else { return }
    for pair in 0..<pairs {
        let b = pair / shape.kvHeads, kvh = pair % shape.kvHeads
        for part in 1..<parts {
            let dkp = partials + (pair * (parts - 1) + part - 1) * 2 * T * D, dvp = dkp + T * D
            for t in 0..<T {
                let row = (b * T + t) * shape.kvStride + kvh * D
                for d in 0..<D {
                    dk[row + d] += dkp[t * D + d]
                    dv[row + d] += dvp[t * D + d]
                }
            }
        }
    }
}

/// Attention of a chunk of `queries` new positions per row against a KV cache: queries
/// q [batch * queries, heads * headDim] sit at positions start..<start+queries; keys and values
/// [batch, capacity, kvHeads * headDim] hold start+queries
/// filled positions. A key is visible when it is not after the query and keyMask[b * capacity + j] != 0.
package func attentionCachedForward(out: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>,
                                   keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
                                   keyMask: UnsafePointer<Float>, capacity: Int, start: Int, queries: Int,
                                   shape: AttentionShape) {
    if queries <= 4 && shape.headDim % 8 == 0 {
        return attentionDecodeForward(out: out, q: q, keys: keys, values: values, keyMask: keyMask,
                                      capacity: capacity, start: start, queries: queries, shape: shape)
    }
    // A prompt's chunk is causal self-attention shifted by `start`: the blocked kernel skips the
    // keys after each query block and shares the work evenly over the cores. (It replaced plain
    // GEMMs over every key for every query, one task per (row, KV head).)
    let lse = UnsafeMutablePointer<Float>.allocate(capacity: shape.batch * shape.heads * queries)
    defer { lse.deallocate() }
    var chunk = shape
    chunk.seq = queries
    attentionForward(out: out, lse: lse, q: q, k: keys, v: values, keyMask: keyMask, shape: chunk,
                     queryStart: start, kvRows: capacity)
}

/// `attentionCachedForward` for a few queries per row (decoding): plain loops beat GEMM calls on
/// such thin products. Each (row, query head) is one unit of work; the units are shared with the
/// other cores through the spinning pool, as decoding's matrix-vector products are, once
/// there is enough of them (a long cache) to pay for the hand-off.
private func attentionDecodeForward(out: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>,
                                    keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
                                    keyMask: UnsafePointer<Float>, capacity: Int, start: Int, queries: Int,
                                    shape: AttentionShape) {
    let D = shape.headDim, total = start + queries
    let units = shape.batch * shape.heads
    _ = CPU.vectorLevel
    let work = { (range: Range<Int>) in
        guard !range.isEmpty else { return }
        let scores = UnsafeMutablePointer<Float>.allocate(capacity: queries * total)
        defer { scores.deallocate() }
        for unit in range {
            let b = unit / shape.heads, h = unit % shape.heads, kvh = h / shape.group
            let kb = keys + b * capacity * shape.kvStride + kvh * D, vb = values + b * capacity * shape.kvStride + kvh * D
            let mask = keyMask + b * capacity
            let qb = q + b * queries * shape.qStride + h * D
            let ob = out + b * queries * shape.qStride + h * D
            for i in 0..<queries {
                let qi = qb + i * shape.qStride, row = scores + i * total, visible = start + i + 1
                // FinchCPU/vector.c: four keys at a time into their own sums; the weighted values
                // in registers over every value row.
                finch_key_scores(qi, kb, Int64(shape.kvStride), Int64(visible), Int64(D), shape.scale, row)
                if shape.softcap > 0 { softcapInPlace(row, count: visible, cap: shape.softcap) }
                _ = softmaxCausalRow(row, visible: visible, length: total, mask: mask,
                                     hidden: 0..<shape.firstKey(query: start + i, sequenceStart: 0))
                finch_weighted_values(row, vb, Int64(shape.kvStride), Int64(visible), Int64(D), ob + i * shape.qStride)
            }
        }
    }
    // About 2 * D multiply-adds per unit and key; below ~16k the hand-off costs more than it saves.
    guard units >= 2 && units * queries * total * D >= 16_384 else { return work(0..<units) }
    withoutActuallyEscaping(work) { work in
        SpinPool.shared.run { part, parts in work(units * part / parts..<units * (part + 1) / parts) }
    }
}
