import Foundation

// Float to GGML blocks, the inverse of Dequantize.swift, following ggml's quantize_row_*_ref
// (ggml-quants.c) so that a file Finch writes holds the bytes llama.cpp's own quantizer would.

/// Quantizes `count` values (a multiple of 32) to Q8_0 blocks at `dst` (`count / 32 * 34` bytes).
/// ggml's quantize_row_q8_0_ref: d = max|x| / 127, q = roundf(x / d) (ties away from zero),
/// d stored as IEEE half, little-endian.
func quantizeRowQ8_0(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, count: Int) {
    precondition(count % 32 == 0, "quantizeRowQ8_0: \(count) values is not a multiple of 32")
    let out = dst.assumingMemoryBound(to: UInt8.self)
    for b in 0..<(count / 32) {
        let x = src + b &* 32
        let block = out + b &* 34
        var amax: Float = 0
        for j in 0..<32 { amax = max(amax, abs(x[j])) }
        let d = amax / 127
        let id: Float = d != 0 ? 1 / d : 0
        let half = Float16(d).bitPattern
        block[0] = UInt8(truncatingIfNeeded: half)
        block[1] = UInt8(truncatingIfNeeded: half >> 8)
        for j in 0..<32 { block[2 &+ j] = UInt8(bitPattern: Int8((x[j] * id).rounded(.toNearestOrAwayFromZero))) }
    }
}

/// Encodes `count` floats as `dtype` (F32, F16, BF16 or Q8_0) at `dst`; returns the bytes written.
/// F16 and BF16 round to nearest even, as PyTorch and ggml do.
@discardableResult
package func encodeRow(_ src: UnsafePointer<Float>, as dtype: DType, into dst: UnsafeMutableRawPointer, count: Int) -> Int {
    switch dtype {
    case .f32:
        let out = dst.assumingMemoryBound(to: UInt32.self)
        for i in 0..<count { out[i] = src[i].bitPattern.littleEndian }
        return count &* 4
    case .f16:
        let out = dst.assumingMemoryBound(to: UInt16.self)
        for i in 0..<count { out[i] = Float16(src[i]).bitPattern.littleEndian }
        return count &* 2
    case .bf16:
        let out = dst.assumingMemoryBound(to: UInt16.self)
        for i in 0..<count { out[i] = bfloat16Bits(src[i]).littleEndian }
        return count &* 2
    case .q8_0:
        quantizeRowQ8_0(src, dst, count: count)
        return count / 32 &* 34
    default:
        preconditionFailure("encodeRow: Finch does not write \(dtype.rawValue)")
    }
}
