#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// Stored weights to Float, one row (or any run of whole blocks) at a time. Block layouts and
// arithmetic follow ggml's dequantize_row_* (ggml-quants.c) so that results match bit for bit:
// every fp16 field is little-endian, and products are formed in the same order.
// Source pointers may be unaligned (GGUF blocks are 18, 20, 34 or 210 bytes; safetensors
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
            let (sc1, m1) = q4KScaleMin(2 &* group, scales)
            let (sc2, m2) = q4KScaleMin(2 &* group &+ 1, scales)
            let d1 = d * Float(sc1), min1 = dmin * Float(m1)
            let d2 = d * Float(sc2), min2 = dmin * Float(m2)
            for l in 0..<32 { out[l] = d1 * Float(qs[l] & 0x0F) - min1 }
            for l in 0..<32 { out[l &+ 32] = d2 * Float(qs[l] >> 4) - min2 }
        }
    }
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
