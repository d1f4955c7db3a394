import XCTest
import FinchTestSupport
@testable import FinchKernels

/// Each kernel against a naive implementation (forward) and central differences (backward).
final class KernelTests: XCTestCase {
    typealias S = TestSupport

    func testSgemmMatchesNaiveForEveryTransposition() {
        let m = 7, n = 5, k = 9
        let a = S.randomArray(m * k, seed: 1), b = S.randomArray(k * n, seed: 2)
        var expected = [Float](repeating: 0, count: m * n)
        for i in 0..<m { for j in 0..<n { for p in 0..<k { expected[i * n + j] += a[i * k + p] * b[p * n + j] } } }
        // Transposed copies: aT [k, m], bT [n, k].
        var aT = [Float](repeating: 0, count: m * k), bT = [Float](repeating: 0, count: k * n)
        for i in 0..<m { for p in 0..<k { aT[p * m + i] = a[i * k + p] } }
        for p in 0..<k { for j in 0..<n { bT[j * k + p] = b[p * n + j] } }
        for (ta, tb) in [(BLAS.Transpose.none, BLAS.Transpose.none), (.transpose, .none), (.none, .transpose), (.transpose, .transpose)] {
            var c = [Float](repeating: 0, count: m * n)
            let aa = ta == .none ? a : aT, bb = tb == .none ? b : bT
            c.withUnsafeMutableBufferPointer { cp in
                BLAS.sgemm(ta, tb, m: m, n: n, k: k, a: aa, lda: ta == .none ? k : m, b: bb, ldb: tb == .none ? n : k,
                           c: cp.baseAddress!, ldc: n)
            }
            XCTAssertLessThan(S.maxRelativeError(c, expected), 1e-5, "transA \(ta) transB \(tb)")
        }
    }

    func testRMSNormForwardAndBackward() {
        let rows = 3, dim = 16, eps: Float = 1e-5
        let x = S.randomArray(rows * dim, seed: 3), w = S.randomArray(dim, seed: 4, scale: 0.5).map { $0 + 1 }
        let r = S.randomArray(rows * dim, seed: 5)
        func forward(_ x: [Float], _ w: [Float]) -> [Float] {
            var y = [Float](repeating: 0, count: rows * dim)
            y.withUnsafeMutableBufferPointer { rmsnormForward($0.baseAddress!, nil, x, w, rows: rows, dim: dim, eps: eps) }
            return y
        }
        var naive = [Float](repeating: 0, count: rows * dim)
        for i in 0..<rows {
            let ms = (0..<dim).reduce(0.0) { $0 + Double(x[i * dim + $1] * x[i * dim + $1]) } / Double(dim)
            for j in 0..<dim { naive[i * dim + j] = Float(Double(x[i * dim + j]) / (ms + Double(eps)).squareRoot()) * w[j] }
        }
        XCTAssertLessThan(S.maxRelativeError(forward(x, w), naive), 1e-5)

        var rstd = [Float](repeating: 0, count: rows), y = naive
        y.withUnsafeMutableBufferPointer { yp in rstd.withUnsafeMutableBufferPointer { rmsnormForward(yp.baseAddress!, $0.baseAddress!, x, w, rows: rows, dim: dim, eps: eps) } }
        var dx = [Float](repeating: 0, count: rows * dim), dw = [Float](repeating: 0, count: dim)
        dx.withUnsafeMutableBufferPointer { dxp in dw.withUnsafeMutableBufferPointer { dwp in
            rmsnormBackward(dxp.baseAddress!, dwp.baseAddress!, r, x, w, rstd, rows: rows, dim: dim)
        } }
        let numericDx = S.numericalGradient(x) { S.dot(forward($0, w), r) }
        let numericDw = S.numericalGradient(w) { S.dot(forward(x, $0), r) }
        XCTAssertLessThan(S.relativeL2(dx, numericDx), 2e-3)
        XCTAssertLessThan(S.relativeL2(dw, numericDw), 2e-3)
    }

    func testRoPEMatchesNaiveRotationAndInverts() {
        let tokens = 4, heads = 2, D = 8
        let rope = RotaryEmbedding(headDim: D, theta: 10000, scaling: .none)
        let positions: [Int32] = [0, 1, 5, 17]
        let (c, s) = rope.tables(positions: positions, count: tokens)
        let x = S.randomArray(tokens * heads * D, seed: 6)
        var y = x
        y.withUnsafeMutableBufferPointer { ropeApply($0.baseAddress!, cos: c, sin: s, tokens: tokens, heads: heads, headDim: D) }
        for t in 0..<tokens { for h in 0..<heads { for i in 0..<D / 2 {
            let angle = Double(positions[t]) / pow(10000.0, Double(2 * i) / Double(D))
            let a = Double(x[(t * heads + h) * D + i]), b = Double(x[(t * heads + h) * D + i + D / 2])
            XCTAssertEqual(Double(y[(t * heads + h) * D + i]), a * cos(angle) - b * sin(angle), accuracy: 1e-4)
            XCTAssertEqual(Double(y[(t * heads + h) * D + i + D / 2]), b * cos(angle) + a * sin(angle), accuracy: 1e-4)
        } } }
        y.withUnsafeMutableBufferPointer { ropeApply($0.baseAddress!, cos: c, sin: s, tokens: tokens, heads: heads, headDim: D, inverse: true) }
        XCTAssertLessThan(S.maxRelativeError(y, x), 1e-5, "the inverse rotation (backward) undoes the forward")
    }

    func testLlama3RopeScalingKeepsShortAndStretchesLongWavelengths() {
        let plain = RotaryEmbedding(headDim: 64, theta: 500000, scaling: .none)
        let scaled = RotaryEmbedding(headDim: 64, theta: 500000,
                                     scaling: .llama3(factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192))
        XCTAssertEqual(scaled.inverseFrequencies[0], plain.inverseFrequencies[0], "high frequencies are kept")
        XCTAssertEqual(scaled.inverseFrequencies[31], plain.inverseFrequencies[31] / 8, accuracy: 1e-12, "low frequencies are divided by the factor")
    }

    /// With query blocks of 2 and 3 the 5-token rows run in several causal blocks (as rows
    /// longer than `attentionQueryBlock` do); with 128 in one. 2 rows x 2 KV heads share out
    /// evenly over 2 cores; 3 rows x 1 KV head do not, so each row's query blocks are split
    /// between the cores (dK and dV summed from parts).
    func testAttentionForwardMatchesNaiveAndBackwardMatchesNumerical() {
        let saved = attentionQueryBlock
        defer { attentionQueryBlock = saved }
        for block in [128, 2, 3] {
            attentionQueryBlock = block
            checkAttention(batch: 2, kvHeads: 2)
            checkAttention(batch: 3, kvHeads: 1)
        }
    }

    /// Under bf16 mixed precision attention's products take bf16-rounded inputs: the forward
    /// equals a naive one over bf16-rounded q, k and v (the probabilities are rounded too, so
    /// within bf16's resolution) and differs from the f32 kernel; the backward stays near the
    /// f32 one; native oneDNN bf16 products and the portable widening give the same figures.
    func testBF16AttentionProductsRoundTheirInputs() {
        let saved = attentionQueryBlock
        defer { attentionQueryBlock = saved; GEMM.portableBF16 = false }
        attentionQueryBlock = 4
        var shape = AttentionShape(batch: 2, seq: 11, heads: 4, kvHeads: 2, headDim: 16)
        let n = 2 * 11
        let q = S.randomArray(n * shape.qStride, seed: 21), k = S.randomArray(n * shape.kvStride, seed: 22)
        let v = S.randomArray(n * shape.kvStride, seed: 23), w = S.randomArray(n * shape.qStride, seed: 24)
        let mask: [Float] = (0..<n).map { $0 >= 19 ? 0 : 1 }
        func run(bf16: Bool, portable: Bool = false) -> (out: [Float], dq: [Float], dk: [Float], dv: [Float]) {
            GEMM.portableBF16 = portable
            shape.bf16Products = bf16
            var out = [Float](repeating: 0, count: q.count), lse = [Float](repeating: 0, count: 2 * 4 * 11)
            attentionForward(out: &out, lse: &lse, q: q, k: k, v: v, keyMask: mask, shape: shape)
            var dq = [Float](repeating: 0, count: q.count), dk = [Float](repeating: 0, count: k.count), dv = dk
            attentionBackward(dq: &dq, dk: &dk, dv: &dv, dout: w, q: q, k: k, v: v, out: out, lse: lse, keyMask: mask, shape: shape)
            return (out, dq, dk, dv)
        }
        func rounded(_ x: [Float]) -> [Float] {
            var r = x
            x.withUnsafeBufferPointer { src in r.withUnsafeMutableBufferPointer { BFloat16.round(src.baseAddress!, to: $0.baseAddress!, count: x.count) } }
            return r
        }
        let (rq, rk, rv) = (rounded(q), rounded(k), rounded(v))
        var naive = [Float](repeating: 0, count: q.count)
        for b in 0..<2 { for h in 0..<4 { for i in 0..<11 {
            let kvh = h / shape.group
            var scores: [(Int, Double)] = []
            for j in 0...i where mask[b * 11 + j] != 0 {
                var dot = 0.0
                for d in 0..<16 { dot += Double(rq[(b * 11 + i) * shape.qStride + h * 16 + d]) * Double(rk[(b * 11 + j) * shape.kvStride + kvh * 16 + d]) }
                scores.append((j, dot * Double(shape.scale)))
            }
            let m = scores.map(\.1).max()!, z = scores.reduce(0.0) { $0 + exp($1.1 - m) }
            for d in 0..<16 {
                naive[(b * 11 + i) * shape.qStride + h * 16 + d] = Float(scores.reduce(0.0) {
                    $0 + exp($1.1 - m) / z * Double(rv[(b * 11 + $1.0) * shape.kvStride + kvh * 16 + d])
                })
            }
        } } }
        let f32 = run(bf16: false), native = run(bf16: true), portable = run(bf16: true, portable: true)
        XCTAssertLessThan(S.relativeL2(native.out, naive), 4e-3, "bf16 forward vs naive on rounded inputs")
        XCTAssertGreaterThan(S.relativeL2(native.out, f32.out), 1e-4, "the products did not round their inputs")
        for (name, a, b) in [("dq", native.dq, f32.dq), ("dk", native.dk, f32.dk), ("dv", native.dv, f32.dv)] {
            XCTAssertLessThan(S.relativeL2(a, b), 2e-2, "bf16 \(name) vs f32")
        }
        for (name, a, b) in [("out", native.out, portable.out), ("dq", native.dq, portable.dq), ("dk", native.dk, portable.dk),
                             ("dv", native.dv, portable.dv)] {
            XCTAssertLessThan(S.relativeL2(a, b), 1e-5, "native vs portable bf16 \(name)")
        }
    }

    /// Every query block goes to exactly one part, and the parts' work (block j: j + 1) is even.
    func testAttentionBlockSetsBalanceTheCausalWork() {
        for (blocks, parts) in [(8, 2), (1, 2), (3, 2), (32, 2), (9, 3), (5, 1)] {
            let sets = attentionBlockSets(blocks: blocks, parts: parts)
            XCTAssertEqual(sets.count, parts)
            XCTAssertEqual(sets.flatMap { $0 }.sorted(), Array(0..<blocks), "\(blocks) blocks in \(parts)")
            let work = sets.map { $0.reduce(0) { $0 + $1 + 1 } }, total = blocks * (blocks + 1) / 2
            XCTAssertLessThanOrEqual(work.max()!, max(blocks, (total + parts - 1) / parts + 1), "\(blocks) blocks in \(parts): \(work)")
        }
        XCTAssertEqual(attentionBlockSets(blocks: 8, parts: 2).map { $0.reduce(0) { $0 + $1 + 1 } }, [18, 18])
    }

    private func checkAttention(batch: Int, kvHeads: Int) {
        let shape = AttentionShape(batch: batch, seq: 5, heads: 4, kvHeads: kvHeads, headDim: 8)
        let n = batch * 5, Q = 32, K = kvHeads * 8, group = 4 / kvHeads
        let q = S.randomArray(n * Q, seed: 7), k = S.randomArray(n * K, seed: 8), v = S.randomArray(n * K, seed: 9)
        let mask: [Float] = (0..<n).map { $0 >= 8 && $0 < 10 ? 0 : 1 }   // row 1 ends with 2 padding keys
        func forward(_ q: [Float], _ k: [Float], _ v: [Float]) -> ([Float], [Float]) {
            var out = [Float](repeating: 0, count: n * Q), lse = [Float](repeating: 0, count: batch * 4 * 5)
            out.withUnsafeMutableBufferPointer { o in lse.withUnsafeMutableBufferPointer { l in
                attentionForward(out: o.baseAddress!, lse: l.baseAddress!, q: q, k: k, v: v, keyMask: mask, shape: shape)
            } }
            return (out, lse)
        }
        // Naive: explicit softmax over visible keys, in Double.
        var naive = [Float](repeating: 0, count: n * Q)
        for b in 0..<batch { for h in 0..<4 { let kvh = h / group
            for i in 0..<5 {
                var scores: [Double] = [], keys: [Int] = []
                for j in 0...i where mask[b * 5 + j] != 0 {
                    var s = 0.0
                    for d in 0..<8 { s += Double(q[(b * 5 + i) * Q + h * 8 + d]) * Double(k[(b * 5 + j) * K + kvh * 8 + d]) }
                    scores.append(s / 8.0.squareRoot()); keys.append(j)
                }
                let m = scores.max()!, z = scores.reduce(0) { $0 + exp($1 - m) }
                for d in 0..<8 {
                    var acc = 0.0
                    for (s, j) in zip(scores, keys) { acc += exp(s - m) / z * Double(v[(b * 5 + j) * K + kvh * 8 + d]) }
                    naive[(b * 5 + i) * Q + h * 8 + d] = Float(acc)
                }
            }
        } }
        let (out, lse) = forward(q, k, v)
        XCTAssertLessThan(S.maxRelativeError(out, naive), 1e-5, "\(batch) rows, \(kvHeads) KV heads")

        let r = S.randomArray(n * Q, seed: 10)
        var dq = [Float](repeating: 0, count: n * Q), dk = [Float](repeating: 0, count: n * K), dv = dk
        dq.withUnsafeMutableBufferPointer { dqp in dk.withUnsafeMutableBufferPointer { dkp in dv.withUnsafeMutableBufferPointer { dvp in
            attentionBackward(dq: dqp.baseAddress!, dk: dkp.baseAddress!, dv: dvp.baseAddress!, dout: r, q: q, k: k, v: v,
                              out: out, lse: lse, keyMask: mask, shape: shape)
        } } }
        XCTAssertLessThan(S.relativeL2(dq, S.numericalGradient(q) { S.dot(forward($0, k, v).0, r) }), 3e-3)
        XCTAssertLessThan(S.relativeL2(dk, S.numericalGradient(k) { S.dot(forward(q, $0, v).0, r) }), 3e-3, "\(batch) rows, \(kvHeads) KV heads")
        XCTAssertLessThan(S.relativeL2(dv, S.numericalGradient(v) { S.dot(forward(q, k, $0).0, r) }), 3e-3, "\(batch) rows, \(kvHeads) KV heads")
    }

    /// Cached attention (decoding: a few new queries per row over everything cached; a prompt's
    /// prefill from position 0; a chunk after a cached prefix) equals a
    /// naive softmax(q k^T / sqrt(d)) v over the unmasked keys up to each query, for short caches
    /// (one thread) and long ones (shared with the worker pool), GQA groups and left padding;
    /// head widths that the kernels take in 8 columns, in 32, and in 32 then 8, over odd and even
    /// numbers of keys.
    func testCachedAttentionMatchesNaive() {
        var random = FinchRandom(seed: 11)
        for (cached, queries, headDim) in [(5, 1, 16), (300, 1, 40), (297, 3, 64), (6, 2, 64), (0, 37, 64), (4, 9, 16), (130, 70, 16)] {
            let shape = AttentionShape(batch: 2, seq: queries, heads: 6, kvHeads: 2, headDim: headDim)
            let capacity = cached + queries + 2, total = cached + queries
            let q = (0..<shape.batch * queries * shape.qStride).map { _ in random.nextFloat() - 0.5 }
            let keys = (0..<shape.batch * capacity * shape.kvStride).map { _ in random.nextFloat() - 0.5 }
            let values = (0..<shape.batch * capacity * shape.kvStride).map { _ in random.nextFloat() - 0.5 }
            var mask = [Float](repeating: 1, count: shape.batch * capacity)
            for j in 0..<3 { mask[capacity + j] = 0 }   // row 1 starts with 3 padding keys
            var out = [Float](repeating: .nan, count: shape.batch * queries * shape.qStride)
            out.withUnsafeMutableBufferPointer { o in
                attentionCachedForward(out: o.baseAddress!, q: q, keys: keys, values: values, keyMask: mask,
                                       capacity: capacity, start: cached, queries: queries, shape: shape)
            }
            var worst: Float = 0
            for b in 0..<shape.batch {
                for i in 0..<queries {
                    for h in 0..<shape.heads {
                        let kvh = h / shape.group
                        let qi = Array(q[(b * queries + i) * shape.qStride + h * headDim..<(b * queries + i) * shape.qStride + (h + 1) * headDim])
                        var scores: [(Int, Double)] = []
                        for j in 0..<cached + i + 1 where mask[b * capacity + j] == 1 {
                            let kj = (b * capacity + j) * shape.kvStride + kvh * headDim
                            scores.append((j, (0..<headDim).reduce(0.0) { $0 + Double(qi[$1]) * Double(keys[kj + $1]) } / Double(headDim).squareRoot()))
                        }
                        guard let m = scores.map(\.1).max() else {   // no visible key (a padded query): zeros
                            for d in 0..<headDim { worst = max(worst, abs(out[(b * queries + i) * shape.qStride + h * headDim + d])) }
                            continue
                        }
                        let z = scores.reduce(0.0) { $0 + exp($1.1 - m) }
                        for d in 0..<headDim {
                            let expected = scores.reduce(0.0) { $0 + exp($1.1 - m) / z * Double(values[(b * capacity + $1.0) * shape.kvStride + kvh * headDim + d]) }
                            let got = out[(b * queries + i) * shape.qStride + h * headDim + d]
                            let error = abs(got - Float(expected))
                            worst = error.isNaN ? .infinity : max(worst, error)   // NaN: never written
                        }
                    }
                }
            }
            XCTAssertLessThan(worst, 1e-5, "\(cached) cached, \(queries) queries (of \(total))")
        }
    }

    func testSwiGLUForwardAndBackward() {
        let count = 40
        let g = S.randomArray(count, seed: 11, scale: 2), u = S.randomArray(count, seed: 12), r = S.randomArray(count, seed: 13)
        func forward(_ g: [Float], _ u: [Float]) -> [Float] {
            var h = [Float](repeating: 0, count: count)
            h.withUnsafeMutableBufferPointer { swigluForward($0.baseAddress!, gate: g, up: u, count: count) }
            return h
        }
        let naive = (0..<count).map { i -> Float in
            let gi = Double(g[i]), sigmoid: Double = 1 / (1 + Foundation.exp(-gi))
            return Float(gi * sigmoid * Double(u[i]))
        }
        XCTAssertLessThan(S.maxRelativeError(forward(g, u), naive), 1e-6)
        var dg = [Float](repeating: 0, count: count), du = dg
        dg.withUnsafeMutableBufferPointer { dgp in du.withUnsafeMutableBufferPointer { dup in
            swigluBackward(dgate: dgp.baseAddress!, dup: dup.baseAddress!, dh: r, gate: g, up: u, count: count)
        } }
        XCTAssertLessThan(S.relativeL2(dg, S.numericalGradient(g, eps: 1e-3) { S.dot(forward($0, u), r) }), 1e-3)
        XCTAssertLessThan(S.relativeL2(du, S.numericalGradient(u, eps: 1e-3) { S.dot(forward(g, $0), r) }), 1e-3)
    }

    /// Training's layout: gate and up the halves of one [rows, 2 * width] matrix (dgate and dup
    /// likewise), h and dh contiguous. Every value as the contiguous kernel gives it.
    func testSwiGLUWithGateAndUpSideBySide() {
        let rows = 3, width = 21, stride = 2 * width
        let gu = S.randomArray(rows * stride, seed: 14, scale: 2), dh = S.randomArray(rows * width, seed: 15)
        var h = [Float](repeating: .nan, count: rows * width)
        var dgu = [Float](repeating: .nan, count: rows * stride)
        gu.withUnsafeBufferPointer { p in
            let g = p.baseAddress!, u = p.baseAddress! + width
            h.withUnsafeMutableBufferPointer { swigluForward($0.baseAddress!, gate: g, up: u, rows: rows, width: width, stride: stride) }
            dgu.withUnsafeMutableBufferPointer { d in
                swigluBackward(dgate: d.baseAddress!, dup: d.baseAddress! + width, dh: dh, gate: g, up: u,
                               rows: rows, width: width, stride: stride)
            }
        }
        for t in 0..<rows {
            let g = Array(gu[t * stride ..< t * stride + width]), u = Array(gu[t * stride + width ..< (t + 1) * stride])
            var want = [Float](repeating: 0, count: width), dg = want, du = want
            want.withUnsafeMutableBufferPointer { swigluForward($0.baseAddress!, gate: g, up: u, count: width) }
            dg.withUnsafeMutableBufferPointer { dgp in du.withUnsafeMutableBufferPointer { dup in
                swigluBackward(dgate: dgp.baseAddress!, dup: dup.baseAddress!, dh: Array(dh[t * width ..< (t + 1) * width]),
                               gate: g, up: u, count: width)
            } }
            XCTAssertEqual(Array(h[t * width ..< (t + 1) * width]), want, "row \(t)")
            XCTAssertEqual(Array(dgu[t * stride ..< t * stride + width]), dg, "row \(t)")
            XCTAssertEqual(Array(dgu[t * stride + width ..< (t + 1) * stride]), du, "row \(t)")
        }
    }

    func testCrossEntropyMatchesNaiveAndSkipsIgnoredRows() {
        let rows = 6, dim = 8, vocab = 11
        let hidden = S.randomArray(rows * dim, seed: 14), w = S.randomArray(vocab * dim, seed: 15)
        let targets: [Int32] = [3, -1, 10, 0, -1, 7]
        func loss(_ hidden: [Float], _ w: [Float]) -> Double {
            let head = w.withUnsafeBufferPointer { WeightMatrix(rows: vocab, columns: dim, floats: $0.baseAddress!, owner: nil) }
            return w.withUnsafeBufferPointer { _ in crossEntropy(hidden: hidden, targets: targets, rows: rows, head: head, chunkRows: 4).loss }
        }
        var naive = 0.0
        var naiveEntropy = [Double](repeating: 0, count: rows), naiveCorrect = [Float](repeating: 0, count: rows)
        for r in 0..<rows where targets[r] >= 0 {
            let logits = (0..<vocab).map { v in (0..<dim).reduce(0.0) { $0 + Double(hidden[r * dim + $1]) * Double(w[v * dim + $1]) } }
            let m = logits.max()!
            let lse = m + log(logits.reduce(0) { $0 + exp($1 - m) })
            naive += lse - logits[Int(targets[r])]
            naiveEntropy[r] = -logits.reduce(0) { $0 + exp($1 - lse) * ($1 - lse) }
            naiveCorrect[r] = logits.firstIndex(of: m) == Int(targets[r]) ? 1 : 0
        }
        XCTAssertEqual(loss(hidden, w), naive, accuracy: 1e-4 * naive)
        var entropies = [Float](repeating: 0, count: rows), correct = entropies
        w.withUnsafeBufferPointer { wp in
            let head = WeightMatrix(rows: vocab, columns: dim, floats: wp.baseAddress!, owner: nil)
            entropies.withUnsafeMutableBufferPointer { e in correct.withUnsafeMutableBufferPointer { c in
                _ = crossEntropy(hidden: hidden, targets: targets, rows: rows, head: head,
                                 outputs: CrossEntropyOutputs(entropies: e.baseAddress!, correct: c.baseAddress!))
            } }
        }
        for r in 0..<rows { XCTAssertEqual(Double(entropies[r]), naiveEntropy[r], accuracy: 1e-4, "entropy row \(r)") }
        XCTAssertEqual(correct, naiveCorrect)

        var dh = [Float](repeating: 0, count: rows * dim), dw = [Float](repeating: 0, count: vocab * dim)
        var logProbs = [Float](repeating: 1, count: rows)
        w.withUnsafeBufferPointer { wp in
            let head = WeightMatrix(rows: vocab, columns: dim, floats: wp.baseAddress!, owner: nil)
            dh.withUnsafeMutableBufferPointer { dhp in dw.withUnsafeMutableBufferPointer { dwp in logProbs.withUnsafeMutableBufferPointer { lp in
                _ = crossEntropy(hidden: hidden, targets: targets, rows: rows, head: head, outputs: CrossEntropyOutputs(logProbs: lp.baseAddress!),
                                 backward: CrossEntropyBackward(uniformWeight: 1, dHidden: dhp.baseAddress!, dHead: dwp.baseAddress!), chunkRows: 4)
            } } }
        }
        XCTAssertEqual(logProbs[1], 0)
        XCTAssertEqual(-Double(logProbs.reduce(0, +)), naive, accuracy: 1e-4 * naive)
        XCTAssertEqual(Array(dh[dim..<2 * dim]), [Float](repeating: 0, count: dim), "ignored rows get no gradient")
        XCTAssertLessThan(S.relativeL2(dh, S.numericalGradient(hidden) { loss($0, w) }), 2e-3)
        XCTAssertLessThan(S.relativeL2(dw, S.numericalGradient(w) { loss(hidden, $0) }), 2e-3)
    }

    func testEmbeddingForwardAndBackward() {
        let vocab = 5, dim = 4
        let table = S.randomArray(vocab * dim, seed: 16)
        let ids: [Int32] = [2, 0, 2, 4]
        var out = [Float](repeating: 0, count: ids.count * dim)
        table.withUnsafeBufferPointer { tp in
            let m = WeightMatrix(rows: vocab, columns: dim, floats: tp.baseAddress!, owner: nil)
            out.withUnsafeMutableBufferPointer { embeddingForward($0.baseAddress!, ids: ids, count: ids.count, table: m) }
        }
        XCTAssertEqual(Array(out[0..<dim]), Array(table[2 * dim..<3 * dim]))
        XCTAssertEqual(Array(out[3 * dim..<4 * dim]), Array(table[4 * dim..<5 * dim]))
        let dout = S.randomArray(ids.count * dim, seed: 17)
        var dtable = [Float](repeating: 0, count: vocab * dim)
        dtable.withUnsafeMutableBufferPointer { embeddingBackward($0.baseAddress!, ids: ids, count: ids.count, dout: dout, dim: dim) }
        for c in 0..<dim {
            XCTAssertEqual(dtable[2 * dim + c], dout[c] + dout[2 * dim + c], accuracy: 1e-6, "repeated ids accumulate")
            XCTAssertEqual(dtable[1 * dim + c], 0)
        }
    }

    /// A Q8_0 matrix taller than one dequantization tile: both products equal the f32 ones.
    func testQuantizedMatrixProductsMatchDequantizedWeights() {
        let rows = 300, columns = 64, n = 5
        var rng = FinchRandom(seed: 18)
        var bytes = [UInt8](repeating: 0, count: rows * DType.q8_0.rowBytes(columns: columns))
        for block in 0..<rows * columns / 32 {
            let scale = Float16(0.01 + 0.02 * rng.nextFloat()).bitPattern
            bytes[block * 34] = UInt8(scale & 0xff); bytes[block * 34 + 1] = UInt8(scale >> 8)
            for i in 0..<32 { bytes[block * 34 + 2 + i] = UInt8(truncatingIfNeeded: Int(rng.next() % 255) - 127) }
        }
        let x = S.randomArray(n * columns, seed: 19), dy = S.randomArray(n * rows, seed: 20)
        let saved = WeightMatrix.wholeTileFloats
        defer { WeightMatrix.wholeTileFloats = saved }
        // Dequantized whole, then in tiles of 256 rows (the second one partial).
        for whole in [saved, 0] {
        WeightMatrix.wholeTileFloats = whole
        bytes.withUnsafeBytes { raw in
            let q = WeightMatrix(rows: rows, columns: columns, dtype: .q8_0, storage: raw.baseAddress!, owner: nil)
            let dense = q.denseCopy()
            var y1 = [Float](repeating: 0, count: n * rows), y2 = y1
            y1.withUnsafeMutableBufferPointer { q.multiply(x, n: n, into: $0.baseAddress!) }
            y2.withUnsafeMutableBufferPointer { dense.multiply(x, n: n, into: $0.baseAddress!) }
            XCTAssertLessThan(S.maxRelativeError(y1, y2), 1e-5)
            var dx1 = [Float](repeating: 1, count: n * columns), dx2 = dx1
            dx1.withUnsafeMutableBufferPointer { q.multiplyTransposed(dy, n: n, into: $0.baseAddress!) }
            dx2.withUnsafeMutableBufferPointer { dense.multiplyTransposed(dy, n: n, into: $0.baseAddress!) }
            XCTAssertLessThan(S.maxRelativeError(dx1, dx2), 1e-5)
            // Spot-check one dequantized value against the block formula: scale * int8.
            var row = [Float](repeating: 0, count: columns)
            row.withUnsafeMutableBufferPointer { q.dequantizeRows(1, 1, into: $0.baseAddress!) }
            let block = 2  // row 1 starts at block 2
            let scale = Float(Float16(bitPattern: UInt16(bytes[block * 34]) | UInt16(bytes[block * 34 + 1]) << 8))
            XCTAssertEqual(row[3], scale * Float(Int8(bitPattern: bytes[block * 34 + 2 + 3])))
        }
        }
    }
}

final class FastMathTests: XCTestCase {
    func testFastExpIsWithinTwoUlpsOverItsRange() {
        var worst: Double = 0
        var x: Float = -87
        while x < 88 {
            let got = Double(fastExp(x)), want = exp(Double(x))
            worst = max(worst, abs(got - want) / want)
            x += 0.0137
        }
        XCTAssertLessThan(worst, 3e-7)
        XCTAssertEqual(fastExp(-Float.infinity), 0)
        XCTAssertEqual(fastExp(-100), 0)
        XCTAssertEqual(fastExp(0), 1)
    }
}
