// Products of a weight matrix with a few vectors, y[t, r] = W_r . x_t for t < n (n small:
// one token per sequence while decoding). Here the cost is reading W, not arithmetic, so the
// weights are read in their stored form (f32, or quantized blocks widened in registers)
// and each block is used for all n vectors while it is loaded.
//
// Quantized rows follow ggml's block layouts (see Dequantize.swift). A block's dot product is
// rearranged, e.g. for q4_1 (w = d*q + m): sum_i w_i x_i = d * sum_i q_i x_i + m * sum_i x_i,
// so results equal those of the dequantized f32 matrix up to float rounding.
//
// The loops are written so that LLVM turns them into 8-wide vector code: the widening of
// bytes to floats is a per-lane loop (Swift's generic SIMD conversions are not inlined), and
// the partial sums live in SIMD8 values, not in memory.
#if arch(x86_64) && FINCH_F16C
import _Builtin_intrinsics.intel
#endif

/// The most vectors `matVec` takes at once; more go through GEMM on dequantized tiles.
let matVecMaxVectors = 4

func matVecSupports(_ dtype: DType) -> Bool {
    switch dtype {
    case .f32, .q8_0, .q4_0, .q4_1: return true
    default: return false
    }
}

/// One matrix of a `matVec` call: its stored rows and where its products go.
struct MatVecTarget {
    let dtype: DType
    let weights: UnsafeRawPointer
    let rows: Int
    /// y[t * outputStride + r] for vector t and row r.
    let output: UnsafeMutablePointer<Float>
    var outputStride: Int

    init(dtype: DType, weights: UnsafeRawPointer, rows: Int, output: UnsafeMutablePointer<Float>, outputStride: Int? = nil) {
        self.dtype = dtype; self.weights = weights; self.rows = rows; self.output = output
        self.outputStride = outputStride ?? rows
    }
}

/// y[t * rows + r] (+)= dot(W_r, x[t * columns ..< (t+1) * columns]) for t < n, r < rows.
/// `dtype` must satisfy `matVecSupports`; 1 ≤ n ≤ `matVecMaxVectors`; columns a multiple of 32.
func matVec(_ dtype: DType, _ w: UnsafeRawPointer, rows: Int, columns: Int,
            _ x: UnsafePointer<Float>, n: Int, into y: UnsafeMutablePointer<Float>, accumulate: Bool, int8: Bool = false) {
    matVec([MatVecTarget(dtype: dtype, weights: w, rows: rows, output: y)], columns: columns, x, n: n, accumulate: accumulate, int8: int8)
}

/// The products of several matrices with the same vectors (q, k and v of one input, say) in
/// one parallel pass over all their rows: one hand-off to the other cores instead of one per
/// matrix, which is a good part of a decoding step's time.
///
/// With `int8`, quantized matrices are multiplied by x rounded to 8 bits per block of 32
/// (MatVecInt8.swift: llama.cpp's arithmetic, results ~1e-2 relative from exact); f32 ones as usual.
func matVec(_ targets: [MatVecTarget], columns: Int, _ x: UnsafePointer<Float>, n: Int, accumulate: Bool, int8: Bool = false) {
    precondition(n >= 1 && n <= matVecMaxVectors && targets.allSatisfy { matVecSupports($0.dtype) } && columns % 32 == 0,
                 "matVec: \(n) vectors of \(columns) against \(targets.map(\.dtype.rawValue))")
    let blocks = columns / 32
    // Per-block sums of each x, for q4_1's block minimum.
    var blockSums = [Float](repeating: 0, count: targets.contains { $0.dtype == .q4_1 } ? n * blocks : 0)
    if !blockSums.isEmpty {
        for t in 0..<n {
            for b in 0..<blocks {
                let p = x + t * columns + b * 32
                blockSums[t * blocks + b] = (load8(p) + load8(p + 8) + load8(p + 16) + load8(p + 24)).sum()
            }
        }
    }
    let starts = targets.reduce(into: [0]) { $0.append($0.last! + $1.rows) }
    let rounded = int8 && targets.contains { int8MatVecSupports($0.dtype) } ? Int8Vectors(x, n: n, columns: columns) : nil
    blockSums.withUnsafeBufferPointer { sums in
        let sums = sums.baseAddress
        let total = starts.last!
        let work = { (range: Range<Int>) in
            // The rows of `range` that fall in each matrix, with the matrix's kind decided once.
            for m in targets.indices where starts[m] < range.upperBound && starts[m + 1] > range.lowerBound {
                let target = targets[m], rowBytes = target.dtype.rowBytes(columns: columns)
                let rows = max(range.lowerBound, starts[m]) - starts[m]..<min(range.upperBound, starts[m + 1]) - starts[m]
                // Each row is used for every vector while it is in cache.
                @inline(__always) func each(_ dot: (UnsafeRawPointer, UnsafePointer<Float>, Int) -> Float) {
                    for r in rows {
                        let row = target.weights + r * rowBytes
                        for t in 0..<n {
                            let y = target.output + t * target.outputStride + r
                            let value = dot(row, x + t * columns, t)
                            y.pointee = accumulate ? y.pointee + value : value
                        }
                    }
                }
                if let rounded, int8MatVecSupports(target.dtype) {
                    each { row, _, t in int8Dot(target.dtype, row, rounded, t) }
                    continue
                }
                switch target.dtype {
                case .f32: each { row, xt, _ in dotF32(row.assumingMemoryBound(to: Float.self), xt, columns) }
                case .q8_0: each { row, xt, _ in dotQ8_0(row.assumingMemoryBound(to: UInt8.self), xt, blocks) }
                case .q4_0: each { row, xt, _ in dotQ4_0(row.assumingMemoryBound(to: UInt8.self), xt, blocks) }
                default: each { row, xt, t in dotQ4_1(row.assumingMemoryBound(to: UInt8.self), xt, blocks, sums! + t * blocks) }
                }
            }
        }
        // Decoding runs hundreds of these per token: the spinning pool hands work to the other
        // cores without a kernel wake-up each time.
        guard total >= 128 else { return work(0..<total) }
        withoutActuallyEscaping(work) { work in
            SpinPool.shared.run { part, parts in work(total * part / parts..<total * (part + 1) / parts) }
        }
    }
}

@inline(__always) private func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
}

/// The two f16 values at the start of a q4_1 block, d and m, as floats. With F16C the 4 bytes go to a vector register with vmovd, which
/// clears the rest of it, then vcvtph2ps. Converting one half at a time, the compiler used
/// vpinsrw, which merges into a register it picks — here the loop's running sum of block
/// minimums — and so chained each block to the previous one's multiply-add: 13.5 instead of
/// ~6 cycles per block of 32 weights.
@inline(__always) func blockHalves(_ p: UnsafePointer<UInt8>) -> (Float, Float) {
    let bits = UnsafeRawPointer(p).loadUnaligned(as: UInt32.self)
    #if arch(x86_64) && FINCH_F16C
    let converted: SIMD4<Float> = _mm_cvtph_ps(_mm_cvtsi32_si128(Int32(bitPattern: bits)))
    return (converted[0], converted[1])
    #else
    return (Float(Float16(bitPattern: UInt16(truncatingIfNeeded: bits))), Float(Float16(bitPattern: UInt16(truncatingIfNeeded: bits >> 16))))
    #endif
}

@inline(__always) private func lowNibbles(_ p: UnsafePointer<UInt8>) -> SIMD8<Float> {
    var v = SIMD8<Float>()
    for j in 0..<8 { v[j] = Float(p[j] & 0x0F) }
    return v
}

@inline(__always) private func highNibbles(_ p: UnsafePointer<UInt8>) -> SIMD8<Float> {
    var v = SIMD8<Float>()
    for j in 0..<8 { v[j] = Float(p[j] >> 4) }
    return v
}

@inline(__always) private func signedBytes(_ p: UnsafePointer<UInt8>) -> SIMD8<Float> {
    var v = SIMD8<Float>()
    for j in 0..<8 { v[j] = Float(Int8(bitPattern: p[j])) }
    return v
}

private func dotF32(_ w: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ columns: Int) -> Float {
    var acc0 = SIMD8<Float>(), acc1 = SIMD8<Float>(), acc2 = SIMD8<Float>(), acc3 = SIMD8<Float>()
    var i = 0
    while i + 32 <= columns {
        acc0 = acc0.addingProduct(load8(w + i), load8(x + i))
        acc1 = acc1.addingProduct(load8(w + i + 8), load8(x + i + 8))
        acc2 = acc2.addingProduct(load8(w + i + 16), load8(x + i + 16))
        acc3 = acc3.addingProduct(load8(w + i + 24), load8(x + i + 24))
        i += 32
    }
    return ((acc0 + acc1) + (acc2 + acc3)).sum()
}

/// The 16 values of 8 bytes of nibbles as floats: (low nibbles, high nibbles). Each byte is
/// widened to 32 bits once (vpmovzxbd straight from memory), then masked and shifted as such
/// (5 instructions where widening each nibble half separately took 8); `offset` is subtracted
/// from each as an integer, exactly.
@inline(__always) private func nibblePairs(_ p: UnsafePointer<UInt8>, offset: Int32 = 0) -> (SIMD8<Float>, SIMD8<Float>) {
    #if arch(x86_64) && FINCH_F16C
    let bytes = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(Int64(bitPattern: UnsafeRawPointer(p).loadUnaligned(as: UInt64.self))))
    var low = _mm256_and_si256(bytes, _mm256_set1_epi32(0x0F)), high = _mm256_srli_epi32(bytes, 4)
    if offset != 0 {
        low = _mm256_sub_epi32(low, _mm256_set1_epi32(offset))
        high = _mm256_sub_epi32(high, _mm256_set1_epi32(offset))
    }
    return (_mm256_cvtepi32_ps(low), _mm256_cvtepi32_ps(high))
    #else
    let shift = SIMD8<Float>(repeating: Float(offset))
    return (lowNibbles(p) - shift, highNibbles(p) - shift)
    #endif
}

/// A block's f16 scale d (its first two bytes) as a float. Loading only these two bytes keeps
/// the compiler from reusing a wider load for the quants that follow (for q8_0 it rebuilt the
/// first 8 quants from such a load with 9 shuffles instead of one vpmovsxbd).
@inline(__always) func blockScale(_ p: UnsafePointer<UInt8>) -> Float {
    let bits = UnsafeRawPointer(p).loadUnaligned(as: UInt16.self)
    #if arch(x86_64) && FINCH_F16C
    let converted: SIMD4<Float> = _mm_cvtph_ps(_mm_cvtsi32_si128(Int32(bits)))
    return converted[0]
    #else
    return Float(Float16(bitPattern: bits))
    #endif
}

// The block products below take two blocks per iteration, each into its own running sums, so
// that consecutive blocks do not wait on one chain of multiply-adds. Per block of 32 weights
// (one core, in cache) they run at ~10 cycles where the one-block loops with per-half widening
// took ~14 (q4_1: 4.6 -> 3.3 ns; `matVec` over 2 cores: q4_1 2.2 -> 1.6 ns, q8_0 2.1 -> 1.6,
// q4_0 2.5 -> 1.5), which took greedy decoding of SmolLM2-135M Q4_1 from ~86 to ~109 tokens/s.

/// sum over blocks b of d_b * sum(s_b), where block(b) = (s_b, d_b): the loop of the q8_0 and
/// q4_0 products, two blocks per iteration into separate sums.
@inline(__always) private func scaledBlockSums(_ blocks: Int, _ block: (Int) -> (SIMD8<Float>, Float)) -> Float {
    var acc0 = SIMD8<Float>(), acc1 = SIMD8<Float>()
    var b = 0
    while b &+ 2 <= blocks {
        let (s0, d0) = block(b), (s1, d1) = block(b &+ 1)
        acc0 = acc0.addingProduct(s0, d0)
        acc1 = acc1.addingProduct(s1, d1)
        b &+= 2
    }
    if b < blocks {
        let (s0, d0) = block(b)
        acc0 = acc0.addingProduct(s0, d0)
    }
    return (acc0 + acc1).sum()
}

// block_q8_0 (34 bytes): f16 d, int8 q[32]; w = d * q.
private func dotQ8_0(_ row: UnsafePointer<UInt8>, _ x: UnsafePointer<Float>, _ blocks: Int) -> Float {
    @inline(__always) func block(_ b: Int) -> (SIMD8<Float>, Float) {
        let block = row + b &* 34, q = block + 2, xb = x + b &* 32
        let s = (signedBytes(q) * load8(xb)).addingProduct(signedBytes(q + 8), load8(xb + 8))
            .addingProduct(signedBytes(q + 16), load8(xb + 16)).addingProduct(signedBytes(q + 24), load8(xb + 24))
        return (s, blockScale(block))
    }
    return scaledBlockSums(blocks, block)
}

// block_q4_0 (18 bytes): f16 d, q[16] nibbles (low: values 0..<16, high: 16..<32); w = d * (q - 8).
private func dotQ4_0(_ row: UnsafePointer<UInt8>, _ x: UnsafePointer<Float>, _ blocks: Int) -> Float {
    @inline(__always) func block(_ b: Int) -> (SIMD8<Float>, Float) {
        let block = row + b &* 18, q = block + 2, xb = x + b &* 32
        let (l0, h0) = nibblePairs(q, offset: 8), (l1, h1) = nibblePairs(q + 8, offset: 8)
        let s = (l0 * load8(xb)).addingProduct(h0, load8(xb + 16)).addingProduct(l1, load8(xb + 8)).addingProduct(h1, load8(xb + 24))
        return (s, blockScale(block))
    }
    return scaledBlockSums(blocks, block)
}

// block_q4_1 (20 bytes): f16 d, f16 m, q[16] nibbles; w = d * q + m.
private func dotQ4_1(_ row: UnsafePointer<UInt8>, _ x: UnsafePointer<Float>, _ blocks: Int,
                     _ blockSums: UnsafePointer<Float>) -> Float {
    var acc0 = SIMD8<Float>(), acc1 = SIMD8<Float>()
    var minimums0: Float = 0, minimums1: Float = 0
    @inline(__always) func block(_ b: Int) -> (SIMD8<Float>, Float, Float) {
        let block = row + b &* 20, q = block + 4, xb = x + b &* 32
        let (d, m) = blockHalves(block)
        let (l0, h0) = nibblePairs(q), (l1, h1) = nibblePairs(q + 8)
        let s = (l0 * load8(xb)).addingProduct(h0, load8(xb + 16)).addingProduct(l1, load8(xb + 8)).addingProduct(h1, load8(xb + 24))
        return (s, d, m * blockSums[b])
    }
    var b = 0
    while b &+ 2 <= blocks {
        let (s0, d0, m0) = block(b), (s1, d1, m1) = block(b &+ 1)
        acc0 = acc0.addingProduct(s0, d0)
        acc1 = acc1.addingProduct(s1, d1)
        minimums0 += m0
        minimums1 += m1
        b &+= 2
    }
    if b < blocks {
        let (s0, d0, m0) = block(b)
        acc0 = acc0.addingProduct(s0, d0)
        minimums0 += m0
    }
    return (acc0 + acc1).sum() + (minimums0 + minimums1)
}


