import XCTest
import FinchTestSupport
@testable import FinchKernels
import FinchCPU

/// The decode path's matrix-vector products on stored (quantized) weights against the
/// dequantized f32 matrix, and WeightMatrix choosing them for a few vectors.
final class MatVecTests: XCTestCase {
    /// Random rows of `dtype` with finite f16 scales.
    private func randomRows(_ dtype: DType, rows: Int, columns: Int, seed: UInt64) -> [UInt8] {
        var rng = SplitMix(seed: seed)
        let rowBytes = dtype.rowBytes(columns: columns)
        if dtype == .f32 {
            let floats = (0..<rows * columns).map { _ in Float(Int(rng.next() % 2001) - 1000) / 1000 }
            return floats.withUnsafeBytes { Array($0) }
        }
        var bytes = (0..<rows * rowBytes).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        for b in 0..<(rows * columns / 32) {
            let offsets = dtype == .q4_1 ? [0, 2] : [0]
            for o in offsets {
                let h = Float16(Float(Int(rng.next() % 2001) - 1000) / 4000).bitPattern
                bytes[b * dtype.blockBytes + o] = UInt8(h & 0xFF)
                bytes[b * dtype.blockBytes + o + 1] = UInt8(h >> 8)
            }
        }
        return bytes
    }

    private func dequantized(_ bytes: [UInt8], _ dtype: DType, count: Int) -> [Float] {
        var dense = [Float](repeating: 0, count: count)
        bytes.withUnsafeBytes { raw in
            dense.withUnsafeMutableBufferPointer { dequantizeRow(dtype, raw.baseAddress!, $0.baseAddress!, count: count) }
        }
        return dense
    }

    func testMatchesTheDequantizedMatrixForEachTypeAndVectorCount() {
        let rows = 37, columns = 96
        var rng = SplitMix(seed: 11)
        for dtype in [DType.f32, .q8_0, .q4_0, .q4_1] {
            let bytes = randomRows(dtype, rows: rows, columns: columns, seed: 3)
            let dense = dequantized(bytes, dtype, count: rows * columns)
            for n in 1...matVecMaxVectors {
                let x = (0..<n * columns).map { _ in Float(Int(rng.next() % 2001) - 1000) / 500 }
                var expected = [Float](repeating: 0, count: n * rows)
                for t in 0..<n {
                    for r in 0..<rows {
                        var s = 0.0
                        for c in 0..<columns { s += Double(dense[r * columns + c]) * Double(x[t * columns + c]) }
                        expected[t * rows + r] = Float(s) + 1   // the output held 1 before accumulating
                    }
                }
                var got = [Float](repeating: 1, count: n * rows)
                bytes.withUnsafeBytes { raw in
                    matVec(dtype, raw.baseAddress!, rows: rows, columns: columns, x, n: n, into: &got, accumulate: true)
                }
                XCTAssertLessThan(TestSupport.maxRelativeError(got, expected), 1e-5, "\(dtype.rawValue) n=\(n)")
            }
        }
    }

    /// With 8-bit activations: equal (to float rounding) to the dequantized matrix times x rounded
    /// as the kernel documents (blocks of 32, d = max|x| / 127, q = x / d rounded to nearest even),
    /// and within 2% (relative L2) of the exact product; f32 matrices keep the exact path.
    /// Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q5_0, Q5_1, IQ4_NL and IQ4_XS rows (the types of llama.cpp's K-quant and IQ4 files), written by Finch's quantizers (random blocks for the IQ4 types),
    /// read in their blocks against the dequantized matrix, on the native and portable kernels.
    func testKQuantRowsMatchTheDequantizedMatrix() {
        let rows = 21, columns = 512
        var rng = SplitMix(seed: 5)
        let values = (0..<rows * columns).map { _ in Float(Int(rng.next() % 2001) - 1000) / 700 }
        for dtype in [DType.q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .q5_0, .q5_1, .iq4_NL, .iq4_XS] {
            var bytes = [UInt8](repeating: 0, count: rows * dtype.rowBytes(columns: columns))
            if dtype == .iq4_NL || dtype == .iq4_XS {
                // Finch does not write the IQ4 types: random bytes under a random f16 scale per block.
                let size = dtype.blockBytes
                for block in 0..<bytes.count / size {
                    let d = Float16(Float(Int(rng.next() % 1000) + 1) / 40000).bitPattern
                    bytes[block * size] = UInt8(d & 0xff); bytes[block * size + 1] = UInt8(d >> 8)
                    for j in 2..<size { bytes[block * size + j] = UInt8(rng.next() % 256) }
                }
            } else {
                values.withUnsafeBufferPointer { v in bytes.withUnsafeMutableBytes { b in
                    for r in 0..<rows {
                        _ = encodeRow(v.baseAddress! + r * columns, as: dtype, into: b.baseAddress! + r * dtype.rowBytes(columns: columns), count: columns)
                    }
                } }
            }
            let dense = dequantized(bytes, dtype, count: rows * columns)
            if dtype != .iq4_NL && dtype != .iq4_XS {   // 2- and 3-bit rows of uniform values are coarser
                let limit = dtype == .q2_K ? 0.3 : dtype == .q3_K ? 0.15 : 0.1
                XCTAssertLessThan(TestSupport.relativeL2(dense, values), limit, "\(dtype.rawValue) rows are a real quantization")
            }
            for n in 1...matVecMaxVectors {
                let x = (0..<n * columns).map { _ in Float(Int(rng.next() % 2001) - 1000) / 500 }
                var expected = [Float](repeating: 0, count: n * rows)
                for t in 0..<n { for r in 0..<rows {
                    var sum = 0.0
                    for c in 0..<columns { sum += Double(dense[r * columns + c]) * Double(x[t * columns + c]) }
                    expected[t * rows + r] = Float(sum)
                } }
                for level in [CPU.vectorLevel, 0] {
                    _ = finch_vector_set_level(Int32(level), CPU.features.rawValue)
                    var got = [Float](repeating: .nan, count: n * rows)
                    bytes.withUnsafeBytes { raw in
                        matVec(dtype, raw.baseAddress!, rows: rows, columns: columns, x, n: n, into: &got, accumulate: false)
                    }
                    _ = finch_vector_set_level(Int32(CPU.vectorLevel), CPU.features.rawValue)
                    XCTAssertLessThan(TestSupport.relativeL2(got, expected), 1e-5, "\(dtype.rawValue) n=\(n) level \(level)")
                }
            }
        }
    }

    func testInt8ActivationsMatchRoundedVectorsAndStayNearExact() throws {
        defer { int8DotUsesVNNI = int8DotHasVNNI }
        int8DotUsesVNNI = false
        checkInt8Activations()
        guard int8DotHasVNNI else {
            throw XCTSkip("testInt8ActivationsMatchRoundedVectorsAndStayNearExact: the AVX512_VNNI kernels need a CPU with AVX512_VNNI (\(CPU.description))")
        }
        int8DotUsesVNNI = true
        checkInt8Activations()
    }

    func checkInt8Activations() {
        let rows = 37, columns = 96
        var rng = SplitMix(seed: 12)
        for dtype in [DType.f32, .q8_0, .q4_0, .q4_1] {
            let bytes = randomRows(dtype, rows: rows, columns: columns, seed: 4)
            let dense = dequantized(bytes, dtype, count: rows * columns)
            for n in [1, 3] {
                let x = (0..<n * columns).map { _ in Float(Int(rng.next() % 2001) - 1000) / 500 }
                var rounded = x
                if dtype != .f32 {
                    for block in 0..<n * columns / 32 {
                        let amax = x[block * 32..<(block + 1) * 32].map(abs).max()!
                        let d = amax / 127
                        for i in block * 32..<(block + 1) * 32 { rounded[i] = d * (x[i] / d).rounded(.toNearestOrEven) }
                    }
                }
                func product(_ v: [Float]) -> [Float] {
                    (0..<n * rows).map { i in
                        let t = i / rows, r = i % rows
                        return Float((0..<columns).reduce(0.0) { $0 + Double(dense[r * columns + $1]) * Double(v[t * columns + $1]) })
                    }
                }
                var got = [Float](repeating: 0, count: n * rows)
                bytes.withUnsafeBytes { raw in
                    matVec(dtype, raw.baseAddress!, rows: rows, columns: columns, x, n: n, into: &got, accumulate: false, int8: true)
                }
                let exact = product(x)
                XCTAssertLessThan(TestSupport.maxRelativeError(got, product(rounded)), 1e-4, "\(dtype.rawValue) n=\(n)")
                let error = TestSupport.relativeL2(got, exact)
                XCTAssertLessThan(error, dtype == .f32 ? 1e-6 : 2e-2, "\(dtype.rawValue) n=\(n)")
                if dtype != .f32 { XCTAssertGreaterThan(error, 1e-6, "\(dtype.rawValue): the activations were not rounded") }
            }
        }
    }

    /// A dense copy of a quantized matrix keeps the quantized form for thin products, and
    /// both paths (matVec for few vectors, GEMM on tiles for many) agree.
    func testWeightMatrixUsesTheStoredFormForFewVectors() {
        let rows = 64, columns = 64
        let bytes = randomRows(.q4_1, rows: rows, columns: columns, seed: 5)
        let storage = OwnedBytes(count: bytes.count)
        bytes.withUnsafeBytes { storage.pointer.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        let quantized = WeightMatrix(rows: rows, columns: columns, dtype: .q4_1, storage: UnsafeRawPointer(storage.pointer), owner: storage)
        let dense = quantized.denseCopy()
        XCTAssertTrue(dense.compact === quantized)
        var rng = SplitMix(seed: 2)
        let x = (0..<8 * columns).map { _ in Float(Int(rng.next() % 2001) - 1000) / 500 }
        var viaGEMM = [Float](repeating: 0, count: 8 * rows)
        var viaMatVec = [Float](repeating: 0, count: 2 * rows)
        dense.multiply(x, n: 8, into: &viaGEMM)
        dense.multiply(x, n: 2, into: &viaMatVec)
        XCTAssertLessThan(TestSupport.maxRelativeError(viaMatVec, Array(viaGEMM.prefix(2 * rows))), 1e-5)
    }

    /// Matrices sharing their input (q, k, v) in one pass give each one's own product.
    func testGroupedProductsEqualSeparateOnes() {
        let columns = 64
        var matrices: [WeightMatrix] = []
        var owners: [OwnedBytes] = []
        for (i, (dtype, rows)) in [(DType.q4_1, 40), (.q8_0, 24), (.f32, 8)].enumerated() {
            let bytes = randomRows(dtype, rows: rows, columns: columns, seed: UInt64(20 + i))
            let storage = OwnedBytes(count: bytes.count)
            bytes.withUnsafeBytes { storage.pointer.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
            owners.append(storage)
            matrices.append(WeightMatrix(rows: rows, columns: columns, dtype: dtype, storage: UnsafeRawPointer(storage.pointer), owner: storage))
        }
        var rng = SplitMix(seed: 4)
        let x = (0..<2 * columns).map { _ in Float(Int(rng.next() % 2001) - 1000) / 500 }
        let outputs = matrices.map { UnsafeMutablePointer<Float>.allocate(capacity: 2 * $0.rows) }
        defer { outputs.forEach { $0.deallocate() } }
        WeightMatrix.multiply(Array(zip(matrices, outputs)), x, n: 2)
        for (m, out) in zip(matrices, outputs) {
            var alone = [Float](repeating: 0, count: 2 * m.rows)
            m.multiply(x, n: 2, into: &alone)
            XCTAssertEqual(Array(UnsafeBufferPointer(start: out, count: 2 * m.rows)), alone, m.dtype.rawValue)
        }
    }

    /// gate and up: dense copies in one allocation act as one matrix. Products write the two
    /// halves of one [n, 2 * rows] matrix (one GEMM for many vectors, matVec with a row stride
    /// for a few), and dy of that layout times both gives their summed products; all equal the
    /// separate products. Copies that do not lie together take the separate path with the same layout.
    func testJointMatricesMultiplyAsOneWithStridedOutputs() {
        let rows = 40, columns = 64, ld = 2 * rows
        let originals = (0..<2).map { i -> WeightMatrix in
            let bytes = randomRows(.q4_1, rows: rows, columns: columns, seed: UInt64(30 + i))
            let storage = OwnedBytes(count: bytes.count)
            bytes.withUnsafeBytes { storage.pointer.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
            return WeightMatrix(rows: rows, columns: columns, dtype: .q4_1, storage: UnsafeRawPointer(storage.pointer), owner: storage)
        }
        let joint = WeightMatrix.jointDenseCopies(originals)
        let apart = originals.map { $0.denseCopy() }
        XCTAssertTrue(joint[0].isFollowed(by: joint[1]))
        XCTAssertFalse(apart[0].isFollowed(by: apart[1]))
        XCTAssertTrue(joint[0].compact === originals[0] && joint[1].compact === originals[1])
        var rng = SplitMix(seed: 6)
        for n in [2, 9] {
            let x = (0..<n * columns).map { _ in Float(Int(rng.next() % 2001) - 1000) / 500 }
            let dy = (0..<n * ld).map { _ in Float(Int(rng.next() % 2001) - 1000) / 500 }
            // The separate products, each contiguous.
            var want = [[Float]](repeating: [Float](repeating: 0, count: n * rows), count: 2)
            var wantDx = [Float](repeating: 0, count: n * columns)
            for i in 0..<2 {
                var dyi: [Float] = []
                for t in 0..<n { let start = t * ld + i * rows; dyi += dy[start ..< start + rows] }
                want[i].withUnsafeMutableBufferPointer { apart[i].multiply(x, n: n, into: $0.baseAddress!) }
                wantDx.withUnsafeMutableBufferPointer { apart[i].multiplyTransposed(dyi, n: n, into: $0.baseAddress!, accumulate: i > 0) }
            }
            // Joined f32, apart, and the quantized matrices themselves (one dequantized tile for both).
            for matrices in [joint, apart, originals] {
                let y = UnsafeMutablePointer<Float>.allocate(capacity: n * ld)
                defer { y.deallocate() }
                y.initialize(repeating: .nan, count: n * ld)
                WeightMatrix.multiply([(matrices[0], y), (matrices[1], y + rows)], x, n: n, ldy: ld)
                for i in 0..<2 {
                    var got: [Float] = []
                    for t in 0..<n { got += UnsafeBufferPointer(start: y + t * ld + i * rows, count: rows) }
                    XCTAssertLessThan(TestSupport.maxRelativeError(got, want[i]), 1e-5, "n \(n), matrix \(i)")
                }
                var dx = [Float](repeating: .nan, count: n * columns)
                dy.withUnsafeBufferPointer { d in
                    dx.withUnsafeMutableBufferPointer {
                        WeightMatrix.multiplyTransposed([(matrices[0], d.baseAddress!), (matrices[1], d.baseAddress! + rows)],
                                                        lddy: ld, n: n, into: $0.baseAddress!, accumulate: false)
                    }
                }
                XCTAssertLessThan(TestSupport.maxRelativeError(dx, wantDx), 1e-5, "n \(n)")
            }
        }
    }
}
