import FinchCPU

// Vectorised exp and the loops built on it, in FinchCPU/vector.c (AVX2 + FMA or portable C,
// chosen at run time). libm's expf runs one value at a time and was most of the softmax,
// cross-entropy and SwiGLU time.

/// exp(x), about 1 ulp on [-87.3, 88.7]; exactly 0 from about -87.7 down (and for -infinity),
/// infinity above 88.7.
@inline(__always)
func fastExp(_ x: Float) -> Float {
    _ = CPU.vectorLevel
    return finch_exp(x)
}

/// x[i] = exp(x[i] - shift); returns the sum of the results.
@inline(__always)
func expShiftedInPlace(_ x: UnsafeMutablePointer<Float>, count: Int, shift: Float) -> Float {
    _ = CPU.vectorLevel
    return finch_exp_shifted(x, Int64(count), shift)
}

/// The largest value (-infinity when there is none).
@inline(__always)
func maxValue(_ x: UnsafePointer<Float>, count: Int) -> Float {
    _ = CPU.vectorLevel
    return finch_max(x, Int64(count))
}

/// The largest value and its index (the first one on ties).
@inline(__always)
func maxAndIndex(_ x: UnsafePointer<Float>, count: Int) -> (Float, Int) {
    let m = maxValue(x, count: count)
    var index = 0
    while index < count && x[index] != m { index += 1 }
    return (m, min(index, max(count - 1, 0)))
}

/// x[i] = exp(x[i] - shift), in place; returns sum(exp(x - shift)) and sum(exp(x - shift) * x)
/// of the values before: the softmax's sums and its unnormalised values in one pass.
@inline(__always)
func expSumsInPlace(_ x: UnsafeMutablePointer<Float>, count: Int, shift: Float) -> (Float, Float) {
    _ = CPU.vectorLevel
    var weighted: Float = 0
    let sum = finch_exp_sums(x, Int64(count), shift, &weighted)
    return (sum, weighted)
}

/// x[i] *= scale.
@inline(__always)
package func scaleInPlace(_ x: UnsafeMutablePointer<Float>, count: Int, by scale: Float) {
    for i in 0..<count { x[i] *= scale }
}

/// x[i] += y[i], over all cores for long vectors.
package func addInPlace(_ x: UnsafeMutablePointer<Float>, _ y: UnsafePointer<Float>, count: Int) {
    parallelFor(count, grain: 1 << 16) { range in for i in range { x[i] += y[i] } }
}

/// x[i] = scale * exp(x[i] - shift).
@inline(__always)
func scaledExpInPlace(_ x: UnsafeMutablePointer<Float>, count: Int, shift: Float, scale: Float) {
    _ = CPU.vectorLevel
    finch_scaled_exp(x, Int64(count), shift, scale)
}
