import Foundation

// Float to GGML blocks, the inverse of Dequantize.swift, following ggml's quantize_row_*_ref
// (ggml-quants.c, the quantizer llama.cpp uses without an importance matrix) so that a file
// Finch writes holds the bytes llama.cpp's own quantizer would: the same searches for scales,
// the same float operations in the same order, halves rounded to nearest even.

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

/// ggml's nearest_int: x rounded to the nearest integer, ties to even, by adding 1.5 * 2^23 and
/// reading the mantissa. Exact for |x| < 2^22; beyond, the same wrapped value ggml gets (never a trap).
@inline(__always)
private func nearestInt(_ x: Float) -> Int {
    let bits = Int32(bitPattern: (x + 12582912).bitPattern)
    return Int((bits & 0x007F_FFFF) &- 0x0040_0000)
}

@inline(__always)
private func storeHalf(_ value: Float, _ p: UnsafeMutablePointer<UInt8>) {
    let bits = Float16(value).bitPattern
    p[0] = UInt8(truncatingIfNeeded: bits)
    p[1] = UInt8(truncatingIfNeeded: bits >> 8)
}

@inline(__always)
private func loadHalf(_ p: UnsafePointer<UInt8>) -> Float { Float(Float16(bitPattern: UInt16(p[0]) | UInt16(p[1]) << 8)) }

/// The value of largest magnitude (the first of equals), as ggml's symmetric quantizers pick it.
@inline(__always)
private func signedMaxMagnitude(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
    var amax: Float = 0, max: Float = 0
    for j in 0..<n where abs(x[j]) > amax { amax = abs(x[j]); max = x[j] }
    return max
}

/// Q4_0 (18 bytes) and Q5_0 (22): d = (the value of largest magnitude) / -2^(bits-1), so that it
/// maps to the lowest level; q = x / d + 2^(bits-1), rounded by truncating x/d + offset + 0.5.
/// Q5_0 keeps each value's fifth bit in qh (bit j for value j).
private func quantizeRowSymmetric(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, count: Int, bits: Int) {
    let blockBytes = bits == 4 ? 18 : 22, levels = 1 << bits, offset = Float(levels / 2)
    let out = dst.assumingMemoryBound(to: UInt8.self)
    for b in 0..<(count / 32) {
        let x = src + b &* 32, block = out + b &* blockBytes
        let d = signedMaxMagnitude(x, 32) / -offset
        let id: Float = d != 0 ? 1 / d : 0
        storeHalf(d, block)
        let qs = block + (bits == 4 ? 2 : 6)
        var qh: UInt32 = 0
        for j in 0..<16 {
            let q0 = min(levels - 1, Int(x[j] * id + (offset + 0.5))), q1 = min(levels - 1, Int(x[j &+ 16] * id + (offset + 0.5)))
            qs[j] = UInt8(q0 & 0x0F) | UInt8(q1 & 0x0F) << 4
            qh |= UInt32((q0 >> 4) & 1) << UInt32(j) | UInt32((q1 >> 4) & 1) << UInt32(j &+ 16)
        }
        if bits == 5 { for k in 0..<4 { block[2 &+ k] = UInt8(truncatingIfNeeded: qh >> UInt32(8 &* k)) } }
    }
}

/// Q4_1 (20 bytes) and Q5_1 (24): d = (max - min) / (2^bits - 1), m = min; q = (x - min) / d,
/// rounded by truncating + 0.5 (Q4_1 clamps to 15; ggml's Q5_1 does not clamp).
private func quantizeRowWithMin(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, count: Int, bits: Int) {
    let blockBytes = bits == 4 ? 20 : 24
    let out = dst.assumingMemoryBound(to: UInt8.self)
    for b in 0..<(count / 32) {
        let x = src + b &* 32, block = out + b &* blockBytes
        var lo = Float.greatestFiniteMagnitude, hi = -Float.greatestFiniteMagnitude
        for j in 0..<32 { lo = min(lo, x[j]); hi = max(hi, x[j]) }
        let d = (hi - lo) / Float((1 << bits) - 1)
        let id: Float = d != 0 ? 1 / d : 0
        storeHalf(d, block)
        storeHalf(lo, block + 2)
        let qs = block + (bits == 4 ? 4 : 8)
        var qh: UInt32 = 0
        for j in 0..<16 {
            var q0 = Int(UInt8(truncatingIfNeeded: Int((x[j] - lo) * id + 0.5)))
            var q1 = Int(UInt8(truncatingIfNeeded: Int((x[j &+ 16] - lo) * id + 0.5)))
            if bits == 4 { q0 = min(15, q0); q1 = min(15, q1) }
            qs[j] = UInt8(q0 & 0x0F) | UInt8(q1 & 0x0F) << 4
            qh |= UInt32((q0 >> 4) & 1) << UInt32(j) | UInt32((q1 >> 4) & 1) << UInt32(j &+ 16)
        }
        if bits == 5 { for k in 0..<4 { block[4 &+ k] = UInt8(truncatingIfNeeded: qh >> UInt32(8 &* k)) } }
    }
}

/// Q4_0, Q5_0, Q4_1 and Q5_1 of one row of `columns` values under `importance` (that row's
/// weights per column), ggml's quantize_row_q{4,5}_{0,1}_impl: each 32-block fit under weights
/// importance * sqrt(mean x^2 of the row + x^2), symmetric levels by make_qx_quants, levels with a
/// min by the finer make_qkx3_quants search. Blocks laid out as the reference quantizers'.
private func quantizeWeightedRowBlock32(_ x: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, columns: Int, bits: Int, withMin: Bool,
                                        importance: UnsafePointer<Float>) {
    let blockBytes = (bits == 4 ? 18 : 22) + (withMin ? 2 : 0)
    let out = dst.assumingMemoryBound(to: UInt8.self)
    var sumX2: Float = 0
    for j in 0..<columns { sumX2 += x[j] * x[j] }
    let sigma2 = sumX2 / Float(columns)
    var weights = [Float](repeating: 0, count: 32), levels = [UInt8](repeating: 0, count: 32)
    for b in 0..<(columns / 32) {
        let xb = x + 32 &* b, qw = importance + 32 &* b, block = out + b &* blockBytes
        _ = importanceWeights(xb, qw, count: 32, spread: sigma2, into: &weights)
        weights.withUnsafeBufferPointer { w in
            levels.withUnsafeMutableBufferPointer { L in
                if withMin {
                    let (d, negatedMin) = fitScaleAndMin(32, nmax: (1 << bits) - 1, xb, weights: w.baseAddress!, levels: L.baseAddress!,
                                                         rmin: -0.9, rdelta: 0.05, nstep: 36, absoluteError: false)
                    storeHalf(d, block)
                    storeHalf(-negatedMin, block + 2)
                } else {
                    storeHalf(fitSymmetricScale(32, nmax: 1 << (bits - 1), xb, levels: L.baseAddress!, weights: w.baseAddress!), block)
                }
            }
        }
        let qs = block + (withMin ? 4 : 2) + (bits == 5 ? 4 : 0)
        var qh: UInt32 = 0
        for j in 0..<16 {
            let q0 = levels[j], q1 = levels[j &+ 16]
            qs[j] = (q0 & 0x0F) | (q1 & 0x0F) << 4
            qh |= UInt32((q0 >> 4) & 1) << UInt32(j) | UInt32((q1 >> 4) & 1) << UInt32(j &+ 16)
        }
        if bits == 5 { for k in 0..<4 { block[(withMin ? 4 : 2) &+ k] = UInt8(truncatingIfNeeded: qh >> UInt32(8 &* k)) } }
    }
}

/// ggml's make_qkx2_quants: levels L in 0...nmax, a scale and a min (returned as a non-negative
/// `negatedMin`, the value subtracted) so that x ≈ scale * L - negatedMin, minimising the
/// `weights`-weighted squared (or, with `absoluteError`, absolute) error over nstep + 1
/// candidate scales (nmax + rmin + rdelta * step) / (max - min), each refined by least squares.
private func fitScaleAndMin(_ n: Int, nmax: Int, _ x: UnsafePointer<Float>, weights: UnsafePointer<Float>,
                            levels: UnsafeMutablePointer<UInt8>, rmin: Float, rdelta: Float, nstep: Int,
                            absoluteError: Bool) -> (scale: Float, negatedMin: Float) {
    var lo = x[0], hi = x[0]
    var sumW = weights[0]
    var sumX = sumW * x[0]
    for i in 1..<n {
        lo = min(lo, x[i]); hi = max(hi, x[i])
        sumW += weights[i]
        sumX += weights[i] * x[i]
    }
    if lo > 0 { lo = 0 }
    if hi == lo {
        for i in 0..<n { levels[i] = 0 }
        return (0, -lo)
    }
    func error(_ scale: Float, _ m: Float, _ l: Int, _ i: Int) -> Float {
        let diff = scale * Float(l) + m - x[i]
        return weights[i] * (absoluteError ? abs(diff) : diff * diff)
    }
    var iscale = Float(nmax) / (hi - lo)
    var scale = 1 / iscale
    var bestError: Float = 0
    for i in 0..<n {
        levels[i] = UInt8(max(0, min(nmax, nearestInt(iscale * (x[i] - lo)))))
        bestError += error(scale, lo, Int(levels[i]), i)
    }
    var candidate = [UInt8](repeating: 0, count: n)
    for step in 0...nstep {
        iscale = (rmin + rdelta * Float(step) + Float(nmax)) / (hi - lo)
        var sumL: Float = 0, sumL2: Float = 0, sumXL: Float = 0
        for i in 0..<n {
            let l = max(0, min(nmax, nearestInt(iscale * (x[i] - lo))))
            candidate[i] = UInt8(l)
            let w = weights[i], fl = Float(l)
            sumL += w * fl
            sumL2 += w * fl * fl
            sumXL += w * fl * x[i]
        }
        let det = sumW * sumL2 - sumL * sumL
        guard det > 0 else { continue }
        var thisScale = (sumW * sumXL - sumX * sumL) / det
        var thisMin = (sumL2 * sumX - sumL * sumXL) / det
        if thisMin > 0 {
            thisMin = 0
            thisScale = sumXL / sumL2
        }
        var err: Float = 0
        for i in 0..<n { err += error(thisScale, thisMin, Int(candidate[i]), i) }
        if err < bestError {
            for i in 0..<n { levels[i] = candidate[i] }
            bestError = err
            scale = thisScale
            lo = thisMin
        }
    }
    return (scale, -lo)
}

/// ggml's make_qx_quants with rmse_type 1: signed levels -nmax..<nmax, stored offset by nmax in
/// `levels`; the least-squares scale under `weights` (x^2 when nil) of the best of 19 candidate
/// inverse scales (nmax ± 0.1 k) / max.
private func fitSymmetricScale(_ n: Int, nmax: Int, _ x: UnsafePointer<Float>, levels: UnsafeMutablePointer<UInt8>,
                               weights: UnsafePointer<Float>? = nil) -> Float {
    let max = signedMaxMagnitude(x, n)
    if abs(max) < 1e-15 {
        for i in 0..<n { levels[i] = 0 }
        return 0
    }
    func level(_ iscale: Float, _ i: Int) -> Int { Swift.max(-nmax, Swift.min(nmax - 1, nearestInt(iscale * x[i]))) }
    func sums(_ iscale: Float) -> (Float, Float) {
        var sumLX: Float = 0, sumL2: Float = 0
        for i in 0..<n {
            let l = Float(level(iscale, i)), w = weights?[i] ?? x[i] * x[i]
            sumLX += w * x[i] * l
            sumL2 += w * l * l
        }
        return (sumLX, sumL2)
    }
    var iscale = -Float(nmax) / max
    for i in 0..<n { levels[i] = UInt8(level(iscale, i) + nmax) }
    var (sumLX, sumL2) = sums(iscale)
    var scale: Float = sumL2 != 0 ? sumLX / sumL2 : 0
    var best = scale * sumLX
    for k in -9...9 where k != 0 {
        iscale = -(Float(nmax) + 0.1 * Float(k)) / max
        (sumLX, sumL2) = sums(iscale)
        if sumL2 > 0 && sumLX * sumLX > best * sumL2 {
            for i in 0..<n { levels[i] = UInt8(level(iscale, i) + nmax) }
            scale = sumLX / sumL2
            best = scale * sumLX
        }
    }
    return scale
}

/// Fits each of the `scales.count` sub-blocks of `size` values with `fit` (their levels into
/// `levels`) and returns the scale of largest magnitude (the first of equals), with its sign.
private func fitSubBlocks(_ x: UnsafePointer<Float>, size: Int, scales: inout [Float], levels: UnsafeMutablePointer<UInt8>,
                          _ fit: (_ sub: Int, UnsafePointer<Float>, UnsafeMutablePointer<UInt8>) -> Float) -> Float {
    var largest: Float = 0, largestMagnitude: Float = 0
    for sub in 0..<scales.count {
        scales[sub] = fit(sub, x + size &* sub, levels + size &* sub)
        if abs(scales[sub]) > largestMagnitude { largestMagnitude = abs(scales[sub]); largest = scales[sub] }
    }
    return largest
}

/// Q6_K (210 bytes per 256): sixteen 16-value sub-blocks, each with a signed 8-bit scale of the
/// block's half-precision d; 6-bit levels (low 4 bits in ql, high 2 in qh, as Dequantize reads them).
/// With `importance` (one row's), the sub-blocks' scales are fit under those weights (ggml's
/// quantize_row_q6_K_impl) instead of x^2.
private func quantizeRowQ6_K(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, count: Int, importance: UnsafePointer<Float>? = nil) {
    let out = dst.assumingMemoryBound(to: UInt8.self)
    var levels = [UInt8](repeating: 0, count: 256)
    var scales = [Float](repeating: 0, count: 16)
    for b in 0..<(count / 256) {
        let x = src + b &* 256, block = out + b &* 210
        levels.withUnsafeMutableBufferPointer { L in
            let maxScale = fitSubBlocks(x, size: 16, scales: &scales, levels: L.baseAddress!) { sub, xs, levels in
                fitSymmetricScale(16, nmax: 32, xs, levels: levels, weights: importance.map { $0 + (256 &* b &+ 16 &* sub) })
            }
            block.update(repeating: 0, count: 210)
            guard abs(maxScale) >= 1e-15 else { return }
            let iscale = -128 / maxScale
            storeHalf(1 / iscale, block + 208)
            let d = loadHalf(block + 208)
            for sub in 0..<16 {
                let sc = Int8(truncatingIfNeeded: min(127, nearestInt(iscale * scales[sub])))
                block[192 &+ sub] = UInt8(bitPattern: sc)
                let dl = d * Float(sc)
                guard dl != 0 else { continue }
                for i in 0..<16 { L[16 &* sub &+ i] = UInt8(max(-32, min(31, nearestInt(x[16 &* sub &+ i] / dl))) + 32) }
            }
            for half in 0..<2 {
                let ql = block + half &* 64, qh = block + (128 &+ half &* 32), l = L.baseAddress! + half &* 128
                for j in 0..<32 {
                    ql[j] = (l[j] & 0x0F) | (l[j &+ 64] & 0x0F) << 4
                    ql[j &+ 32] = (l[j &+ 32] & 0x0F) | (l[j &+ 96] & 0x0F) << 4
                    qh[j] = l[j] >> 4 | (l[j &+ 32] >> 4) << 2 | (l[j &+ 64] >> 4) << 4 | (l[j &+ 96] >> 4) << 6
                }
            }
        }
    }
}

/// ggml's spread of a 256-value block for importance weights: mean x^2, doubled where its
/// quantizer doubles it (Q3_K, Q4_K, Q5_K; not Q2_K).
@inline(__always)
private func blockSpread(_ x: UnsafePointer<Float>, doubled: Bool) -> Float {
    var sumX2: Float = 0
    for j in 0..<256 { sumX2 += x[j] * x[j] }
    return doubled ? 2 * sumX2 / 256 : sumX2 / 256
}

/// A sub-block's weights under an importance matrix, importance * sqrt(spread + x^2), into
/// `weights`; returns their sum.
@inline(__always)
private func importanceWeights(_ xs: UnsafePointer<Float>, _ qw: UnsafePointer<Float>, count: Int, spread: Float,
                               into weights: inout [Float]) -> Float {
    for l in 0..<count { weights[l] = qw[l] * (spread + xs[l] * xs[l]).squareRoot() }
    var total: Float = 0
    for l in 0..<count { total += weights[l] }
    return total
}

/// ggml's weighted fit of a 256-value block's sub-blocks of `size` values with a min (make_qkx3_quants
/// under importance * sqrt(spread + x^2), levels 0...nmax into `levels`): each sub-block's scale,
/// min and weight total, for Q2_K, Q4_K and Q5_K under an importance matrix.
private func fitSubBlocksWithMin(_ x: UnsafePointer<Float>, importance: UnsafePointer<Float>, size: Int, nmax: Int, doubledSpread: Bool,
                                 levels: UnsafeMutablePointer<UInt8>, scales: inout [Float], mins: inout [Float], totals: inout [Float],
                                 weights: inout [Float]) {
    let spread = blockSpread(x, doubled: doubledSpread)
    for sub in 0..<(256 / size) {
        let xs = x + size &* sub
        totals[sub] = importanceWeights(xs, importance + size &* sub, count: size, spread: spread, into: &weights)
        (scales[sub], mins[sub]) = weights.withUnsafeBufferPointer {
            fitScaleAndMin(size, nmax: nmax, xs, weights: $0.baseAddress!, levels: levels + size &* sub,
                           rmin: -0.9, rdelta: 0.05, nstep: 36, absoluteError: false)
        }
    }
}

/// Q4_K (144 bytes per 256) and Q5_K (176): eight 32-value sub-blocks, each with a 6-bit scale
/// and a 6-bit min of the block's half-precision d and dmin (packed as Dequantize reads them);
/// levels then re-rounded against the stored scales. Without `importance`, ggml's reference:
/// each sub-block fit with weights sqrt(mean x^2) + |x|, d and dmin the largest scale and min / 63.
/// With `importance` (one row's, ggml's quantize_row_q4_K_impl / q5_K_impl): weights
/// importance * sqrt(2 mean x^2 + x^2), a finer scale search, and d, dmin themselves fit to the
/// sub-blocks' scales and mins under the sub-blocks' total weights.
private func quantizeRowQ45_K(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, count: Int, bits: Int,
                              importance: UnsafePointer<Float>? = nil) {
    let blockBytes = bits == 4 ? 144 : 176, nmax = (1 << bits) - 1
    let out = dst.assumingMemoryBound(to: UInt8.self)
    var levels = [UInt8](repeating: 0, count: 256)
    var weights = [Float](repeating: 0, count: 32)
    var scales = [Float](repeating: 0, count: 8), mins = [Float](repeating: 0, count: 8), totals = [Float](repeating: 0, count: 8)
    var scaleLevels = [UInt8](repeating: 0, count: 8), minLevels = [UInt8](repeating: 0, count: 8)
    for b in 0..<(count / 256) {
        let x = src + b &* 256, block = out + b &* blockBytes
        levels.withUnsafeMutableBufferPointer { L in
            let d: Float, dmin: Float
            if let importance {
                fitSubBlocksWithMin(x, importance: importance + 256 &* b, size: 32, nmax: nmax, doubledSpread: true, levels: L.baseAddress!,
                                    scales: &scales, mins: &mins, totals: &totals, weights: &weights)
                d = fitPositiveScale(8, nmax: 63, scales, levels: &scaleLevels, weights: totals)
                dmin = fitPositiveScale(8, nmax: 63, mins, levels: &minLevels, weights: totals)
                // ggml clamps the Q5_K levels only.
                if bits == 5 { for sub in 0..<8 { scaleLevels[sub] = min(63, scaleLevels[sub]); minLevels[sub] = min(63, minLevels[sub]) } }
            } else {
                var maxScale: Float = 0, maxMin: Float = 0
                for sub in 0..<8 {
                    let xs = x + 32 &* sub
                    var sumX2: Float = 0
                    for l in 0..<32 { sumX2 += xs[l] * xs[l] }
                    let average = (sumX2 / 32).squareRoot()
                    for l in 0..<32 { weights[l] = average + abs(xs[l]) }
                    (scales[sub], mins[sub]) = weights.withUnsafeBufferPointer {
                        fitScaleAndMin(32, nmax: nmax, xs, weights: $0.baseAddress!, levels: L.baseAddress! + 32 &* sub,
                                       rmin: bits == 4 ? -1 : -0.5, rdelta: 0.1, nstep: bits == 4 ? 20 : 15, absoluteError: false)
                    }
                    maxScale = max(maxScale, scales[sub])
                    maxMin = max(maxMin, mins[sub])
                }
                let inverseScale: Float = maxScale > 0 ? 63 / maxScale : 0, inverseMin: Float = maxMin > 0 ? 63 / maxMin : 0
                for sub in 0..<8 {
                    scaleLevels[sub] = min(63, UInt8(truncatingIfNeeded: nearestInt(inverseScale * scales[sub])))
                    minLevels[sub] = min(63, UInt8(truncatingIfNeeded: nearestInt(inverseMin * mins[sub])))
                }
                d = maxScale / 63
                dmin = maxMin / 63
            }
            block.update(repeating: 0, count: blockBytes)
            let packed = block + 4
            for sub in 0..<8 {
                let ls = scaleLevels[sub], lm = minLevels[sub]
                if sub < 4 {
                    packed[sub] = ls
                    packed[sub &+ 4] = lm
                } else {
                    packed[sub &+ 4] = (ls & 0x0F) | (lm & 0x0F) << 4
                    packed[sub &- 4] |= (ls >> 4) << 6
                    packed[sub] |= (lm >> 4) << 6
                }
            }
            storeHalf(d, block)
            storeHalf(dmin, block + 2)
            let storedD = loadHalf(block), storedMin = loadHalf(block + 2)
            for sub in 0..<8 {
                let (sc, m) = packedScaleMin(sub, packed)
                let dl = storedD * Float(sc)
                guard dl != 0 else { continue }
                let dm = storedMin * Float(m)
                for i in 0..<32 { L[32 &* sub &+ i] = UInt8(max(0, min(nmax, nearestInt((x[32 &* sub &+ i] + dm) / dl)))) }
            }
            let qs = block + (bits == 4 ? 16 : 48), qh = block + 16
            for group in 0..<4 {
                let l = L.baseAddress! + group &* 64, q = qs + group &* 32
                for j in 0..<32 {
                    var low = l[j], high = l[j &+ 32]
                    if bits == 5 {
                        if low > 15 { low -= 16; qh[j] |= 1 << UInt8(2 &* group) }
                        if high > 15 { high -= 16; qh[j] |= 2 << UInt8(2 &* group) }
                    }
                    q[j] = low | high << 4
                }
            }
        }
    }
}

/// ggml's make_qp_quants: non-negative levels 0...nmax (kept as ggml's uint8 keeps them) and a
/// scale for the values `x` (a block's sub-block scales or mins): the best of nine inverse scales
/// (nmax ± 0.1 k) / max under `weights`, then levels moved one at a time while that improves the
/// weighted least-squares fit, up to five passes. Returns the least-squares scale.
private func fitPositiveScale(_ n: Int, nmax: Int, _ x: [Float], levels L: inout [UInt8], weights w: [Float]) -> Float {
    var largest: Float = 0
    for i in 0..<n { largest = max(largest, x[i]) }
    if largest < 1e-15 {
        for i in 0..<n { L[i] = 0 }
        return 0
    }
    var iscale = Float(nmax) / largest
    for i in 0..<n { L[i] = UInt8(truncatingIfNeeded: nearestInt(iscale * x[i])) }
    let scale = 1 / iscale
    var bestError: Float = 0
    for i in 0..<n {
        let diff = x[i] - scale * Float(L[i])
        bestError += w[i] * diff * diff
    }
    for k in -4...4 where k != 0 {
        let candidate = (0.1 * Float(k) + Float(nmax)) / largest, candidateScale = 1 / candidate
        var error: Float = 0
        for i in 0..<n {
            let diff = x[i] - candidateScale * Float(min(nmax, nearestInt(candidate * x[i])))
            error += w[i] * diff * diff
        }
        if error < bestError { bestError = error; iscale = candidate }
    }
    var sumLX: Float = 0, sumL2: Float = 0
    for i in 0..<n {
        let l = min(nmax, nearestInt(iscale * x[i]))
        L[i] = UInt8(truncatingIfNeeded: l)
        sumLX += w[i] * x[i] * Float(l)
        sumL2 += w[i] * Float(l) * Float(l)
    }
    for _ in 0..<5 {
        var changed = 0
        for i in 0..<n {
            let old = Float(L[i])
            var slx = sumLX - w[i] * x[i] * old, sl2 = sumL2 - w[i] * old * old
            guard slx > 0 && sl2 > 0 else { continue }
            let l = min(nmax, nearestInt(x[i] * sl2 / slx))
            guard l != Int(L[i]) else { continue }
            slx += w[i] * x[i] * Float(l)
            sl2 += w[i] * Float(l) * Float(l)
            if slx * slx * sumL2 > sumLX * sumLX * sl2 {
                L[i] = UInt8(truncatingIfNeeded: l); sumLX = slx; sumL2 = sl2
                changed += 1
            }
        }
        if changed == 0 { break }
    }
    return sumL2 > 0 ? sumLX / sumL2 : 0
}

/// Scale and min of sub-block `j` from the 12 packed bytes of Q4_K / Q5_K.
@inline(__always)
private func packedScaleMin(_ j: Int, _ q: UnsafePointer<UInt8>) -> (UInt8, UInt8) {
    if j < 4 { return (q[j] & 63, q[j &+ 4] & 63) }
    return ((q[j &+ 4] & 0x0F) | ((q[j &- 4] >> 6) << 4), (q[j &+ 4] >> 4) | ((q[j] >> 6) << 4))
}

/// Q2_K (84 bytes per 256): sixteen 16-value sub-blocks, each with a 4-bit scale and 4-bit min
/// of the block's d and dmin; 2-bit levels. Without `importance`, ggml's reference: levels fit
/// with weights |x| and absolute error, d and dmin the largest scale and min / 15. With
/// `importance` (one row's, ggml's quantize_row_q2_K_impl): weights importance *
/// sqrt(mean x^2 + x^2), squared error, and d, dmin fit to the scales and mins under the
/// sub-blocks' total weights.
private func quantizeRowQ2_K(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, count: Int, importance: UnsafePointer<Float>? = nil) {
    let out = dst.assumingMemoryBound(to: UInt8.self)
    var levels = [UInt8](repeating: 0, count: 256)
    var weights = [Float](repeating: 0, count: 16)
    var scales = [Float](repeating: 0, count: 16), mins = [Float](repeating: 0, count: 16), totals = [Float](repeating: 0, count: 16)
    var scaleLevels = [UInt8](repeating: 0, count: 16), minLevels = [UInt8](repeating: 0, count: 16)
    for b in 0..<(count / 256) {
        let x = src + b &* 256, block = out + b &* 84
        levels.withUnsafeMutableBufferPointer { L in
            block.update(repeating: 0, count: 84)
            if let importance {
                fitSubBlocksWithMin(x, importance: importance + 256 &* b, size: 16, nmax: 3, doubledSpread: false, levels: L.baseAddress!,
                                    scales: &scales, mins: &mins, totals: &totals, weights: &weights)
                storeHalf(fitPositiveScale(16, nmax: 15, scales, levels: &scaleLevels, weights: totals), block + 80)
                storeHalf(fitPositiveScale(16, nmax: 15, mins, levels: &minLevels, weights: totals), block + 82)
                for sub in 0..<16 { block[sub] = scaleLevels[sub] | minLevels[sub] << 4 }
            } else {
                var maxScale: Float = 0, maxMin: Float = 0
                for sub in 0..<16 {
                    let xs = x + 16 &* sub
                    for l in 0..<16 { weights[l] = abs(xs[l]) }
                    (scales[sub], mins[sub]) = weights.withUnsafeBufferPointer {
                        fitScaleAndMin(16, nmax: 3, xs, weights: $0.baseAddress!, levels: L.baseAddress! + 16 &* sub,
                                       rmin: -0.5, rdelta: 0.1, nstep: 15, absoluteError: true)
                    }
                    maxScale = max(maxScale, scales[sub])
                    maxMin = max(maxMin, mins[sub])
                }
                if maxScale > 0 {
                    let iscale = 15 / maxScale
                    for sub in 0..<16 { block[sub] = UInt8(truncatingIfNeeded: nearestInt(iscale * scales[sub])) }
                    storeHalf(maxScale / 15, block + 80)
                }
                if maxMin > 0 {
                    let iscale = 15 / maxMin
                    for sub in 0..<16 { block[sub] |= UInt8(truncatingIfNeeded: nearestInt(iscale * mins[sub]) << 4) }
                    storeHalf(maxMin / 15, block + 82)
                }
            }
            let d = loadHalf(block + 80), dmin = loadHalf(block + 82)
            for sub in 0..<16 {
                let dl = d * Float(block[sub] & 0x0F)
                guard dl != 0 else { continue }
                let dm = dmin * Float(block[sub] >> 4)
                for i in 0..<16 { L[16 &* sub &+ i] = UInt8(max(0, min(3, nearestInt((x[16 &* sub &+ i] + dm) / dl)))) }
            }
            packTwoBitLevels(L.baseAddress!, into: block + 16)
        }
    }
}

/// Four 2-bit levels per byte: byte j of each 32-byte group holds levels j, j+32, j+64, j+96 of
/// its 128 values (shifts 0, 2, 4, 6), as Q2_K and Q3_K read them.
@inline(__always)
private func packTwoBitLevels(_ levels: UnsafePointer<UInt8>, into qs: UnsafeMutablePointer<UInt8>) {
    for half in 0..<2 {
        let l = levels + half &* 128, q = qs + half &* 32
        for j in 0..<32 { q[j] = l[j] | l[j &+ 32] << 2 | l[j &+ 64] << 4 | l[j &+ 96] << 6 }
    }
}

/// ggml's make_q3_quants with its rmse refinement: signed levels -nmax..<nmax (stored offset by
/// nmax), the least-squares scale, levels changed one at a time while that improves the fit.
private func fitQ3Scale(_ x: UnsafePointer<Float>, levels: UnsafeMutablePointer<UInt8>) -> Float {
    let n = 16, nmax = 4
    let max = signedMaxMagnitude(x, n)
    if abs(max) < 1e-15 {
        for i in 0..<n { levels[i] = 0 }
        return 0
    }
    let iscale = -Float(nmax) / max
    var L = [Int](repeating: 0, count: n)
    var sumLX: Float = 0, sumL2: Float = 0
    for i in 0..<n {
        L[i] = Swift.max(-nmax, Swift.min(nmax - 1, nearestInt(iscale * x[i])))
        let w = x[i] * x[i]
        sumLX += w * x[i] * Float(L[i])
        sumL2 += w * Float(L[i]) * Float(L[i])
    }
    for _ in 0..<5 {
        var changed = 0
        for i in 0..<n {
            let w = x[i] * x[i]
            var slx = sumLX - w * x[i] * Float(L[i])
            guard slx > 0 else { continue }
            var sl2 = sumL2 - w * Float(L[i]) * Float(L[i])
            let newL = Swift.max(-nmax, Swift.min(nmax - 1, nearestInt(x[i] * sl2 / slx)))
            guard newL != L[i] else { continue }
            slx += w * x[i] * Float(newL)
            sl2 += w * Float(newL) * Float(newL)
            if sl2 > 0 && slx * slx * sumL2 > sumLX * sumLX * sl2 {
                L[i] = newL; sumLX = slx; sumL2 = sl2
                changed += 1
            }
        }
        if changed == 0 { break }
    }
    for i in 0..<n { levels[i] = UInt8(L[i] + nmax) }
    return sumL2 > 0 ? sumLX / sumL2 : 0
}

/// Q3_K (110 bytes per 256): sixteen 16-value sub-blocks with signed 6-bit scales (offset by 32,
/// packed as Dequantize reads them) of the block's d; 3-bit levels: low 2 bits in qs, the third
/// in hmask (bit k of byte j for value 32k + j). Without `importance`, ggml's reference
/// (make_q3_quants per sub-block, d the largest scale / -32); with it (one row's, ggml's
/// quantize_row_q3_K_impl), sub-blocks fit under importance * sqrt(2 mean x^2 + x^2) and the
/// scales themselves fit (make_qx_quants) under the sub-blocks' total weights.
private func quantizeRowQ3_K(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, count: Int, importance: UnsafePointer<Float>? = nil) {
    let out = dst.assumingMemoryBound(to: UInt8.self)
    var levels = [UInt8](repeating: 0, count: 256)
    var scales = [Float](repeating: 0, count: 16), totals = [Float](repeating: 0, count: 16)
    var weights = [Float](repeating: 0, count: 16), scaleLevels = [UInt8](repeating: 0, count: 16)
    for b in 0..<(count / 256) {
        let x = src + b &* 256, block = out + b &* 110
        levels.withUnsafeMutableBufferPointer { L in
            block.update(repeating: 0, count: 110)
            let packed = block + 96
            /// Packs sub-block `sub`'s scale level `l` (0...63, the scale + 32).
            func pack(_ sub: Int, _ l: Int) {
                if sub < 8 { packed[sub] = UInt8(l & 0x0F) } else { packed[sub &- 8] |= UInt8(l & 0x0F) << 4 }
                packed[8 &+ sub % 4] |= UInt8(truncatingIfNeeded: l >> 4) << UInt8(2 &* (sub / 4))
            }
            if let importance {
                let spread = blockSpread(x, doubled: true)
                for sub in 0..<16 {
                    let xs = x + 16 &* sub
                    totals[sub] = importanceWeights(xs, importance + (256 &* b &+ 16 &* sub), count: 16, spread: spread, into: &weights)
                    scales[sub] = weights.withUnsafeBufferPointer {
                        fitSymmetricScale(16, nmax: 4, xs, levels: L.baseAddress! + 16 &* sub, weights: $0.baseAddress!)
                    }
                }
                let d = scales.withUnsafeBufferPointer { s in
                    totals.withUnsafeBufferPointer { t in
                        scaleLevels.withUnsafeMutableBufferPointer { fitSymmetricScale(16, nmax: 32, s.baseAddress!, levels: $0.baseAddress!, weights: t.baseAddress!) }
                    }
                }
                for sub in 0..<16 { pack(sub, Int(scaleLevels[sub])) }
                storeHalf(d, block + 108)
            } else {
                let maxScale = fitSubBlocks(x, size: 16, scales: &scales, levels: L.baseAddress!) { fitQ3Scale($1, levels: $2) }
                if maxScale != 0 {
                    let iscale = -32 / maxScale
                    for sub in 0..<16 { pack(sub, Int(max(-32, min(31, Int8(truncatingIfNeeded: nearestInt(iscale * scales[sub]))))) + 32) }
                    storeHalf(1 / iscale, block + 108)
                }
            }
            let d = loadHalf(block + 108)
            for sub in 0..<16 {
                let low = sub < 8 ? packed[sub] & 0x0F : packed[sub &- 8] >> 4
                let sc = Int(low | ((packed[8 &+ sub % 4] >> UInt8(2 &* (sub / 4))) & 3) << 4) - 32
                let dl = d * Float(sc)
                guard dl != 0 else { continue }
                for i in 0..<16 { L[16 &* sub &+ i] = UInt8(max(-4, min(3, nearestInt(x[16 &* sub &+ i] / dl))) + 4) }
            }
            let hmask = block
            for j in 0..<256 where L[j] > 3 {
                hmask[j % 32] |= 1 << UInt8(j / 32)
                L[j] -= 4
            }
            packTwoBitLevels(L.baseAddress!, into: block + 32)
        }
    }
}

/// ggml's best_index_int8 over IQ4's 16 non-uniform levels: the index of the level nearest x
/// (below the first: 0; above the last: 15; a tie between two levels: the upper one).
@inline(__always)
private func nearestIQ4Level(_ levels: UnsafePointer<Float>, _ x: Float) -> Int {
    if x <= levels[0] { return 0 }
    if x >= levels[15] { return 15 }
    var low = 0, high = 15
    while high - low > 1 {
        let middle = (low + high) / 2
        if x < levels[middle] { high = middle } else { low = middle }
    }
    return x - levels[high - 1] < levels[high] - x ? high - 1 : high
}

/// IQ4_NL (18 bytes per 32: d, then 16 bytes of 4-bit indices into the 16 levels of
/// `iq4Levels`) and IQ4_XS (136 bytes per 256: d, 6-bit scales of its eight 32-blocks, the same
/// indices), as llama.cpp's quantizer writes them (ggml's quantize_row_iq4_nl_impl with 7 tries
/// each way): each 32-block's scale is the least-squares one of the best of 15 candidate inverse
/// scales (-127 + t) / max under weights x^2, or importance * sqrt(2 mean x^2 + x^2) with an
/// importance matrix (`importance`: one row's weights; `count` is then that row). IQ4_XS then
/// stores each block's scale as a 6-bit multiple of d = -(the largest) / 32 and re-picks the levels.
private func quantizeRowIQ4(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, count: Int, superBlock: Int,
                            importance: UnsafePointer<Float>? = nil) {
    let out = dst.assumingMemoryBound(to: UInt8.self), blockBytes = superBlock == 32 ? 18 : 136, subBlocks = superBlock / 32
    var levels = [UInt8](repeating: 0, count: superBlock), weights = [Float](repeating: 0, count: 32), scales = [Float](repeating: 0, count: subBlocks)
    iq4Levels.withUnsafeBufferPointer { table in
        let values = table.baseAddress!
        for b in 0..<(count / superBlock) {
            let x = src + b &* superBlock, block = out + b &* blockBytes
            block.update(repeating: 0, count: blockBytes)
            var sigma2: Float = 0
            for j in 0..<superBlock { sigma2 += x[j] * x[j] }
            sigma2 *= 2 / Float(superBlock)
            var maxScale: Float = 0, largestMagnitude: Float = 0
            for sub in 0..<subBlocks {
                let xb = x + 32 &* sub
                if let importance {
                    _ = importanceWeights(xb, importance + (b &* superBlock &+ 32 &* sub), count: 32, spread: sigma2, into: &weights)
                } else {
                    for j in 0..<32 { weights[j] = xb[j] * xb[j] }
                }
                var amax: Float = 0, max: Float = 0
                for j in 0..<32 where abs(xb[j]) > amax { amax = abs(xb[j]); max = xb[j] }
                if amax < 1e-15 {
                    scales[sub] = 0
                    continue
                }
                var d = -max / values[0]
                var id = 1 / d
                var sumQX: Float = 0, sumQ2: Float = 0
                for j in 0..<32 {
                    let l = nearestIQ4Level(values, id * xb[j])
                    levels[32 &* sub &+ j] = UInt8(l)
                    let q = values[l], w = weights[j]
                    sumQX += w * q * xb[j]
                    sumQ2 += w * q * q
                }
                d = sumQ2 > 0 ? sumQX / sumQ2 : 0
                var best = d * sumQX
                for t in -7...7 {
                    id = (Float(t) + values[0]) / max
                    sumQX = 0; sumQ2 = 0
                    for j in 0..<32 {
                        let q = values[nearestIQ4Level(values, id * xb[j])], w = weights[j]
                        sumQX += w * q * xb[j]
                        sumQ2 += w * q * q
                    }
                    if sumQ2 > 0 && sumQX * sumQX > best * sumQ2 {
                        d = sumQX / sumQ2; best = d * sumQX
                    }
                }
                scales[sub] = d
                if abs(d) > largestMagnitude { largestMagnitude = abs(d); maxScale = d }
            }
            if subBlocks > 1 {
                let d = -maxScale / 32
                storeHalf(d, block)
                let id: Float = d != 0 ? 1 / d : 0
                var scalesHigh: UInt16 = 0
                let scalesLow = block + 4
                for sub in 0..<subBlocks {
                    var l = Swift.max(-32, Swift.min(31, nearestInt(id * scales[sub])))
                    let dl = d * Float(l), idl: Float = dl != 0 ? 1 / dl : 0
                    for j in 0..<32 { levels[32 &* sub &+ j] = UInt8(nearestIQ4Level(values, idl * x[32 &* sub &+ j])) }
                    l += 32
                    scalesLow[sub / 2] |= UInt8(l & 0x0F) << UInt8(4 &* (sub % 2))
                    scalesHigh |= UInt16(l >> 4) << UInt16(2 &* sub)
                }
                block[2] = UInt8(truncatingIfNeeded: scalesHigh)
                block[3] = UInt8(truncatingIfNeeded: scalesHigh >> 8)
            } else {
                storeHalf(scales[0], block)
                let id: Float = scales[0] != 0 ? 1 / scales[0] : 0
                for j in 0..<32 { levels[j] = UInt8(nearestIQ4Level(values, id * x[j])) }
            }
            let qs = block + (subBlocks > 1 ? 8 : 2)
            for sub in 0..<subBlocks {
                for j in 0..<16 { qs[16 &* sub &+ j] = levels[32 &* sub &+ j] | levels[32 &* sub &+ 16 &+ j] << 4 }
            }
        }
    }
}

/// Encodes `rows` rows of `columns` floats as `dtype` at `dst`, as llama.cpp's quantizer does
/// with an importance matrix: `importance` holds one weight per column (the mean squared
/// activation that column of the weight meets), and each block's scales are fit to minimise the
/// error those weights measure (ggml's quantize_row_*_impl). Q8_0 and the float types ignore it,
/// as ggml does; so does every type when `importance` is nil. Returns the bytes written.
@discardableResult
package func encodeRows(_ src: UnsafePointer<Float>, as dtype: DType, into dst: UnsafeMutableRawPointer, rows: Int, columns: Int,
                        importance: UnsafePointer<Float>?) -> Int {
    let rowBytes = columns / dtype.blockSize &* dtype.blockBytes
    guard let importance, dtype.isQuantized, dtype != .q8_0 else {
        return encodeRow(src, as: dtype, into: dst, count: rows &* columns)
    }
    for row in 0..<rows {
        let x = src + row &* columns, out = dst + row &* rowBytes
        switch dtype {
        case .q4_0, .q5_0: quantizeWeightedRowBlock32(x, out, columns: columns, bits: dtype == .q4_0 ? 4 : 5, withMin: false, importance: importance)
        case .q4_1, .q5_1: quantizeWeightedRowBlock32(x, out, columns: columns, bits: dtype == .q4_1 ? 4 : 5, withMin: true, importance: importance)
        case .q2_K: quantizeRowQ2_K(x, out, count: columns, importance: importance)
        case .q3_K: quantizeRowQ3_K(x, out, count: columns, importance: importance)
        case .q4_K, .q5_K: quantizeRowQ45_K(x, out, count: columns, bits: dtype == .q4_K ? 4 : 5, importance: importance)
        case .q6_K: quantizeRowQ6_K(x, out, count: columns, importance: importance)
        case .iq4_NL, .iq4_XS: quantizeRowIQ4(x, out, count: columns, superBlock: dtype.blockSize, importance: importance)
        default: preconditionFailure("encodeRows: Finch does not write \(dtype.rawValue)")
        }
    }
    return rows &* rowBytes
}

/// Encodes `count` floats as `dtype` (F32, F16, BF16 or any GGML block type) at `dst`;
/// returns the bytes written.
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
    case .q8_0: quantizeRowQ8_0(src, dst, count: count)
    case .q4_0, .q5_0: quantizeRowSymmetric(src, dst, count: count, bits: dtype == .q4_0 ? 4 : 5)
    case .q4_1, .q5_1: quantizeRowWithMin(src, dst, count: count, bits: dtype == .q4_1 ? 4 : 5)
    case .q2_K: quantizeRowQ2_K(src, dst, count: count)
    case .q3_K: quantizeRowQ3_K(src, dst, count: count)
    case .q4_K, .q5_K: quantizeRowQ45_K(src, dst, count: count, bits: dtype == .q4_K ? 4 : 5)
    case .q6_K: quantizeRowQ6_K(src, dst, count: count)
    case .iq4_NL, .iq4_XS: quantizeRowIQ4(src, dst, count: count, superBlock: dtype.blockSize)
    }
    return count / dtype.blockSize &* dtype.blockBytes
}
