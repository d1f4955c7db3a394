import Foundation

/// Vectorised exp and the loops built on it. libm's expf runs one value at a time and was most
/// of the softmax, cross-entropy and SwiGLU time; this one does 8 at once.
///
/// exp(x) = 2^n * exp(r) with n = round(x / ln 2), r = x - n ln 2 (split in two constants for
/// precision), exp(r) by Cephes' degree-6 polynomial with fused multiply-adds: about 1 ulp on
/// [-87.3, 88.7]. Inputs are clamped to [-88, 88.72]: at -88, n = -127 makes the power-of-two
/// factor's bits 0, so the result is exactly 0 from about -87.7 down (and for -infinity) with
/// no separate test; above 88.7 it saturates to infinity.
@inline(__always)
func fastExp(_ x: SIMD8<Float>) -> SIMD8<Float> {
    // Clamping, rounding and the float-to-int conversion go lane by lane: SIMD's generic
    // clamped(lowerBound:upperBound:), rounded(_:) and integer conversion are not inlined.
    var clamped = x, n = x
    for j in 0..<8 {
        clamped[j] = Swift.min(Swift.max(x[j], -88), 88.72)
        n[j] = (clamped[j] * 1.442_695_04).rounded(.toNearestOrEven)
    }
    var r = multiplyAdd(n, SIMD8(repeating: -0.693_359_375), clamped)
    r = multiplyAdd(n, SIMD8(repeating: 2.121_944_4e-4), r)
    var p = multiplyAdd(SIMD8(repeating: 1.987_569_15e-4), r, SIMD8(repeating: 1.398_199_95e-3))
    p = multiplyAdd(p, r, SIMD8(repeating: 8.333_451_9e-3))
    p = multiplyAdd(p, r, SIMD8(repeating: 4.166_579_59e-2))
    p = multiplyAdd(p, r, SIMD8(repeating: 1.666_666_55e-1))
    p = multiplyAdd(p, r, SIMD8(repeating: 5.000_000_12e-1))
    p = multiplyAdd(p, r * r, r + 1)
    // n as an integer without a conversion that traps on NaN: n + 1.5 * 2^23 holds the integer n
    // in its low mantissa bits (exact for |n| < 2^22); a NaN input stays NaN through p.
    let exponent = unsafeBitCast(n + SIMD8(repeating: 12_582_912), to: SIMD8<Int32>.self) &- 0x4B40_0000
    let bits = (exponent &+ 127) &<< 23
    return p * unsafeBitCast(bits, to: SIMD8<Float>.self)
}

/// a * b + c, fused where the build targets FMA (vfmadd), else a multiply and an add (a fused
/// multiply-add without the instruction would be a library call per lane).
@inline(__always)
func multiplyAdd(_ a: SIMD8<Float>, _ b: SIMD8<Float>, _ c: SIMD8<Float>) -> SIMD8<Float> {
#if FINCH_F16C
    c.addingProduct(a, b)
#else
    a * b + c
#endif
}

@inline(__always)
func fastExp(_ x: Float) -> Float { fastExp(SIMD8(repeating: x))[0] }

/// x[i] = exp(x[i] - shift); returns the sum of the results.
@inline(__always)
func expShiftedInPlace(_ x: UnsafeMutablePointer<Float>, count: Int, shift: Float) -> Float {
    var sum = SIMD8<Float>(repeating: 0)
    var i = 0
    let raw = UnsafeMutableRawPointer(x)
    while i + 8 <= count {
        let v = fastExp(raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self) - shift)
        raw.storeBytes(of: v, toByteOffset: i * 4, as: SIMD8<Float>.self)
        sum += v
        i += 8
    }
    var total = sum.sum()
    while i < count { let v = fastExp(x[i] - shift); x[i] = v; total += v; i += 1 }
    return total
}

/// The largest value and its index (the first one on ties).
@inline(__always)
func maxAndIndex(_ x: UnsafePointer<Float>, count: Int) -> (Float, Int) {
    var best = SIMD8<Float>(repeating: -.infinity)
    var i = 0
    let raw = UnsafeRawPointer(x)
    while i + 8 <= count {
        // Lane by lane: the generic pointwiseMax is not inlined, and this loop runs over every logit.
        let v = raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
        for j in 0..<8 { best[j] = Swift.max(best[j], v[j]) }
        i += 8
    }
    var m = best.max()
    while i < count { m = max(m, x[i]); i += 1 }
    var index = 0
    while index < count && x[index] != m { index += 1 }
    return (m, min(index, max(count - 1, 0)))
}

/// x[i] = exp(x[i] - shift), in place; returns sum(exp(x - shift)) and sum(exp(x - shift) * x)
/// of the values before: the softmax's sums and its unnormalised values in one pass.
@inline(__always)
func expSumsInPlace(_ x: UnsafeMutablePointer<Float>, count: Int, shift: Float) -> (Float, Float) {
    var sum = SIMD8<Float>(repeating: 0), weighted = SIMD8<Float>(repeating: 0)
    var i = 0
    let raw = UnsafeMutableRawPointer(x)
    while i + 8 <= count {
        let v = raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
        let e = fastExp(v - shift)
        raw.storeBytes(of: e, toByteOffset: i * 4, as: SIMD8<Float>.self)
        sum += e; weighted += e * v
        i += 8
    }
    var s = sum.sum(), w = weighted.sum()
    while i < count { let v = x[i], e = fastExp(v - shift); x[i] = e; s += e; w += e * v; i += 1 }
    return (s, w)
}

/// x[i] *= scale.
@inline(__always)
func scaleInPlace(_ x: UnsafeMutablePointer<Float>, count: Int, by scale: Float) {
    var i = 0
    let raw = UnsafeMutableRawPointer(x)
    while i + 8 <= count {
        raw.storeBytes(of: raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self) * scale, toByteOffset: i * 4, as: SIMD8<Float>.self)
        i += 8
    }
    while i < count { x[i] *= scale; i += 1 }
}

/// x[i] = scale * exp(x[i] - shift).
@inline(__always)
func scaledExpInPlace(_ x: UnsafeMutablePointer<Float>, count: Int, shift: Float, scale: Float) {
    var i = 0
    let raw = UnsafeMutableRawPointer(x)
    while i + 8 <= count {
        let v = fastExp(raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self) - shift) * scale
        raw.storeBytes(of: v, toByteOffset: i * 4, as: SIMD8<Float>.self)
        i += 8
    }
    while i < count { x[i] = scale * fastExp(x[i] - shift); i += 1 }
}
