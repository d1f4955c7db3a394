import FinchCPU
import XCTest
import FinchTestSupport
@testable import FinchKernels

/// The GEMM layer: bf16 rounding on every kernel level, bf16 products on the native (oneDNN,
/// AVX512_BF16) and portable paths against one reference, fp32 products through oneDNN against
/// OpenBLAS, and bf16 weight matrices in a model.
final class GEMMTests: XCTestCase {
    /// Round to nearest even on the bits, written independently of the kernels.
    static func referenceBF16(_ x: Float) -> UInt16 {
        if x.isNaN { return UInt16(x.bitPattern >> 16) | 0x40 }
        let u = x.bitPattern
        let upper = u >> 16, lower = u & 0xffff
        let roundUp = lower > 0x8000 || (lower == 0x8000 && upper & 1 == 1)
        return UInt16(truncatingIfNeeded: upper + (roundUp ? 1 : 0))
    }

    static func float(_ h: UInt16) -> Float { Float(bitPattern: UInt32(h) << 16) }

    /// Values that exercise rounding: ties to even both ways, carries into the exponent,
    /// subnormals, infinities, the largest finite values, NaN, and random ones.
    static func roundingCases() -> [Float] {
        var cases: [Float] = [0, -0, 1, -1, .infinity, -.infinity, .greatestFiniteMagnitude, -.greatestFiniteMagnitude,
                              .leastNonzeroMagnitude, -.leastNormalMagnitude, Float(bitPattern: 0x3f80_8000), Float(bitPattern: 0x3f81_8000),
                              Float(bitPattern: 0x3fff_ffff), Float(bitPattern: 0x7f7f_ffff), Float(bitPattern: 0x0000_8000),
                              Float(bitPattern: 0x3f80_7fff), Float(bitPattern: 0x3f80_8001)]
        var rng = FinchRandom(seed: 5)
        for _ in 0..<4000 { cases.append(Float(bitPattern: UInt32(truncatingIfNeeded: rng.next()) & 0x7f7f_ffff | (rng.next() & 1 == 0 ? 0 : 0x8000_0000))) }
        for _ in 0..<1000 { cases.append(rng.nextGaussian()) }
        return cases
    }

    func testBF16ConversionMatchesReferenceOnEveryKernelLevel() {
        let cases = Self.roundingCases() + [.nan]
        let available = Int(finch_bf16_set_level(2, CPU.detected.rawValue))
        defer { _ = finch_bf16_set_level(Int32(CPU.bf16Level), CPU.features.rawValue) }
        for level in 0...available {
            _ = finch_bf16_set_level(Int32(level), CPU.detected.rawValue)
            var h = [UInt16](repeating: 0, count: cases.count)
            var back = [Float](repeating: 0, count: cases.count)
            var rounded = [Float](repeating: 0, count: cases.count)
            finch_f32_to_bf16(cases, &h, cases.count)
            finch_bf16_to_f32(h, &back, cases.count)
            finch_round_to_bf16(cases, &rounded, cases.count)
            for (i, x) in cases.enumerated() {
                let expected = Self.referenceBF16(x)
                if x.isNaN {
                    XCTAssertTrue(Self.float(h[i]).isNaN && back[i].isNaN && rounded[i].isNaN, "level \(level): NaN not kept")
                    continue
                }
                XCTAssertEqual(h[i], expected, "level \(level): bf16(\(x)) [bits \(String(x.bitPattern, radix: 16))]")
                XCTAssertEqual(back[i].bitPattern, Self.float(expected).bitPattern, "level \(level): widening")
                XCTAssertEqual(rounded[i].bitPattern, Self.float(expected).bitPattern, "level \(level): rounding in place")
            }
        }
        if available < 2 { print("GEMMTests: bf16 conversion levels above \(available) not run: this CPU lacks them") }
    }

    /// C = alpha op(A) op(B) + beta C in Double, from the given (already rounded) values.
    static func naive(_ tA: BLAS.Transpose, _ tB: BLAS.Transpose, m: Int, n: Int, k: Int, alpha: Float, a: [Float], lda: Int,
                      b: [Float], ldb: Int, beta: Float, c: [Float], ldc: Int) -> (c: [Float], scale: [Float]) {
        var out = c, scale = [Float](repeating: 0, count: c.count)
        for i in 0..<m {
            for j in 0..<n {
                var sum = 0.0, magnitude = 0.0
                for p in 0..<k {
                    let x = Double(tA == .none ? a[i * lda + p] : a[p * lda + i])
                    let y = Double(tB == .none ? b[p * ldb + j] : b[j * ldb + p])
                    sum += x * y; magnitude += abs(x * y)
                }
                out[i * ldc + j] = Float(Double(alpha) * sum + Double(beta) * Double(c[i * ldc + j]))
                scale[i * ldc + j] = Float(abs(Double(alpha)) * magnitude + abs(Double(beta) * Double(c[i * ldc + j])))
            }
        }
        return (out, scale)
    }

    struct Case: Sendable { let tA: BLAS.Transpose, tB: BLAS.Transpose, m: Int, n: Int, k: Int, alpha: Float, beta: Float, pad: Int }
    static let cases: [Case] = [
        Case(tA: .none, tB: .transpose, m: 37, n: 53, k: 64, alpha: 1, beta: 0, pad: 0),
        Case(tA: .none, tB: .none, m: 16, n: 70, k: 33, alpha: 1, beta: 1, pad: 3),
        Case(tA: .transpose, tB: .none, m: 24, n: 9, k: 101, alpha: 0.5, beta: 1, pad: 5),
        Case(tA: .transpose, tB: .transpose, m: 5, n: 7, k: 300, alpha: 2, beta: 0.25, pad: 1),
        Case(tA: .none, tB: .transpose, m: 130, n: 96, k: 576, alpha: 1, beta: 0, pad: 0),
    ]

    /// Runs `body(a, lda, b, ldb, c, ldc)` for each case and checks C against the naive product
    /// of `prepare`d inputs: |C - ref| <= tolerance * sum |products| per element.
    func checkProducts(tolerance: Float, prepare: (Float) -> Float = { $0 },
                       _ body: (Case, [Float], Int, [Float], Int, inout [Float], Int) -> Void) {
        for (index, t) in Self.cases.enumerated() {
            let aRows = t.tA == .none ? t.m : t.k, aCols = t.tA == .none ? t.k : t.m
            let bRows = t.tB == .none ? t.k : t.n, bCols = t.tB == .none ? t.n : t.k
            let lda = aCols + t.pad, ldb = bCols + t.pad, ldc = t.n + t.pad
            let a = TestSupport.randomArray(aRows * lda, seed: UInt64(10 + index))
            let b = TestSupport.randomArray(bRows * ldb, seed: UInt64(20 + index))
            var c = TestSupport.randomArray(t.m * ldc, seed: UInt64(30 + index))
            let (expected, scale) = Self.naive(t.tA, t.tB, m: t.m, n: t.n, k: t.k, alpha: t.alpha, a: a.map(prepare), lda: lda,
                                               b: b.map(prepare), ldb: ldb, beta: t.beta, c: c, ldc: ldc)
            body(t, a, lda, b, ldb, &c, ldc)
            var worst: Float = 0
            for i in 0..<t.m { for j in 0..<t.n { let e = i * ldc + j; worst = max(worst, abs(c[e] - expected[e]) / max(scale[e], 1e-30)) } }
            XCTAssertLessThan(worst, tolerance, "case \(index) (\(t.tA), \(t.tB), \(t.m)x\(t.n)x\(t.k))")
            // Padding columns of C are left alone.
            if t.pad > 0 { XCTAssertEqual(c[t.n], TestSupport.randomArray(t.m * ldc, seed: UInt64(30 + index))[t.n], "case \(index) wrote padding") }
        }
    }

    func testFP32ProductsMatchNaiveOnTheBackendAndOnOpenBLAS() {
        checkProducts(tolerance: 1e-5) { t, a, lda, b, ldb, c, ldc in
            GEMM.sgemm(t.tA, t.tB, m: t.m, n: t.n, k: t.k, alpha: t.alpha, a: a, lda: lda, b: b, ldb: ldb, beta: t.beta, c: &c, ldc: ldc)
        }
        checkProducts(tolerance: 1e-5) { t, a, lda, b, ldb, c, ldc in
            BLAS.sgemm(t.tA, t.tB, m: t.m, n: t.n, k: t.k, alpha: t.alpha, a: a, lda: lda, b: b, ldb: ldb, beta: t.beta, c: &c, ldc: ldc)
        }
    }

    /// bf16 in precision: products of bf16-rounded inputs accumulated in fp32, whether the
    /// operands come as f32 (rounded inside) or as bf16, on the portable and the native path.
    func checkBF16Products(portable: Bool) {
        GEMM.portableBF16 = portable
        defer { GEMM.portableBF16 = false }
        let round: (Float) -> Float = { Self.float(Self.referenceBF16($0)) }
        checkProducts(tolerance: 2e-6, prepare: round) { t, a, lda, b, ldb, c, ldc in
            a.withUnsafeBufferPointer { a in
                GEMM.multiply(t.tA, t.tB, m: t.m, n: t.n, k: t.k, alpha: t.alpha, a: .f32(a.baseAddress!), lda: lda,
                              b: .f32(b), ldb: ldb, beta: t.beta, c: &c, ldc: ldc, precision: .bf16)
            }
        }
        checkProducts(tolerance: 2e-6, prepare: round) { t, a, lda, b, ldb, c, ldc in
            var b16 = [UInt16](repeating: 0, count: b.count)
            BFloat16.convert(b, to: &b16, count: b.count)
            a.withUnsafeBufferPointer { a in
                b16.withUnsafeBufferPointer { b16 in
                    GEMM.multiply(t.tA, t.tB, m: t.m, n: t.n, k: t.k, alpha: t.alpha, a: .f32(a.baseAddress!), lda: lda,
                                  b: .bf16(b16.baseAddress!), ldb: ldb, beta: t.beta, c: &c, ldc: ldc, precision: .bf16)
                }
            }
        }
    }

    func testBF16ProductsOnThePortablePath() { checkBF16Products(portable: true) }

    func testBF16ProductsOnTheNativePath() throws {
        guard GEMM.nativeBF16 else {
            throw XCTSkip("testBF16ProductsOnTheNativePath: needs AVX512_BF16 or AMX and oneDNN (\(CPU.description); \(GEMM.description))")
        }
        checkBF16Products(portable: false)
    }

    /// Products that read a shared bf16 copy of their input (`GEMM.withBF16Copy`, as q, k, v and
    /// their LoRA pairs do) give exactly what each product's own conversion gives, also for a
    /// column block of a wider matrix (gate's and up's halves of one dy). The copy exists only
    /// where bf16 products run natively; elsewhere the products read f32.
    func testSharedBF16CopyGivesTheSameProducts() {
        let rows = 48, columns = 96, n = 40, ld = 2 * rows
        let w = TestSupport.randomArray(rows * columns, seed: 51)
        let x = TestSupport.randomArray(n * columns, seed: 52)
        let dy = TestSupport.randomArray(n * ld, seed: 53)   // two blocks of `rows` columns side by side
        w.withUnsafeBufferPointer { wp in
            let matrix = WeightMatrix(rows: rows, columns: columns, floats: wp.baseAddress!, owner: nil).bf16Copy()
            var y = [Float](repeating: 0, count: n * rows), dx = [Float](repeating: 0, count: n * columns)
            matrix.multiply(x, n: n, into: &y)
            dy.withUnsafeBufferPointer { matrix.multiplyTransposed($0.baseAddress! + rows, lddy: ld, n: n, into: &dx, accumulate: false) }
            var ySharing = y.map { _ in Float.nan }, dxSharing = dx.map { _ in Float.nan }
            x.withUnsafeBufferPointer { xp in
                GEMM.withBF16Copy(of: xp.baseAddress!, rows: n, ld: columns, precision: .bf16) { copy in
                    XCTAssertEqual(copy != nil, GEMM.nativeBF16)
                    if let copy {
                        XCTAssertEqual((0..<n * columns).map { copy[$0] }, x.map { Self.referenceBF16($0) }, "the copy rounds as bf16 does")
                    }
                    ySharing.withUnsafeMutableBufferPointer { matrix.multiply(xp.baseAddress!, n: n, into: $0.baseAddress!, xCopy: copy) }
                }
            }
            dy.withUnsafeBufferPointer { dyp in
                GEMM.withBF16Copy(of: dyp.baseAddress!, rows: n, ld: ld, precision: .bf16) { copy in
                    dxSharing.withUnsafeMutableBufferPointer {
                        matrix.multiplyTransposed(dyp.baseAddress! + rows, lddy: ld, n: n, into: $0.baseAddress!, accumulate: false,
                                                  dyCopy: copy.map { $0 + rows })
                    }
                }
            }
            XCTAssertEqual(ySharing, y)
            XCTAssertEqual(dxSharing, dx)
        }
        x.withUnsafeBufferPointer { xp in
            GEMM.withBF16Copy(of: xp.baseAddress!, rows: n, ld: columns, precision: .fp32) { XCTAssertNil($0, "fp32 products read f32") }
        }
    }

    /// A bf16 copy of a weight matrix multiplies as its rounded values do, both ways.
    func testBF16WeightMatrixProducts() {
        let rows = 48, columns = 96, n = 40
        let w = TestSupport.randomArray(rows * columns, seed: 41)
        let x = TestSupport.randomArray(n * columns, seed: 42)
        let dy = TestSupport.randomArray(n * rows, seed: 43)
        let round: (Float) -> Float = { Self.float(Self.referenceBF16($0)) }
        w.withUnsafeBufferPointer { wp in
            let matrix = WeightMatrix(rows: rows, columns: columns, floats: wp.baseAddress!, owner: nil).bf16Copy()
            XCTAssertEqual(matrix.dtype, .bf16)
            XCTAssertEqual(matrix.byteCount, rows * columns * 2)
            var y = [Float](repeating: 0, count: n * rows), dx = [Float](repeating: 0, count: n * columns)
            matrix.multiply(x, n: n, into: &y)
            matrix.multiplyTransposed(dy, n: n, into: &dx, accumulate: false)
            let (yRef, _) = Self.naive(.none, .transpose, m: n, n: rows, k: columns, alpha: 1, a: x.map(round), lda: columns,
                                       b: w.map(round), ldb: columns, beta: 0, c: y, ldc: rows)
            let (dxRef, _) = Self.naive(.none, .none, m: n, n: columns, k: rows, alpha: 1, a: dy.map(round), lda: rows,
                                        b: w.map(round), ldb: columns, beta: 0, c: dx, ldc: columns)
            XCTAssertLessThan(TestSupport.maxRelativeError(y, yRef), 1e-5)
            XCTAssertLessThan(TestSupport.maxRelativeError(dx, dxRef), 1e-5)
            // And not the unrounded product: the rounding is really applied.
            let (yExact, _) = Self.naive(.none, .transpose, m: n, n: rows, k: columns, alpha: 1, a: x, lda: columns,
                                         b: w, ldb: columns, beta: 0, c: y, ldc: rows)
            XCTAssertGreaterThan(TestSupport.maxRelativeError(y, yExact), 1e-4)
        }
    }

    func testISALevelsAndNames() {
        XCTAssertEqual(ISALevel(name: "avx2"), .avx2)
        XCTAssertEqual(ISALevel(name: "AVX512-BF16"), .avx512BF16)
        XCTAssertNil(ISALevel(name: "avx1024"))
        XCTAssertEqual(ISALevel.of([.avx2, .fma, .f16c]), .avx2)
        XCTAssertEqual(ISALevel.of([.avx2, .fma, .f16c, .avx512f, .avx512bw, .avx512vl, .avx512dq, .avx512vnni, .avx512bf16]), .avx512BF16)
        XCTAssertFalse(ISALevel.avx2.allowed.contains(.avx512f))
        XCTAssertTrue(CPU.detected.isSuperset(of: CPU.features))
        // auto precision is bf16 exactly where bf16 runs natively.
        XCTAssertEqual(PrecisionChoice.auto.resolved().precision == .bf16, GEMM.nativeBF16)
    }

    // MARK: - Backend registry

    /// A backend that never loads, and one that records what it is asked to compute.
    struct MissingBackend: GEMMBackend {
        static let name = "missing"
        static func load() -> (backend: MissingBackend?, failure: String?) { (nil, "libmissing.so: not found") }
        var description: String { "missing" }
        var nativeBF16: Bool { false }
        func multiply(_ p: GEMMProblem, a: UnsafeRawPointer, b: UnsafeRawPointer, elements: GEMMElements,
                      c: UnsafeMutablePointer<Float>) -> Bool { false }
    }
    struct NaiveBackend: GEMMBackend {
        static let name = "naive"
        static func load() -> (backend: NaiveBackend?, failure: String?) { (NaiveBackend(), nil) }
        var description: String { "naive loops" }
        var nativeBF16: Bool { false }
        func multiply(_ p: GEMMProblem, a: UnsafeRawPointer, b: UnsafeRawPointer, elements: GEMMElements,
                      c: UnsafeMutablePointer<Float>) -> Bool {
            guard elements == .f32 else { return false }
            let a = a.assumingMemoryBound(to: Float.self), b = b.assumingMemoryBound(to: Float.self)
            for i in 0..<p.m {
                for j in 0..<p.n {
                    var sum: Float = 0
                    for l in 0..<p.k {
                        sum += (p.transA == .none ? a[i * p.lda + l] : a[l * p.lda + i]) * (p.transB == .none ? b[l * p.ldb + j] : b[j * p.ldb + l])
                    }
                    c[i * p.ldc + j] = p.alpha * sum + (p.beta == 0 ? 0 : p.beta * c[i * p.ldc + j])
                }
            }
            return true
        }
    }

    /// The first backend that loads wins and the notice names each one passed over and why;
    /// FINCH_GEMM picks one by name, and an unknown name says which exist.
    func testRegistryChoosesTheFirstBackendThatLoads() {
        let chosen = GEMM.choose([MissingBackend.self, NaiveBackend.self, OpenBLASGEMM.self], forced: nil)
        XCTAssertEqual(chosen.backend.name, "naive")
        XCTAssertEqual(chosen.notice, "finch: missing not used (libmissing.so: not found); matrix products run on naive")
        XCTAssertNil(GEMM.choose([NaiveBackend.self, OpenBLASGEMM.self], forced: nil).notice)
        let forced = GEMM.choose([NaiveBackend.self, OpenBLASGEMM.self], forced: "openblas")
        XCTAssertEqual(forced.backend.name, "openblas")
        XCTAssertNil(forced.notice)
        let unknown = GEMM.choose([NaiveBackend.self, OpenBLASGEMM.self], forced: "cublas")
        XCTAssertEqual(unknown.backend.name, "naive")
        XCTAssertEqual(unknown.notice, "finch: FINCH_GEMM=cublas is not one of naive, openblas; matrix products run on naive")
        let none = GEMM.choose([MissingBackend.self], forced: nil)
        XCTAssertEqual(none.backend.name, "openblas")
        XCTAssertEqual(none.notice, "finch: missing not used (libmissing.so: not found); matrix products run on openblas")
        XCTAssertEqual(GEMM.registry.map { $0.name }, ["onednn", "openblas"])
    }

    /// Products whose rows change from call to call (the tokens routed to each expert) share one
    /// oneDNN primitive with run-time m and k from their fourth new shape on (FAMILY_RUNTIME_AFTER
    /// in onednn.c): the first three shapes get their own primitives, the later ones none, and
    /// every product equals a naive loop; rows (NT, NN) and the inner dimension (TN, the weight
    /// gradients, and TT) vary, in f32 and bf16, with alpha and beta, on all threads and inside a task.
    /// Where bf16 products run on AMX, bf16 keeps primitives per shape, these strided products
    /// run on dense copies and, from the fifth new shape, with the varying rows rounded up to a
    /// multiple of 32 (`run_amx` in onednn.c).
    func testProductsOfVaryingRowsShareOneRunTimeShapePrimitive() throws {
        guard GEMM.backend.name == OneDNNGEMM.name, let backend = OneDNNGEMM.load().backend else {
            throw XCTSkip("testProductsOfVaryingRowsShareOneRunTimeShapePrimitive: oneDNN is not loaded (\(GEMM.description))")
        }
        var rng = FinchRandom(seed: 17)
        for elements in [GEMMElements.f32, .bf16] where elements == .f32 || backend.nativeBF16 {
            for (tA, tB) in [(GEMM.Transpose.none, GEMM.Transpose.transpose), (.none, .none), (.transpose, .none), (.transpose, .transpose)] {
                for onCallingThread in [false, true] {
                    // n unique to this loop, so the family is new; what varies: m, or k for TN.
                    let kind = tA == .transpose ? (tB == .transpose ? 3 : 2) : tB == .transpose ? 1 : 0
                    let n = 40 + 3 * kind + (onCallingThread ? 20 : 0) + (elements == .bf16 ? 40 : 0)
                    let before = finch_onednn_cached_primitives()
                    for (index, size) in [7, 19, 33, 5, 64, 12, 19].enumerated() {
                        let (m, k) = tA == .transpose ? (24, size) : (size, 24)
                        let lda = tA == .none ? 30 : 29, ldb = tB == .none ? n + 2 : tA == .none ? 31 : 70, ldc = n + 1
                        let round: (Float) -> Float = elements == .bf16 ? { Self.float(Self.referenceBF16($0)) } : { $0 }
                        let a = (0..<(tA == .none ? m : k) * lda).map { _ in round(rng.nextFloat() - 0.5) }
                        let b = (0..<(tB == .none ? k : n) * ldb).map { _ in round(rng.nextFloat() - 0.5) }
                        let c0 = (0..<m * ldc).map { _ in rng.nextFloat() - 0.5 }
                        let p = GEMMProblem(transA: tA, transB: tB, m: m, n: n, k: k, alpha: 0.75, beta: 0.5, lda: lda, ldb: ldb, ldc: ldc)
                        var expected = c0, got = c0
                        XCTAssertTrue(NaiveBackend().multiply(p, a: a, b: b, elements: .f32, c: &expected))
                        func bits(_ x: [Float]) -> [UInt16] { x.map { UInt16($0.bitPattern >> 16) } }
                        let (pa, pb): ([UInt8], [UInt8]) = elements == .f32
                            ? (a.withUnsafeBytes { Array($0) }, b.withUnsafeBytes { Array($0) })
                            : (bits(a).withUnsafeBytes { Array($0) }, bits(b).withUnsafeBytes { Array($0) })
                        let ok = onCallingThread ? backend.multiplyOnCallingThread(p, a: pa, b: pb, elements: elements, c: &got)
                                                 : backend.multiply(p, a: pa, b: pb, elements: elements, c: &got)
                        XCTAssertTrue(ok, "\(elements) \(tA) \(tB) size \(size)")
                        for i in 0..<m { for j in 0..<n {
                            XCTAssertEqual(got[i * ldc + j], expected[i * ldc + j], accuracy: 1e-5,
                                           "\(elements) \(tA) \(tB) size \(size) (call \(index)) [\(i), \(j)]")
                        } }
                    }
                    // The shared cache: 3 shapes' primitives + the family's (unless it was emptied on the way);
                    // where bf16 products run on AMX, the first 4 shapes' + the family's entry, then the
                    // varying rows rounded up to 32: 64 and 12 -> 32 (the second 19 reuses its own).
                    let after = finch_onednn_cached_primitives()
                    let perShape = elements == .bf16 && finch_onednn_amx_products() == 1
                    if !onCallingThread && after >= before { XCTAssertEqual(after - before, perShape ? 7 : 4, "\(elements) \(tA) \(tB)") }
                }
            }
        }
    }

    /// Every registered backend computes the same products as a naive loop (transposes, alpha,
    /// beta, strides), and the one in use says what it is.
    func testEveryRegisteredBackendMatchesNaiveLoops() throws {
        var rng = FinchRandom(seed: 7)
        let (m, n, k) = (5, 7, 9)
        for backendType in GEMM.registry {
            guard let backend = backendType.load().backend else { continue }
            for (tA, tB) in [(GEMM.Transpose.none, GEMM.Transpose.none), (.transpose, .none), (.none, .transpose), (.transpose, .transpose)] {
                let lda = (tA == .none ? k : m) + 2, ldb = (tB == .none ? n : k) + 1, ldc = n + 3
                let a = (0..<(tA == .none ? m : k) * lda).map { _ in rng.nextFloat() - 0.5 }
                let b = (0..<(tB == .none ? k : n) * ldb).map { _ in rng.nextFloat() - 0.5 }
                let c0 = (0..<m * ldc).map { _ in rng.nextFloat() - 0.5 }
                let p = GEMMProblem(transA: tA, transB: tB, m: m, n: n, k: k, alpha: 0.75, beta: 0.5, lda: lda, ldb: ldb, ldc: ldc)
                var expected = c0, got = c0
                XCTAssertTrue(NaiveBackend().multiply(p, a: a, b: b, elements: .f32, c: &expected))
                XCTAssertTrue(backend.multiply(p, a: a, b: b, elements: .f32, c: &got), backendType.name)
                for i in 0..<m { for j in 0..<n {
                    XCTAssertEqual(got[i * ldc + j], expected[i * ldc + j], accuracy: 1e-5, "\(backendType.name) \(tA) \(tB) [\(i), \(j)]")
                } }
            }
        }
        XCTAssertFalse(GEMM.description.isEmpty)
        XCTAssertTrue(GEMM.registry.contains { $0.name == GEMM.backend.name })
    }
}
