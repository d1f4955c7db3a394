// Matrix-vector products of quantized weights with activations rounded to 8 bits, the way
// llama.cpp multiplies its quantized matrices: each block of 32 activations becomes
// d * q with q = round(x / d) in -127...127 and d = max|x| / 127, and a block's dot product
// is a sum of byte products done in integers (AVX2: vpmaddubsw + vpmaddwd, 32 products in
// two instructions), scaled once per block. It is an opt-in for decoding (`int8Activations`),
// with logits ~1e-2 relative from exact (the rounding of the activations) — enough to change a
// greedy answer, exactly as llama.cpp's do. Since the exact kernels of MatVec.swift widen each
// byte once, it gains little here: per q4_1 block over 2 cores 1.12-1.26 ns against 1.27-1.36
// (q8_0: the same), SmolLM2 Q4_1 decoding 121-131 against 118-125 tokens/s. (It was 1.7x
// the exact q4_1 kernel and 1.5x in tokens/s before that.)
//
// Per block, for weights w = dw * qw (+ m for q4_1) and activations x ≈ dx * qx:
//   q8_0: sum w x ≈ dw dx sum qw qx
//   q4_0: sum w x ≈ dw dx (sum q qx - 8 sum qx)           (w = dw (q - 8), q in 0..<16)
//   q4_1: sum w x ≈ dw dx sum q qx + m dx sum qx
//
// The block products are FinchCPU's (vector.c: AVX2 or portable; int8_dot.c: AVX512_VNNI).
import FinchCPU

/// AVX512_VNNI byte dot products (FinchCPU/int8_dot.c) where the CPU has them (tests turn it off
/// to run the AVX2 and portable kernels too).
nonisolated(unsafe) var int8DotUsesVNNI = int8DotHasVNNI
let int8DotHasVNNI = CPU.features.isSuperset(of: [.avx512vnni, .avx512vl, .avx512bw, .f16c, .fma])

/// Activation vectors rounded to 8 bits per block of 32 (one allocation, freed with it).
final class Int8Vectors {
    let blocks: Int
    /// q[t * blocks * 32 + i] for vector t.
    let q: UnsafeMutablePointer<Int8>
    /// Each block's scale d, [t * blocks + b].
    let scales: UnsafeMutablePointer<Float>
    /// Each block's sum of q, [t * blocks + b].
    let sums: UnsafeMutablePointer<Int32>

    init(_ x: UnsafePointer<Float>, n: Int, columns: Int) {
        precondition(columns % 32 == 0, "Int8Vectors: \(columns) columns is not a multiple of 32")
        blocks = columns / 32
        q = .allocate(capacity: n * columns)
        scales = .allocate(capacity: n * blocks)
        sums = .allocate(capacity: n * blocks)
        for block in 0..<n * blocks {
            let xb = x + block * 32
            var amax: Float = 0
            for i in 0..<32 { amax = max(amax, abs(xb[i])) }
            let d = amax / 127, inverse: Float = d > 0 ? 1 / d : 0
            var sum: Int32 = 0
            for i in 0..<32 {
                let v = Int8((xb[i] * inverse).rounded(.toNearestOrEven))
                q[block * 32 + i] = v
                sum += Int32(v)
            }
            scales[block] = d
            sums[block] = sum
        }
    }

    deinit { q.deallocate(); scales.deallocate(); sums.deallocate() }
}

func int8MatVecSupports(_ dtype: DType) -> Bool {
    switch dtype {
    case .q8_0, .q4_0, .q4_1: return true
    default: return false
    }
}

/// The dot product of one stored row (`dtype`: q8_0, q4_0 or q4_1) with vector `t` of `x`.
@inline(__always)
func int8Dot(_ dtype: DType, _ row: UnsafeRawPointer, _ x: Int8Vectors, _ t: Int) -> Float {
    let blocks = x.blocks
    let type: Int32 = switch dtype {
    case .q8_0: Int32(FINCH_INT8_Q8_0)
    case .q4_0: Int32(FINCH_INT8_Q4_0)
    default: Int32(FINCH_INT8_Q4_1)
    }
    return finch_int8_dot(type, row.assumingMemoryBound(to: UInt8.self), x.q + t * blocks * 32, x.scales + t * blocks,
                          x.sums + t * blocks, Int64(blocks), int8DotUsesVNNI ? 1 : 0)
}
