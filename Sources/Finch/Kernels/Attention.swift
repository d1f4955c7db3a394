import Foundation

/// Sizes of one causal self-attention call. Tensors are token-major:
/// q and out are [batch * seq, heads * headDim]; k and v are [batch * seq, kvHeads * headDim].
public struct AttentionShape: Sendable {
    public var batch: Int
    public var seq: Int
    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int

    public init(batch: Int, seq: Int, heads: Int, kvHeads: Int, headDim: Int) {
        self.batch = batch; self.seq = seq; self.heads = heads; self.kvHeads = kvHeads; self.headDim = headDim
    }
    var qStride: Int { heads * headDim }
    var kvStride: Int { kvHeads * headDim }
    var group: Int { heads / kvHeads }
    var scale: Float { 1 / Float(headDim).squareRoot() }
}

/// Runs `body(b, kvHead, scratch)` for every (batch row, KV head) pair on all cores. The q heads
/// that share a KV head run in one task, so that dK and dV of that head have a single writer.
/// Inside the parallel region BLAS runs single-threaded; with fewer tasks than cores it keeps its threads.
private func forEachKVGroup(_ shape: AttentionShape, scratchFloats: Int,
                            _ body: (Int, Int, UnsafeMutablePointer<Float>) -> Void) {
    let tasks = shape.batch * shape.kvHeads
    let workers = min(tasks, Parallel.coreCount)
    if workers <= 1 {
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: scratchFloats)
        defer { scratch.deallocate() }
        for task in 0..<tasks { body(task / shape.kvHeads, task % shape.kvHeads, scratch) }
        return
    }
    BLAS.setThreadCount(1)
    defer { BLAS.setThreadCount(Parallel.coreCount) }
    DispatchQueue.concurrentPerform(iterations: workers) { w in
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: scratchFloats)
        defer { scratch.deallocate() }
        var task = w
        while task < tasks {
            body(task / shape.kvHeads, task % shape.kvHeads, scratch)
            task += workers
        }
    }
}

/// Softmax of one score row over its first `visible` keys, skipping keys whose mask is 0;
/// the rest of the row (up to `length`) becomes 0. Returns the log-sum-exp, or -infinity
/// (and an all-zero row) when no key is visible.
@inline(__always)
private func softmaxCausalRow(_ s: UnsafeMutablePointer<Float>, visible: Int, length: Int, mask: UnsafePointer<Float>?,
                              first: Int = 0) -> Float {
    if let mask { for j in 0..<visible where mask[j] == 0 { s[j] = -.infinity } }
    for j in 0..<min(first, visible) { s[j] = -.infinity }
    let (m, _) = maxAndIndex(s, count: visible)
    if visible < length { (s + visible).update(repeating: 0, count: length - visible) }
    guard m > -.infinity else { s.update(repeating: 0, count: visible); return -.infinity }
    let sum = expShiftedInPlace(s, count: visible, shift: m)
    let inverse = 1 / sum
    for j in 0..<visible { s[j] *= inverse }
    return m + logf(sum)
}

/// Causal attention with grouped KV heads and a key padding mask [batch, seq] (1 keep, 0 pad).
/// With `segmentStarts` [batch, seq] (packed sequences), a query sees only keys from the start
/// of its own sequence on.
/// Writes out and the log-sum-exp of each score row, lse [batch, heads, seq], which is all
/// backward needs to rebuild the probabilities. A query with no visible key outputs zeros.
public func attentionForward(out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                             q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                             keyMask: UnsafePointer<Float>?, segmentStarts: UnsafePointer<Int32>? = nil, shape: AttentionShape) {
    let T = shape.seq, D = shape.headDim
    forEachKVGroup(shape, scratchFloats: T * T) { b, kvh, scores in
        let kb = k + b * T * shape.kvStride + kvh * D
        let vb = v + b * T * shape.kvStride + kvh * D
        let mask = keyMask.map { $0 + b * T }
        for h in kvh * shape.group..<(kvh + 1) * shape.group {
            let qb = q + b * T * shape.qStride + h * D
            // scores = scale * Q K^T   [T, T]
            BLAS.sgemm(.none, .transpose, m: T, n: T, k: D, alpha: shape.scale, a: qb, lda: shape.qStride,
                       b: kb, ldb: shape.kvStride, c: scores, ldc: T)
            let lseRow = lse + (b * shape.heads + h) * T
            for i in 0..<T {
                lseRow[i] = softmaxCausalRow(scores + i * T, visible: i + 1, length: T, mask: mask,
                                             first: segmentStarts.map { Int($0[b * T + i]) } ?? 0)
            }
            // out = P V   [T, D]
            BLAS.sgemm(.none, .none, m: T, n: D, k: T, a: scores, lda: T, b: vb, ldb: shape.kvStride,
                       c: out + b * T * shape.qStride + h * D, ldc: shape.qStride)
        }
    }
}

/// Backward of `attentionForward`. Writes dq, dk and dv (not accumulating).
/// P is rebuilt from lse; dS = P * (dP - rowsum(dO * O)).
public func attentionBackward(dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                              dout: UnsafePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>,
                              v: UnsafePointer<Float>, out: UnsafePointer<Float>, lse: UnsafePointer<Float>,
                              keyMask: UnsafePointer<Float>?, segmentStarts: UnsafePointer<Int32>? = nil, shape: AttentionShape) {
    let T = shape.seq, D = shape.headDim
    forEachKVGroup(shape, scratchFloats: 2 * T * T) { b, kvh, scratch in
        let p = scratch, ds = scratch + T * T
        let kb = k + b * T * shape.kvStride + kvh * D
        let vb = v + b * T * shape.kvStride + kvh * D
        let dkb = dk + b * T * shape.kvStride + kvh * D
        let dvb = dv + b * T * shape.kvStride + kvh * D
        for t in 0..<T {
            (dkb + t * shape.kvStride).update(repeating: 0, count: D)
            (dvb + t * shape.kvStride).update(repeating: 0, count: D)
        }
        let mask = keyMask.map { $0 + b * T }
        for h in kvh * shape.group..<(kvh + 1) * shape.group {
            let qb = q + b * T * shape.qStride + h * D
            let ob = out + b * T * shape.qStride + h * D
            let dob = dout + b * T * shape.qStride + h * D
            let lseRow = lse + (b * shape.heads + h) * T
            BLAS.sgemm(.none, .transpose, m: T, n: T, k: D, alpha: shape.scale, a: qb, lda: shape.qStride,
                       b: kb, ldb: shape.kvStride, c: p, ldc: T)
            // dP = dO V^T   [T, T]
            BLAS.sgemm(.none, .transpose, m: T, n: T, k: D, a: dob, lda: shape.qStride,
                       b: vb, ldb: shape.kvStride, c: ds, ldc: T)
            for i in 0..<T {
                let pr = p + i * T, dsr = ds + i * T
                let l = lseRow[i]
                var delta: Float = 0
                for d in 0..<D { delta += dob[i * shape.qStride + d] * ob[i * shape.qStride + d] }
                if l == -Float.infinity {
                    pr.update(repeating: 0, count: T); dsr.update(repeating: 0, count: T)
                    continue
                }
                // P = exp(S - lse) on visible keys, 0 elsewhere; dS = P * (dP - delta)
                if let mask { for j in 0...i where mask[j] == 0 { pr[j] = -.infinity } }
                if let segmentStarts { for j in 0..<Int(segmentStarts[b * T + i]) { pr[j] = -.infinity } }
                scaledExpInPlace(pr, count: i + 1, shift: l, scale: 1)
                for j in 0...i { dsr[j] = pr[j] * (dsr[j] - delta) }
                if i + 1 < T {
                    (pr + i + 1).update(repeating: 0, count: T - i - 1)
                    (dsr + i + 1).update(repeating: 0, count: T - i - 1)
                }
            }
            // dV += P^T dO ; dQ = scale * dS K ; dK += scale * dS^T Q
            BLAS.sgemm(.transpose, .none, m: T, n: D, k: T, a: p, lda: T, b: dob, ldb: shape.qStride,
                       beta: 1, c: dvb, ldc: shape.kvStride)
            BLAS.sgemm(.none, .none, m: T, n: D, k: T, alpha: shape.scale, a: ds, lda: T, b: kb, ldb: shape.kvStride,
                       c: dq + b * T * shape.qStride + h * D, ldc: shape.qStride)
            BLAS.sgemm(.transpose, .none, m: T, n: D, k: T, alpha: shape.scale, a: ds, lda: T, b: qb, ldb: shape.qStride,
                       beta: 1, c: dkb, ldc: shape.kvStride)
        }
    }
}

/// Attention of a chunk of `queries` new positions per row against a KV cache: queries
/// q [batch * queries, heads * headDim] sit at positions start..<start+queries; keys and values
/// [batch, capacity, kvHeads * headDim] hold start+queries
/// filled positions. A key is visible when it is not after the query and keyMask[b * capacity + j] != 0.
public func attentionCachedForward(out: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>,
                                   keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
                                   keyMask: UnsafePointer<Float>, capacity: Int, start: Int, queries: Int,
                                   shape: AttentionShape) {
    let D = shape.headDim, total = start + queries
    let tasks = shape.batch * shape.kvHeads
    let work = { (task: Int, scores: UnsafeMutablePointer<Float>) in
        let b = task / shape.kvHeads, kvh = task % shape.kvHeads
        let kb = keys + b * capacity * shape.kvStride + kvh * D, vb = values + b * capacity * shape.kvStride + kvh * D
        let mask = keyMask + b * capacity
        for h in kvh * shape.group..<(kvh + 1) * shape.group {
            let qb = q + b * queries * shape.qStride + h * D
            let ob = out + b * queries * shape.qStride + h * D
            if queries > 4 || D % 8 != 0 {
                BLAS.sgemm(.none, .transpose, m: queries, n: total, k: D, alpha: shape.scale, a: qb, lda: shape.qStride,
                           b: kb, ldb: shape.kvStride, c: scores, ldc: total)
                for i in 0..<queries {
                    _ = softmaxCausalRow(scores + i * total, visible: start + i + 1, length: total, mask: mask)
                }
                BLAS.sgemm(.none, .none, m: queries, n: D, k: total, a: scores, lda: total, b: vb, ldb: shape.kvStride,
                           c: ob, ldc: shape.qStride)
                continue
            }
            // A few queries (decoding): plain loops beat GEMM calls on such thin products.
            for i in 0..<queries {
                let qi = qb + i * shape.qStride, row = scores + i * total, visible = start + i + 1
                for j in 0..<visible { row[j] = shape.scale * dot8(qi, kb + j * shape.kvStride, D) }
                _ = softmaxCausalRow(row, visible: visible, length: total, mask: mask)
                let oi = ob + i * shape.qStride
                oi.update(repeating: 0, count: D)
                for j in 0..<visible where row[j] != 0 { axpy8(row[j], vb + j * shape.kvStride, oi, D) }
            }
        }
    }
    if tasks < 2 || queries * total < 4096 {
        let scores = UnsafeMutablePointer<Float>.allocate(capacity: queries * total)
        defer { scores.deallocate() }
        for task in 0..<tasks { work(task, scores) }
        return
    }
    BLAS.setThreadCount(1)
    defer { BLAS.setThreadCount(Parallel.coreCount) }
    let workers = min(tasks, Parallel.coreCount)
    DispatchQueue.concurrentPerform(iterations: workers) { w in
        let scores = UnsafeMutablePointer<Float>.allocate(capacity: queries * total)
        defer { scores.deallocate() }
        var task = w
        while task < tasks { work(task, scores); task += workers }
    }
}

/// sum x[i] y[i] for i < count (a multiple of 8).
@inline(__always)
private func dot8(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, _ count: Int) -> Float {
    var acc = SIMD8<Float>()
    for i in stride(from: 0, to: count, by: 8) {
        acc = acc.addingProduct(UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self),
                                UnsafeRawPointer(y + i).loadUnaligned(as: SIMD8<Float>.self))
    }
    return acc.sum()
}

/// y[i] += a * x[i] for i < count (a multiple of 8).
@inline(__always)
private func axpy8(_ a: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ count: Int) {
    for i in stride(from: 0, to: count, by: 8) {
        let yi = UnsafeMutableRawPointer(y + i)
        yi.storeBytes(of: yi.loadUnaligned(as: SIMD8<Float>.self)
            .addingProduct(a, UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)), as: SIMD8<Float>.self)
    }
}
