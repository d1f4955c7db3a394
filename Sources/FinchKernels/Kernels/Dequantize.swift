#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// Stored weights to Float, one row (or any run of whole blocks) at a time. Block layouts and
// arithmetic follow ggml's dequantize_row_* (ggml-quants.c) so that results match bit for bit:
// every fp16 field is little-endian, and products are formed in the same order.
// Source pointers may be unaligned (GGUF blocks are 18, 20, 22, 34 or 210 bytes; safetensors
// offsets need not be aligned), so everything is read byte-wise.

/// Converts `count` values starting at `src` (stored as `dtype`) into `dst`.
/// `count` must be a multiple of `dtype.blockSize`.
package func dequantizeRow(_ dtype: DType, _ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
    precondition(count % dtype.blockSize == 0, "dequantizeRow: \(count) values is not a multiple of the \(dtype.rawValue) block size \(dtype.blockSize)")
    let p = src.assumingMemoryBound(to: UInt8.self)
    let blocks = count / dtype.blockSize
    switch dtype {
    case .f32: memcpy(dst, src, count &* 4)
    case .f16: dequantizeF16(p, dst, count)
    case .bf16: dequantizeBF16(p, dst, count)
    case .q8_0: dequantizeQ8_0(p, dst, blocks)
    case .q4_0: dequantizeQ4_0(p, dst, blocks)
    case .q4_1: dequantizeQ4_1(p, dst, blocks)
    case .q4_K: dequantizeQ4_K(p, dst, blocks)
    case .q6_K: dequantizeQ6_K(p, dst, blocks)
    case .q5_0: dequantizeQ5(p, dst, blocks, withMin: false)
    case .q5_1: dequantizeQ5(p, dst, blocks, withMin: true)
    case .q2_K: dequantizeQ2_K(p, dst, blocks)
    case .q3_K: dequantizeQ3_K(p, dst, blocks)
    case .q5_K: dequantizeQ5_K(p, dst, blocks)
    case .iq4_NL: dequantizeIQ4_NL(p, dst, blocks)
    case .iq4_XS: dequantizeIQ4_XS(p, dst, blocks)
    }
}

/// Rows `rows` of a matrix-shaped tensor, as Float, into `dst` (`rows.count * tensor.columns` values).
func dequantizeRows(_ tensor: TensorData, _ rows: Range<Int>, into dst: UnsafeMutablePointer<Float>) {
    precondition(rows.lowerBound >= 0 && rows.upperBound <= tensor.rows, "dequantizeRows: rows \(rows) outside 0..<\(tensor.rows) of '\(tensor.name)'")
    let rowBytes = tensor.dtype.rowBytes(columns: tensor.columns)
    dequantizeRow(tensor.dtype, tensor.bytes + rows.lowerBound * rowBytes, dst, count: rows.count * tensor.columns)
}

/// The whole tensor as Float, row-major.
package func dequantize(_ tensor: TensorData) -> [Float] {
    let count = tensor.elementCount
    return [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
        if let base = buffer.baseAddress { dequantizeRow(tensor.dtype, tensor.bytes, base, count: count) }
        initialized = count
    }
}

/// IEEE half to single, exact for every input (subnormals, infinities, NaN payloads), and
/// branch-free so that loops over it vectorise.
@inline(__always)
func floatFromHalf(_ h: UInt16) -> Float {
    let bits = UInt32(h)
    let sign = (bits & 0x8000) << 16
    let magnitude = (bits & 0x7FFF) << 13           // exponent and mantissa in single's place
    let exponent = magnitude & 0x0F80_0000
    let rebased = magnitude &+ (112 << 23)           // exponent bias 15 -> 127
    let normal = exponent == 0x0F80_0000 ? rebased &+ (112 << 23) : rebased   // Inf/NaN: exponent 255
    // Subnormal (and zero): place the mantissa under exponent 2^-14, then subtract 2^-14 exactly.
    let subnormal = (Float(bitPattern: rebased &+ (1 << 23)) - Float(bitPattern: 113 << 23)).bitPattern
    return Float(bitPattern: (exponent == 0 ? subnormal : normal) | sign)
}

@inline(__always)
private func half(_ p: UnsafePointer<UInt8>) -> Float {
    floatFromHalf(UInt16(p[0]) | UInt16(p[1]) << 8)
}

private func dequantizeF16(_ p: UnsafePointer<UInt8>, _ y: UnsafeMutablePointer<Float>, _ count: Int) {
    for i in 0..<count {
        y[i] = floatFromHalf(UInt16(p[2 &* i]) | UInt16(p[2 &* i &+ 1]) << 8)
    }
}

private func dequantizeBF16(_ p: UnsafePointer<UInt8>, _ y: UnsafeMutablePointer<Float>, _ count: Int) {
    for i in 0..<count {
        y[i] = Float(bitPattern: UInt32(p[2 &* i]) << 16 | UInt32(p[2 &* i &+ 1]) << 24)
    }
}

// block_q8_0 (34 bytes): fp16 d, int8 qs[32];  y = qs * d
private func dequantizeQ8_0(_ p: UnsafePointer<UInt8>, _ y: UnsafeMutablePointer<Float>, _ blocks: Int) {
    for b in 0..<blocks {
        let block = p + b &* 34
        let d = half(block)
        let qs = block + 2
        let out = y + b &* 32
        for j in 0..<32 { out[j] = Float(Int8(bitPattern: qs[j])) * d }
    }
}

// block_q4_0 (18 bytes): fp16 d, qs[16]; low nibbles are values 0..<16, high nibbles 16..<32;
// y = (nibble - 8) * d
private func dequantizeQ4_0(_ p: UnsafePointer<UInt8>, _ y: UnsafeMutablePointer<Float>, _ blocks: Int) {
    for b in 0..<blocks {
        let block = p + b &* 18
        let d = half(block)
        let qs = block + 2
        let out = y + b &* 32
        for j in 0..<16 {
            out[j] = Float(Int32(qs[j] & 0x0F) &- 8) * d
            out[j &+ 16] = Float(Int32(qs[j] >> 4) &- 8) * d
        }
    }
}

// block_q4_1 (20 bytes): fp16 d, fp16 m, qs[16];  y = nibble * d + m
private func dequantizeQ4_1(_ p: UnsafePointer<UInt8>, _ y: UnsafeMutablePointer<Float>, _ blocks: Int) {
    for b in 0..<blocks {
        let block = p + b &* 20
        let d = half(block)
        let m = half(block + 2)
        let qs = block + 4
        let out = y + b &* 32
        for j in 0..<16 {
            out[j] = Float(qs[j] & 0x0F) * d + m
            out[j &+ 16] = Float(qs[j] >> 4) * d + m
        }
    }
}

// block_q4_K (144 bytes): fp16 d, fp16 dmin, scales[12] (8 six-bit scales and 8 six-bit mins),
// qs[128]. Each 64 values share 32 bytes of qs: low nibbles use sub-block 2i, high nibbles 2i+1;
// y = (d * scale) * nibble - (dmin * min)
private func dequantizeQ4_K(_ p: UnsafePointer<UInt8>, _ y: UnsafeMutablePointer<Float>, _ blocks: Int) {
    for b in 0..<blocks {
        let block = p + b &* 144
        let d = half(block)
        let dmin = half(block + 2)
        let scales = block + 4
        for group in 0..<4 {
            let qs = block + (16 &+ group &* 32)
            let out = y + (b &* 256 &+ group &* 64)
            let (d1, min1, d2, min2) = q4KSubBlockPair(group, scales, d: d, dmin: dmin)
            for l in 0..<32 { out[l] = d1 * Float(qs[l] & 0x0F) - min1 }
            for l in 0..<32 { out[l &+ 32] = d2 * Float(qs[l] >> 4) - min2 }
        }
    }
}

/// The multipliers and offsets of sub-blocks 2 * group and 2 * group + 1 of a Q4_K / Q5_K block:
/// y = d1 * q - min1 for the first, d2 * q - min2 for the second.
@inline(__always)
private func q4KSubBlockPair(_ group: Int, _ scales: UnsafePointer<UInt8>, d: Float, dmin: Float) -> (Float, Float, Float, Float) {
    let (sc1, m1) = q4KScaleMin(2 &* group, scales)
    let (sc2, m2) = q4KScaleMin(2 &* group &+ 1, scales)
    return (d * Float(sc1), dmin * Float(m1), d * Float(sc2), dmin * Float(m2))
}

/// ggml's get_scale_min_k4: scale and min of sub-block `j` (0..<8) from the 12 packed bytes.
@inline(__always)
private func q4KScaleMin(_ j: Int, _ q: UnsafePointer<UInt8>) -> (UInt8, UInt8) {
    if j < 4 { return (q[j] & 63, q[j &+ 4] & 63) }
    return ((q[j &+ 4] & 0x0F) | ((q[j &- 4] >> 6) << 4), (q[j &+ 4] >> 4) | ((q[j] >> 6) << 4))
}

// block_q6_K (210 bytes): ql[128] (low 4 bits), qh[64] (high 2 bits), int8 scales[16], fp16 d.
// Each half of 128 values uses 64 bytes of ql, 32 of qh and 8 scales (one per 16 values);
// y = (d * scale) * (q6 - 32)
private func dequantizeQ6_K(_ p: UnsafePointer<UInt8>, _ y: UnsafeMutablePointer<Float>, _ blocks: Int) {
    for b in 0..<blocks {
        let block = p + b &* 210
        let d = half(block + 208)
        for part in 0..<2 {
            let ql = block + part &* 64
            let qh = block + (128 &+ part &* 32)
            let sc = block + (192 &+ part &* 8)
            let out = y + (b &* 256 &+ part &* 128)
            for side in 0..<2 {  // l in 0..<16 uses scales is = 0, l in 16..<32 uses is = 1
                let s1 = d * Float(Int8(bitPattern: sc[side]))
                let s2 = d * Float(Int8(bitPattern: sc[side &+ 2]))
                let s3 = d * Float(Int8(bitPattern: sc[side &+ 4]))
                let s4 = d * Float(Int8(bitPattern: sc[side &+ 6]))
                for i in 0..<16 {
                    let l = side &* 16 &+ i
                    let low = ql[l], lowNext = ql[l &+ 32], high = qh[l]
                    let q1 = Int32((low & 0x0F) | ((high & 3) << 4)) &- 32
                    let q2 = Int32((lowNext & 0x0F) | (((high >> 2) & 3) << 4)) &- 32
                    let q3 = Int32((low >> 4) | (((high >> 4) & 3) << 4)) &- 32
                    let q4 = Int32((lowNext >> 4) | (((high >> 6) & 3) << 4)) &- 32
                    out[l] = s1 * Float(q1)
                    out[l &+ 32] = s2 * Float(q2)
                    out[l &+ 64] = s3 * Float(q3)
                    out[l &+ 96] = s4 * Float(q4)
                }
            }
        }
    }
}

// block_q5_0 (22 bytes): fp16 d, qh[4] (bit j: the fifth bit of value j), qs[16] (low nibbles are
// values 0..<16, high nibbles 16..<32); y = (q5 - 16) * d.
// block_q5_1 (24 bytes): fp16 d, fp16 m, qh[4], qs[16]; y = q5 * d + m.
private func dequantizeQ5(_ p: UnsafePointer<UInt8>, _ y: UnsafeMutablePointer<Float>, _ blocks: Int, withMin: Bool) {
    let blockBytes = withMin ? 24 : 22, header = withMin ? 4 : 2
    for b in 0..<blocks {
        let block = p + b &* blockBytes
        let d = half(block)
        let m = withMin ? half(block + 2) : 0
        let qh = UInt32(block[header]) | UInt32(block[header &+ 1]) << 8 | UInt32(block[header &+ 2]) << 16 | UInt32(block[header &+ 3]) << 24
        let qs = block + (header &+ 4)
        let out = y + b &* 32
        for j in 0..<16 {
            let high0 = Int32((qh >> UInt32(j)) & 1) << 4, high1 = Int32((qh >> UInt32(j &+ 16)) & 1) << 4
            let q0 = Int32(qs[j] & 0x0F) | high0, q1 = Int32(qs[j] >> 4) | high1
            if withMin {
                out[j] = Float(q0) * d + m
                out[j &+ 16] = Float(q1) * d + m
            } else {
                out[j] = Float(q0 &- 16) * d
                out[j &+ 16] = Float(q1 &- 16) * d
            }
        }
    }
}

// block_q2_K (84 bytes): scales[16] (low nibble: scale, high nibble: min, one per 16 values),
// qs[64] (four 2-bit values per byte), fp16 d, fp16 dmin. Each half of 128 values reads 32 bytes
// of qs four times (shifts 0, 2, 4, 6), 16 bytes per scale; y = (d * scale) * q2 - (dmin * min).
private func dequantizeQ2_K(_ p: UnsafePointer<UInt8>, _ y: UnsafeMutablePointer<Float>, _ blocks: Int) {
    for b in 0..<blocks {
        let block = p + b &* 84
        let scales = block, d = half(block + 80), dmin = half(block + 82)
        var out = y + b &* 256
        var index = 0
        for part in 0..<2 {
            let q = block + (16 &+ part &* 32)
            for shift in stride(from: 0, to: 8, by: 2) {
                for half16 in 0..<2 {
                    let sc = scales[index]
                    index &+= 1
                    let dl = d * Float(sc & 0x0F), ml = dmin * Float(sc >> 4)
                    let qq = q + half16 &* 16
                    for l in 0..<16 { out[l] = dl * Float((qq[l] >> UInt8(shift)) & 3) - ml }
                    out += 16
                }
            }
        }
    }
}

// block_q3_K (110 bytes): hmask[32] (the third bit, inverted: a clear bit subtracts 4), qs[64]
// (low 2 bits), scales[12] (sixteen 6-bit scales, offset by 32), fp16 d. The layout of values
// over qs and the shifts is Q2_K's; hmask bit m (1, 2, 4, ... per 32 values) of byte l.
private func dequantizeQ3_K(_ p: UnsafePointer<UInt8>, _ y: UnsafeMutablePointer<Float>, _ blocks: Int) {
    for b in 0..<blocks {
        let block = p + b &* 110
        let hmask = block, d = half(block + 108)
        let scales = block + 96
        var out = y + b &* 256
        var index = 0
        var bit: UInt8 = 1
        for part in 0..<2 {
            let q = block + (32 &+ part &* 32)
            for shift in stride(from: 0, to: 8, by: 2) {
                for half16 in 0..<2 {
                    let dl = d * Float(Int32(q3KScale(index, scales)) &- 32)
                    index &+= 1
                    let qq = q + half16 &* 16, hm = hmask + half16 &* 16
                    for l in 0..<16 {
                        let low = Int32((qq[l] >> UInt8(shift)) & 3)
                        out[l] = dl * Float(low &- (hm[l] & bit != 0 ? 0 : 4))
                    }
                    out += 16
                }
                bit <<= 1
            }
        }
    }
}

/// Scale `j` (0..<16, 6 bits) of a Q3_K block from its 12 packed bytes: the low 4 bits of scales
/// 0..<8 and 8..<16 are the low and high nibbles of bytes 0..<8; the high 2 bits are bit pair
/// j / 4 of byte 8 + j % 4.
@inline(__always)
private func q3KScale(_ j: Int, _ packed: UnsafePointer<UInt8>) -> UInt8 {
    let low = j < 8 ? packed[j] & 0x0F : packed[j &- 8] >> 4
    let high = (packed[8 &+ (j & 3)] >> UInt8(2 &* (j >> 2))) & 3
    return low | high << 4
}

// block_q5_K (176 bytes): fp16 d, fp16 dmin, scales[12] (as Q4_K), qh[32] (fifth bits), qs[128].
// Each 64 values share 32 bytes of qs (low nibbles: sub-block 2i, high: 2i+1) and bits 2i, 2i+1
// of qh; y = (d * scale) * q5 - (dmin * min).
private func dequantizeQ5_K(_ p: UnsafePointer<UInt8>, _ y: UnsafeMutablePointer<Float>, _ blocks: Int) {
    for b in 0..<blocks {
        let block = p + b &* 176
        let d = half(block), dmin = half(block + 2)
        let scales = block + 4, qh = block + 16
        for group in 0..<4 {
            let qs = block + (48 &+ group &* 32)
            let out = y + (b &* 256 &+ group &* 64)
            let (d1, min1, d2, min2) = q4KSubBlockPair(group, scales, d: d, dmin: dmin)
            let bit1 = UInt8(1) << UInt8(2 &* group), bit2 = UInt8(2) << UInt8(2 &* group)
            for l in 0..<32 { out[l] = d1 * Float((qs[l] & 0x0F) &+ (qh[l] & bit1 != 0 ? 16 : 0)) - min1 }
            for l in 0..<32 { out[l &+ 32] = d2 * Float((qs[l] >> 4) &+ (qh[l] & bit2 != 0 ? 16 : 0)) - min2 }
        }
    }
}

/// The sixteen non-uniform levels of IQ4_NL and IQ4_XS (ggml's kvalues_iq4nl).
let iq4Levels: [Float] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]

// block_iq4_nl (18 bytes): fp16 d, qs[16] (nibbles index iq4Levels; low: values 0..<16, high:
// 16..<32); y = d * level.
private func dequantizeIQ4_NL(_ p: UnsafePointer<UInt8>, _ y: UnsafeMutablePointer<Float>, _ blocks: Int) {
    iq4Levels.withUnsafeBufferPointer { levels in
        for b in 0..<blocks {
            let block = p + b &* 18
            let d = half(block)
            let qs = block + 2
            let out = y + b &* 32
            for j in 0..<16 {
                out[j] = d * levels[Int(qs[j] & 0x0F)]
                out[j &+ 16] = d * levels[Int(qs[j] >> 4)]
            }
        }
    }
}

// block_iq4_xs (136 bytes): fp16 d, scales_h (u16: 2 high bits per 32 values), scales_l[4]
// (4 low bits per 32 values), qs[128] (IQ4_NL's nibbles, 16 bytes per 32 values);
// y = (d * (scale6 - 32)) * level.
private func dequantizeIQ4_XS(_ p: UnsafePointer<UInt8>, _ y: UnsafeMutablePointer<Float>, _ blocks: Int) {
    iq4Levels.withUnsafeBufferPointer { levels in
        for b in 0..<blocks {
            let block = p + b &* 136
            let d = half(block)
            let scalesHigh = UInt16(block[2]) | UInt16(block[3]) << 8
            let scalesLow = block + 4
            for sub in 0..<8 {
                let low = (scalesLow[sub / 2] >> UInt8(4 &* (sub % 2))) & 0x0F
                let high = UInt8((scalesHigh >> UInt16(2 &* sub)) & 3)
                let dl = d * Float(Int32(low | high << 4) &- 32)
                let qs = block + (8 &+ sub &* 16)
                let out = y + (b &* 256 &+ sub &* 32)
                for j in 0..<16 {
                    out[j] = dl * levels[Int(qs[j] & 0x0F)]
                    out[j &+ 16] = dl * levels[Int(qs[j] >> 4)]
                }
            }
        }
    }
}
