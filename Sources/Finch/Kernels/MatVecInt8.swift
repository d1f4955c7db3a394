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
#if arch(x86_64) && FINCH_F16C
import _Builtin_intrinsics.intel
#endif
import FinchCPU

/// AVX512_VNNI byte dot products (FinchCPU/int8_dot.c) where the CPU has them (tests turn it off
/// to run the AVX2 kernels too).
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
    let qx = x.q + t * blocks * 32, dx = x.scales + t * blocks, sx = x.sums + t * blocks
    let bytes = row.assumingMemoryBound(to: UInt8.self)
    if int8DotUsesVNNI {
        switch dtype {
        case .q8_0: return finch_int8_dot_q8_0(bytes, qx, dx, Int64(blocks))
        case .q4_0: return finch_int8_dot_q4_0(bytes, qx, dx, sx, Int64(blocks))
        default: return finch_int8_dot_q4_1(bytes, qx, dx, sx, Int64(blocks))
        }
    }
    switch dtype {
    case .q8_0: return int8DotQ8_0(bytes, qx, dx, blocks)
    case .q4_0: return int8DotQ4_0(bytes, qx, dx, sx, blocks)
    default: return int8DotQ4_1(bytes, qx, dx, sx, blocks)
    }
}

#if arch(x86_64) && FINCH_F16C

/// 32 products of bytes (unsigned u, signed s) summed into 8 Int32 lanes, as floats.
@inline(__always) private func productSums(_ u: __m256i, _ s: __m256i) -> SIMD8<Float> {
    _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
}

/// A q4 block's 16 bytes of nibbles as 32 bytes 0..<16: low nibbles first (values 0..<16), then high.
@inline(__always) private func nibbles(_ p: UnsafePointer<UInt8>) -> __m256i {
    let packed = _mm_loadu_si128(UnsafeRawPointer(p).assumingMemoryBound(to: __m128i.self))
    let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed)
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

@inline(__always) private func load32(_ p: UnsafePointer<Int8>) -> __m256i {
    _mm256_loadu_si256(UnsafeRawPointer(p).assumingMemoryBound(to: __m256i.self))
}

private func int8DotQ8_0(_ row: UnsafePointer<UInt8>, _ qx: UnsafePointer<Int8>, _ dx: UnsafePointer<Float>, _ blocks: Int) -> Float {
    var acc = SIMD8<Float>()
    for b in 0..<blocks {
        let block = row + b &* 34
        let w = _mm256_loadu_si256(UnsafeRawPointer(block + 2).assumingMemoryBound(to: __m256i.self))
        let x = load32(qx + b &* 32)
        // signed x signed through the unsigned x signed instruction: |w| and x with w's sign.
        let p = productSums(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
        acc = _mm256_fmadd_ps(p, _mm256_set1_ps(blockScale(block) * dx[b]), acc)
    }
    return acc.sum()
}

private func int8DotQ4_0(_ row: UnsafePointer<UInt8>, _ qx: UnsafePointer<Int8>, _ dx: UnsafePointer<Float>,
                         _ sx: UnsafePointer<Int32>, _ blocks: Int) -> Float {
    var acc = SIMD8<Float>()
    var offsets: Float = 0
    for b in 0..<blocks {
        let block = row + b &* 18
        let scale = blockScale(block) * dx[b]
        acc = _mm256_fmadd_ps(productSums(nibbles(block + 2), load32(qx + b &* 32)), _mm256_set1_ps(scale), acc)
        offsets += scale * Float(8 * sx[b])
    }
    return acc.sum() - offsets
}

private func int8DotQ4_1(_ row: UnsafePointer<UInt8>, _ qx: UnsafePointer<Int8>, _ dx: UnsafePointer<Float>,
                         _ sx: UnsafePointer<Int32>, _ blocks: Int) -> Float {
    // Two accumulators: consecutive blocks do not wait on each other's multiply-add.
    var acc0 = SIMD8<Float>(), acc1 = SIMD8<Float>()
    var minimums: Float = 0
    var b = 0
    while b + 1 < blocks {
        let block0 = row + b &* 20, block1 = block0 + 20
        let (d0, m0) = blockHalves(block0), (d1, m1) = blockHalves(block1)
        acc0 = _mm256_fmadd_ps(productSums(nibbles(block0 + 4), load32(qx + b &* 32)), _mm256_set1_ps(d0 * dx[b]), acc0)
        acc1 = _mm256_fmadd_ps(productSums(nibbles(block1 + 4), load32(qx + (b + 1) &* 32)), _mm256_set1_ps(d1 * dx[b + 1]), acc1)
        minimums += m0 * dx[b] * Float(sx[b]) + m1 * dx[b + 1] * Float(sx[b + 1])
        b += 2
    }
    if b < blocks {
        let block = row + b &* 20
        let (d, m) = blockHalves(block)
        acc0 = _mm256_fmadd_ps(productSums(nibbles(block + 4), load32(qx + b &* 32)), _mm256_set1_ps(d * dx[b]), acc0)
        minimums += m * dx[b] * Float(sx[b])
    }
    return (acc0 + acc1).sum() + minimums
}

#else

// Without AVX2: the same integer sums in plain loops (exact in integers, so equal to the
// vector version up to the order of the float additions).

/// sum q_i qx_i over a q4 block's 16 bytes of nibbles (low: values 0..<16, high: 16..<32).
private func nibbleProducts(_ nibbles: UnsafePointer<UInt8>, _ xb: UnsafePointer<Int8>) -> Int32 {
    var sum: Int32 = 0
    for i in 0..<16 { sum += Int32(nibbles[i] & 0x0F) * Int32(xb[i]) + Int32(nibbles[i] >> 4) * Int32(xb[16 + i]) }
    return sum
}

private func int8DotQ8_0(_ row: UnsafePointer<UInt8>, _ qx: UnsafePointer<Int8>, _ dx: UnsafePointer<Float>, _ blocks: Int) -> Float {
    var total: Float = 0
    for b in 0..<blocks {
        let block = row + b * 34, xb = qx + b * 32
        var sum: Int32 = 0
        for i in 0..<32 { sum += Int32(Int8(bitPattern: block[2 + i])) * Int32(xb[i]) }
        total += Float(sum) * blockScale(block) * dx[b]
    }
    return total
}

private func int8DotQ4_0(_ row: UnsafePointer<UInt8>, _ qx: UnsafePointer<Int8>, _ dx: UnsafePointer<Float>,
                         _ sx: UnsafePointer<Int32>, _ blocks: Int) -> Float {
    var total: Float = 0
    for b in 0..<blocks {
        let block = row + b * 18
        total += Float(nibbleProducts(block + 2, qx + b * 32) - 8 * sx[b]) * blockScale(block) * dx[b]
    }
    return total
}

private func int8DotQ4_1(_ row: UnsafePointer<UInt8>, _ qx: UnsafePointer<Int8>, _ dx: UnsafePointer<Float>,
                         _ sx: UnsafePointer<Int32>, _ blocks: Int) -> Float {
    var total: Float = 0
    for b in 0..<blocks {
        let block = row + b * 20
        let (d, m) = blockHalves(block)
        total += Float(nibbleProducts(block + 4, qx + b * 32)) * d * dx[b] + m * dx[b] * Float(sx[b])
    }
    return total
}

#endif
