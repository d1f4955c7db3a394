// Products of a weight matrix with a few vectors, y[t, r] = W_r . x_t for t < n (n small:
// one token per sequence while decoding). Here the cost is reading W, not arithmetic, so the
// weights are read in their stored form (f32, or quantized blocks widened in registers)
// and each block is used for all n vectors while it is loaded.
//
// Quantized rows follow ggml's block layouts (see Dequantize.swift). A block's dot product is
// rearranged, e.g. for q4_1 (w = d*q + m): sum_i w_i x_i = d * sum_i q_i x_i + m * sum_i x_i,
// so results equal those of the dequantized f32 matrix up to float rounding.
//
// The row products are FinchCPU's (vector.c: AVX2 + FMA + F16C, or portable C, chosen at run
// time); this file shares the rows out over the cores.
import FinchCPU

/// The most vectors `matVec` takes at once; more go through GEMM on dequantized tiles.
let matVecMaxVectors = 4

func matVecSupports(_ dtype: DType) -> Bool {
    switch dtype {
    case .f32, .q8_0, .q4_0, .q4_1, .q5_0, .q5_1, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .iq4_NL, .iq4_XS: return true
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
    precondition(n >= 1 && n <= matVecMaxVectors && targets.allSatisfy { matVecSupports($0.dtype) && columns % $0.dtype.blockSize == 0 }
                 && columns % 32 == 0, "matVec: \(n) vectors of \(columns) against \(targets.map(\.dtype.rawValue))")
    let blocks = columns / 32
    // Per-block sums of each x, for the block minimums of q4_1 / q5_1 and the sub-block minimums of q4_K / q5_K.
    var blockSums = [Float](repeating: 0, count: targets.contains { [.q4_1, .q5_1, .q4_K, .q5_K].contains($0.dtype) } ? n * blocks : 0)
    if !blockSums.isEmpty {
        for t in 0..<n {
            for b in 0..<blocks {
                let p = x + t * columns + b * 32
                blockSums[t * blocks + b] = (load8(p) + load8(p + 8) + load8(p + 16) + load8(p + 24)).sum()
            }
        }
    }
    _ = CPU.vectorLevel
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
                let type: Int32 = switch target.dtype {
                case .f32: Int32(FINCH_MATVEC_F32)
                case .q8_0: Int32(FINCH_MATVEC_Q8_0)
                case .q4_0: Int32(FINCH_MATVEC_Q4_0)
                case .q4_K: Int32(FINCH_MATVEC_Q4_K)
                case .q6_K: Int32(FINCH_MATVEC_Q6_K)
                case .q5_0: Int32(FINCH_MATVEC_Q5_0)
                case .q5_K: Int32(FINCH_MATVEC_Q5_K)
                case .q5_1: Int32(FINCH_MATVEC_Q5_1)
                case .iq4_NL: Int32(FINCH_MATVEC_IQ4_NL)
                case .q2_K: Int32(FINCH_MATVEC_Q2_K)
                case .q3_K: Int32(FINCH_MATVEC_Q3_K)
                case .iq4_XS: Int32(FINCH_MATVEC_IQ4_XS)
                default: Int32(FINCH_MATVEC_Q4_1)
                }
                finch_matvec(type, target.weights.assumingMemoryBound(to: UInt8.self) + rows.lowerBound * rowBytes, Int64(rowBytes),
                             Int64(rows.count), x, Int64(columns), Int64(n), sums, target.output + rows.lowerBound,
                             Int64(target.outputStride), accumulate ? 1 : 0)
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
