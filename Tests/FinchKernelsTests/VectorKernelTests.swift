import FinchCPU
@testable import FinchKernels
import XCTest
import FinchTestSupport

/// FinchCPU/vector.c's loops give the same numbers at every level: the AVX-512F exp loops, the
/// AVX2 + FMA + F16C kernels and the portable C ones do the same fused multiply-adds in the same
/// order, so their results are equal bit for bit (the 8-bit activation products, whose float additions are
/// ordered differently, within 1e-6 of the sum of |w x|). Each kernel is also checked against a plain reference.
final class VectorKernelTests: XCTestCase {
    /// Runs `body` at the portable level and at the native one, restoring the native one.
    private func atEveryLevel<T>(_ body: () -> T) throws -> (portable: T, native: T) {
        let native = CPU.vectorLevel
        guard native >= 1 else { throw XCTSkip("VectorKernelTests: this CPU has no AVX2 + FMA + F16C (\(CPU.description))") }
        defer { _ = finch_vector_set_level(Int32(native), CPU.features.rawValue) }
        XCTAssertEqual(finch_vector_set_level(0, CPU.features.rawValue), 0)
        let portable = body()
        XCTAssertEqual(Int(finch_vector_set_level(Int32(native), CPU.features.rawValue)), native)
        return (portable, body())
    }

    /// `body` at every level from portable up to the native one (the exp loops: portable, AVX2,
    /// AVX-512F where present), restoring the native one.
    private func atEachLevel<T>(_ body: () -> T) throws -> [T] {
        let native = CPU.vectorLevel
        guard native >= 1 else { throw XCTSkip("VectorKernelTests: this CPU has no AVX2 + FMA + F16C (\(CPU.description))") }
        defer { _ = finch_vector_set_level(Int32(native), CPU.features.rawValue) }
        return (0...native).map { level in
            XCTAssertEqual(Int(finch_vector_set_level(Int32(level), CPU.features.rawValue)), level)
            return body()
        }
    }

    /// Values around the softmax's range, a NaN, infinities and an odd count (a scalar tail).
    private let values: [Float] = TestSupport.randomArray(203, seed: 7).map { $0 * 40 } + [-.infinity, 0, -100, 90]

    func testExpLoopsAgreeAndMatchLibm() throws {
        let levels = try atEachLevel { () -> [Float] in
            var a = values, b = values, c = values
            let sum = finch_exp_shifted(&a, Int64(a.count), 3)
            var weighted: Float = 0
            let sum2 = finch_exp_sums(&b, Int64(b.count), 3, &weighted)
            finch_scaled_exp(&c, Int64(c.count), 3, 0.5)
            return a + b + c + [sum, sum2, weighted, finch_max(values, Int64(values.count)), finch_exp(1.5)]
        }
        let native = levels.last!
        for (level, result) in levels.enumerated() { XCTAssertEqual(result.map(\.bitPattern), native.map(\.bitPattern), "level \(level)") }
        for (x, got) in zip(values, native.prefix(values.count)) where x - 3 > -87 && x - 3 < 88 {
            let want = Foundation.exp(Double(x - 3))
            XCTAssertEqual(Double(got), want, accuracy: 4e-7 * want, "exp(\(x) - 3)")
        }
        XCTAssertEqual(native[values.count - 4], 0, "exp(-infinity) is 0")
        XCTAssertEqual(native[3 * values.count + 3], values.max()!)
        var nan: [Float] = [1, .nan, 2]
        XCTAssertTrue(finch_exp_shifted(&nan, 3, 0).isNaN, "a NaN stays NaN")
        XCTAssertEqual(finch_max([Float.nan, 1, -2], 3), 1, "NaNs are skipped")
    }

    /// Attention's fused rows with bf16 products give, bit for bit and at every level, what the
    /// separate passes gave: exp in place then rounding (forward: unnormalised, the same sum as
    /// finch_exp_shifted), and exp, dS = P (dP - delta) then rounding both (backward); the
    /// columns from `visible` to `length` are zeros.
    func testAttentionRowsToBF16MatchTheSeparatePasses() throws {
        let visible = 203, length = 211
        let s = Array(values.prefix(visible - 1)) + [-.infinity]
        let dp = TestSupport.randomArray(visible, seed: 12)
        func bf16(_ x: [Float]) -> [UInt16] { var out = [UInt16](repeating: 0, count: x.count); finch_f32_to_bf16(x, &out, x.count); return out }
        let levels = try atEachLevel { () -> [UInt16] in
            var p = [UInt16](repeating: 0xffff, count: length), gp = p, gds = p
            let sum = finch_exp_to_bf16(s, Int64(visible), Int64(length), 3, &p)
            finch_attention_row_grad_bf16(s, dp, Int64(visible), Int64(length), 3, 0.25, &gp, &gds)
            // the separate passes
            var e = s
            let want = finch_exp_shifted(&e, Int64(visible), 3)
            XCTAssertEqual(sum.bitPattern, want.bitPattern, "sum of the exponentials")
            var scaled = s
            finch_scaled_exp(&scaled, Int64(visible), 3, 1)
            let ds = zip(scaled, dp).map { $0 * ($1 - 0.25) }
            let zeros = [UInt16](repeating: 0, count: length - visible)
            XCTAssertEqual(p, bf16(e) + zeros, "forward row")
            XCTAssertEqual(gp, bf16(scaled) + zeros, "backward P")
            XCTAssertEqual(gds, bf16(ds) + zeros, "backward dS")
            return p + gp + gds
        }
        for (level, result) in levels.enumerated() { XCTAssertEqual(result, levels[0], "level \(level)") }
    }

    func testSwiGLUAgrees() throws {
        let n = 203
        let g = TestSupport.randomArray(n, seed: 8).map { $0 * 6 }, u = TestSupport.randomArray(n, seed: 9)
        let dh = TestSupport.randomArray(n, seed: 10)
        let levels = try atEachLevel { () -> [Float] in
            var h = [Float](repeating: 0, count: n), dg = h, du = h
            finch_swiglu_forward(&h, g, u, Int64(n))
            finch_swiglu_backward(&dg, &du, dh, g, u, Int64(n))
            return h + dg + du
        }
        let native = levels.last!
        for (level, result) in levels.enumerated() { XCTAssertEqual(result.map(\.bitPattern), native.map(\.bitPattern), "level \(level)") }
        for j in 0..<n {
            let sig = 1 / (1 + Foundation.exp(-Double(g[j])))
            XCTAssertEqual(Double(native[j]), Double(g[j]) * sig * Double(u[j]), accuracy: 1e-5)
        }
    }

    /// Rows of `blocks` ggml blocks with f16 scales in a sane range and random quants.
    private func quantizedRows(_ dtype: DType, rows: Int, blocks: Int, seed: UInt64) -> [UInt8] {
        let size = dtype == .q8_0 ? 34 : dtype == .q4_0 ? 18 : 20
        var random = FinchRandom(seed: seed)
        var bytes = (0..<rows * blocks * size).map { _ in UInt8(truncatingIfNeeded: Int(random.nextFloat() * 256)) }
        for block in 0..<rows * blocks {
            let scales = dtype == .q4_1 ? 2 : 1
            for k in 0..<scales {
                let half = Float16(random.nextFloat() * 0.1 + 0.01).bitPattern
                bytes[block * size + 2 * k] = UInt8(half & 0xff)
                bytes[block * size + 2 * k + 1] = UInt8(half >> 8)
            }
        }
        return bytes
    }

    func testMatrixVectorProductsAgreeAndMatchDequantized() throws {
        let rows = 6, columns = 96, blocks = columns / 32
        let x = TestSupport.randomArray(columns, seed: 11)
        for dtype in [DType.q8_0, .q4_0, .q4_1, .f32] {
            let stored: [UInt8] = dtype == .f32
                ? TestSupport.randomArray(rows * columns, seed: 12).withUnsafeBytes { Array($0) }
                : quantizedRows(dtype, rows: rows, blocks: blocks, seed: 13)
            let rowBytes = dtype.rowBytes(columns: columns)
            let sums = (0..<blocks).map { b in x[b * 32..<(b + 1) * 32].reduce(0, +) }
            let (portable, native) = try atEveryLevel { () -> [Float] in
                stored.withUnsafeBytes { raw in
                    (0..<rows).map { r in
                        let row = raw.baseAddress! + r * rowBytes
                        switch dtype {
                        case .f32: return finch_dot_f32(row.assumingMemoryBound(to: Float.self), x, Int64(columns))
                        case .q8_0: return finch_dot_q8_0(row.assumingMemoryBound(to: UInt8.self), x, Int64(blocks))
                        case .q4_0: return finch_dot_q4_0(row.assumingMemoryBound(to: UInt8.self), x, Int64(blocks))
                        default: return finch_dot_q4_1(row.assumingMemoryBound(to: UInt8.self), x, Int64(blocks), sums)
                        }
                    }
                }
            }
            XCTAssertEqual(portable.map(\.bitPattern), native.map(\.bitPattern), "\(dtype)")
            // The row-range entry point matVec uses gives the same numbers, accumulating when asked.
            let matvecType = [DType.f32: FINCH_MATVEC_F32, .q8_0: FINCH_MATVEC_Q8_0, .q4_0: FINCH_MATVEC_Q4_0, .q4_1: FINCH_MATVEC_Q4_1][dtype]!
            var y = [Float](repeating: 1, count: rows)
            stored.withUnsafeBytes { raw in
                finch_matvec(Int32(matvecType), raw.baseAddress!.assumingMemoryBound(to: UInt8.self), Int64(rowBytes), Int64(rows), x, Int64(columns),
                             1, sums, &y, Int64(rows), 1)
            }
            XCTAssertEqual(y, native.map { 1 + $0 }, "\(dtype) finch_matvec")
            var dense = [Float](repeating: 0, count: rows * columns)
            stored.withUnsafeBytes { raw in dense.withUnsafeMutableBufferPointer { dequantizeRow(dtype, raw.baseAddress!, $0.baseAddress!, count: rows * columns) } }
            // Each row's sum of |w x|: the scale of its rounding errors.
            let magnitudes = (0..<rows).map { r in (0..<columns).reduce(0.0) { $0 + abs(Double(dense[r * columns + $1]) * Double(x[$1])) } }
            for r in 0..<rows {
                let want = (0..<columns).reduce(0.0) { $0 + Double(dense[r * columns + $1]) * Double(x[$1]) }
                XCTAssertEqual(Double(native[r]), want, accuracy: 1e-6 * magnitudes[r], "\(dtype) row \(r)")
            }
            guard dtype != .f32 else { continue }
            // The same rows against x rounded to 8 bits: portable, AVX2 and (where present) VNNI agree.
            let rounded = Int8Vectors(x, n: 1, columns: columns)
            let type = dtype == .q8_0 ? FINCH_INT8_Q8_0 : dtype == .q4_0 ? FINCH_INT8_Q4_0 : FINCH_INT8_Q4_1
            let int8 = try atEveryLevel { () -> [Float] in
                stored.withUnsafeBytes { raw in
                    (0..<rows).map { r in
                        finch_int8_dot(Int32(type), raw.baseAddress!.assumingMemoryBound(to: UInt8.self) + r * rowBytes, rounded.q,
                                       rounded.scales, rounded.sums, Int64(blocks), 0)
                    }
                }
            }
            for r in 0..<rows {
                let m = Float(magnitudes[r])
                XCTAssertEqual(int8.portable[r], int8.native[r], accuracy: 1e-6 * m, "\(dtype) int8 row \(r)")
                // x rounded to 8 bits per block: about 1/254 of each block's largest |x|.
                XCTAssertEqual(int8.native[r], native[r], accuracy: 2e-2 * m, "\(dtype) int8 vs exact, row \(r)")
                if int8DotHasVNNI {
                    let vnni = stored.withUnsafeBytes { raw in
                        finch_int8_dot(Int32(type), raw.baseAddress!.assumingMemoryBound(to: UInt8.self) + r * rowBytes, rounded.q,
                                       rounded.scales, rounded.sums, Int64(blocks), 1)
                    }
                    XCTAssertEqual(vnni, int8.native[r], accuracy: 1e-6 * m, "\(dtype) VNNI row \(r)")
                }
            }
        }
    }

    func testDecodingAttentionLoopsAgree() throws {
        let width = 72, stride = 80, count = 7   // 72: two groups of 32 and a tail of 8
        let q = TestSupport.randomArray(width, seed: 14), kv = TestSupport.randomArray(count * stride, seed: 15)
        let p = TestSupport.randomArray(count, seed: 16).map { abs($0) }
        let (portable, native) = try atEveryLevel { () -> [Float] in
            var scores = [Float](repeating: 0, count: count), out = [Float](repeating: 0, count: width)
            finch_key_scores(q, kv, Int64(stride), Int64(count), Int64(width), 0.125, &scores)
            finch_weighted_values(p, kv, Int64(stride), Int64(count), Int64(width), &out)
            return scores + out
        }
        XCTAssertEqual(portable.map(\.bitPattern), native.map(\.bitPattern))
        for j in 0..<count {
            let want = 0.125 * (0..<width).reduce(0.0) { $0 + Double(q[$1]) * Double(kv[j * stride + $1]) }
            XCTAssertEqual(Double(native[j]), want, accuracy: 1e-5)
        }
        for c in 0..<width {
            let want = (0..<count).reduce(0.0) { $0 + Double(p[$1]) * Double(kv[$1 * stride + c]) }
            XCTAssertEqual(Double(native[count + c]), want, accuracy: 1e-5)
        }
    }
}
