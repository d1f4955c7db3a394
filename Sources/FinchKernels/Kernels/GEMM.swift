import FinchCPU
import Foundation

/// How the matrix products of the base model compute.
///
/// bf16 has one definition everywhere: the product of bf16-rounded inputs, accumulated in fp32,
/// with an fp32 result. Where the CPU computes bf16 natively (AVX512_BF16, AMX) oneDNN runs it;
/// elsewhere the inputs are rounded (activations) or widened (bf16 weights) to fp32 tile by tile
/// and the fp32 GEMM runs them, which gives the same numbers up to the order of summation.
public enum Precision: String, Sendable, CaseIterable, Codable {
    case fp32, bf16
}

/// `--precision`: a precision, or `auto` (bf16 where the CPU computes it natively, as TRL's
/// `bf16=True` default does on hardware that supports it; fp32 elsewhere).
public enum PrecisionChoice: String, Sendable, CaseIterable, Codable {
    case auto, fp32, bf16

    /// The precision to run with and why.
    public func resolved() -> (precision: Precision, reason: String) {
        switch self {
        case .fp32: return (.fp32, "--precision fp32")
        case .bf16:
            return (.bf16, GEMM.nativeBF16 ? "--precision bf16 (native: \(GEMM.description))"
                                          : "--precision bf16 (no native bf16 here: bf16-rounded inputs through the fp32 GEMM)")
        case .auto:
            if GEMM.nativeBF16 { return (.bf16, "auto: this CPU computes bf16 natively (\(CPU.level.name), \(GEMM.backend.name))") }
            let why = !CPU.hasNativeBF16 ? "this CPU has no AVX512_BF16 or AMX" + (CPU.limit.map { " within FINCH_ISA=\($0.name)" } ?? "")
                                         : "matrix products run on \(GEMM.backend.name), which has no native bf16"
            return (.fp32, "auto: \(why)")
        }
    }
}

/// A matrix operand of a product: f32, or bf16 (raw 16-bit patterns).
package enum GEMMOperand {
    case f32(UnsafePointer<Float>)
    case bf16(UnsafePointer<UInt16>)
    /// An f32 matrix and its bf16 copy in the same layout (`GEMM.withBF16Copy`): native bf16
    /// products read the copy, every other product the f32 values.
    case f32WithCopy(UnsafePointer<Float>, UnsafePointer<UInt16>)

    /// `.f32(x)`, or `.f32WithCopy` when x has a copy.
    static package func f32(_ x: UnsafePointer<Float>, copy: UnsafePointer<UInt16>?) -> GEMMOperand {
        copy.map { .f32WithCopy(x, $0) } ?? .f32(x)
    }

    /// The f32 values, where the operand has them.
    var f32Values: UnsafePointer<Float>? {
        switch self {
        case let .f32(p), let .f32WithCopy(p, _): return p
        case .bf16: return nil
        }
    }
}

/// Matrix products of the model, on the backend `registry` chooses at run time: oneDNN's matmul
/// primitives where libdnnl is present (ISA chosen at run time, primitives cached per shape),
/// OpenBLAS otherwise. `FINCH_GEMM=openblas` forces OpenBLAS.
package enum GEMM {
    package typealias Transpose = BLAS.Transpose

    /// The backend every product runs on (see `registry`).
    package static var backend: any GEMMBackend { loaded.backend }

    /// Tests set it to run bf16 products on the portable path where the native one exists.
    nonisolated(unsafe) static var portableBF16 = false

    /// Prints the notice once when a preferred backend could not be loaded.
    package static func reportBackend() {
        if let notice = loaded.notice { FileHandle.standardError.write(Data((notice + "\n").utf8)) }
    }

    /// bf16 products run natively (AVX512_BF16 or AMX through oneDNN).
    package static var nativeBF16: Bool { backend.nativeBF16 }

    /// One line: the backend, its version and ISA, and the threads.
    package static var description: String { backend.description }

    /// Time and FLOPs per kind of product, when `profiling` is on (`finch bench step --profile`).
    package final class Profile: @unchecked Sendable {
        let lock = NSLock()
        var entries: [String: (calls: Int, seconds: Double, flops: Double)] = [:]
        package init() {}
        func add(_ key: String, _ seconds: Double, _ flops: Double) {
            lock.lock(); defer { lock.unlock() }
            let e = entries[key] ?? (0, 0, 0)
            entries[key] = (e.calls + 1, e.seconds + seconds, e.flops + flops)
        }
        /// Lines "key: calls, seconds, GFLOP/s", slowest first.
        package func report() -> [String] {
            lock.lock(); defer { lock.unlock() }
            return entries.sorted { $0.value.seconds > $1.value.seconds }.map {
                String(format: "%@: %d calls, %.3f s, %.1f GFLOP/s", $0.key, $0.value.calls, $0.value.seconds, $0.value.flops / max($0.value.seconds, 1e-12) / 1e9)
            }
        }
        package func reset() { lock.lock(); entries = [:]; lock.unlock() }
    }
    nonisolated(unsafe) package static var profile: Profile?

    /// Runs `body`, adding its time under `key` when profiling (products, and whole kernels
    /// such as attention, whose products run inside tasks).
    @inline(__always)
    package static func timed(_ key: @autoclosure () -> String, flops: Double, _ body: () -> Void) {
        guard let profile else { body(); return }
        let start = MonotonicClock.now()
        body()
        profile.add(key(), MonotonicClock.now() - start, flops)
    }

    static func shapeKey(_ kind: String, _ tA: Transpose, _ tB: Transpose, _ m: Int, _ n: Int, _ k: Int) -> String {
        "\(kind) \(tA == .none ? "N" : "T")\(tB == .none ? "N" : "T") \(m)x\(n)x\(k)"
    }

    /// fp32 C[m, n] = alpha * op(A) op(B) + beta * C, all row-major; `op(A)` is [m, k], `op(B)` [k, n].
    package static func sgemm(_ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
                             alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                             b: UnsafePointer<Float>, ldb: Int,
                             beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        timed(shapeKey("fp32", transA, transB, m, n, k), flops: 2 * Double(m) * Double(n) * Double(k)) {
            sgemmUntimed(transA, transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
        }
    }

    /// fp32 product on the calling thread alone, inside Finch's own parallel tasks (attention's
    /// per-head blocks): on the backend where it can (oneDNN keeps each thread's own primitives, so
    /// tasks run concurrently), else OpenBLAS (single-threaded by the caller).
    package static func taskSGEMM(_ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
                                 alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                                 b: UnsafePointer<Float>, ldb: Int,
                                 beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        let p = GEMMProblem(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, beta: beta, lda: lda, ldb: ldb, ldc: ldc)
        if taskProductsOnOpenBLAS || !backend.multiplyOnCallingThread(p, a: a, b: b, elements: .f32, c: c) { BLAS.sgemm(p, a: a, b: b, c: c) }
    }

    /// bf16 x bf16 -> f32 product on the calling thread alone (attention's per-task products
    /// under bf16 mixed precision): natively where the backend computes bf16, else both inputs
    /// widened to f32 (the same values) and `taskSGEMM`, which gives the same numerics.
    package static func taskBF16GEMM(_ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
                                    alpha: Float = 1, a: UnsafePointer<UInt16>, lda: Int,
                                    b: UnsafePointer<UInt16>, ldb: Int,
                                    beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        let p = GEMMProblem(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, beta: beta, lda: lda, ldb: ldb, ldc: ldc)
        if !taskProductsOnOpenBLAS && !portableBF16 && backend.multiplyOnCallingThread(p, a: a, b: b, elements: .bf16, c: c) { return }
        // Stored shapes: A is [m, k] or, transposed, [k, m]; B is [k, n] or [n, k].
        let (aRows, aColumns) = transA == .none ? (m, k) : (k, m)
        let (bRows, bColumns) = transB == .none ? (k, n) : (n, k)
        let wideA = UnsafeMutablePointer<Float>.allocate(capacity: aRows * lda)
        let wideB = UnsafeMutablePointer<Float>.allocate(capacity: bRows * ldb)
        defer { wideA.deallocate(); wideB.deallocate() }
        for r in 0..<aRows { BFloat16.convert(a + r * lda, to: wideA + r * lda, count: aColumns) }
        for r in 0..<bRows { BFloat16.convert(b + r * ldb, to: wideB + r * ldb, count: bColumns) }
        taskSGEMM(transA, transB, m: m, n: n, k: k, alpha: alpha, a: wideA, lda: lda, b: wideB, ldb: ldb, beta: beta, c: c, ldc: ldc)
    }

    /// `FINCH_TASK_GEMM=openblas`: attention's per-task products on OpenBLAS, for comparison.
    static let taskProductsOnOpenBLAS = ProcessInfo.processInfo.environment["FINCH_TASK_GEMM"]?.lowercased() == "openblas"

    private static func sgemmUntimed(_ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
                                     alpha: Float, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                                     beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        let p = GEMMProblem(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, beta: beta, lda: lda, ldb: ldb, ldc: ldc)
        if !backend.multiply(p, a: a, b: b, elements: .f32, c: c) { BLAS.sgemm(p, a: a, b: b, c: c) }
    }

    /// C[m, n] = alpha * op(A) op(B) + beta * C with fp32 accumulation and result, each operand
    /// f32 or bf16. In `.bf16` precision the inputs are rounded to bf16 (see `Precision`); in
    /// `.fp32` bf16 operands are widened exactly.
    static package func multiply(_ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int, alpha: Float = 1,
                         a: GEMMOperand, lda: Int, b: GEMMOperand, ldb: Int, beta: Float = 0,
                         c: UnsafeMutablePointer<Float>, ldc: Int, precision: Precision) {
        guard m > 0, n > 0 else { return }
        // The stored shapes: A is [m, k] or, transposed, [k, m]; B is [k, n] or [n, k].
        let aRows = transA == .none ? m : k, aColumns = transA == .none ? k : m
        let bRows = transB == .none ? k : n, bColumns = transB == .none ? n : k
        if precision == .fp32, let fa = a.f32Values, let fb = b.f32Values {
            sgemm(transA, transB, m: m, n: n, k: k, alpha: alpha, a: fa, lda: lda, b: fb, ldb: ldb, beta: beta, c: c, ldc: ldc)
            return
        }
        timed(shapeKey("bf16", transA, transB, m, n, k), flops: 2 * Double(m) * Double(n) * Double(k)) {
            multiplyMixed(transA, transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc,
                          precision: precision, aRows: aRows, aColumns: aColumns, bRows: bRows, bColumns: bColumns)
        }
    }

    private static func multiplyMixed(_ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int, alpha: Float,
                                      a: GEMMOperand, lda: Int, b: GEMMOperand, ldb: Int, beta: Float,
                                      c: UnsafeMutablePointer<Float>, ldc: Int, precision: Precision,
                                      aRows: Int, aColumns: Int, bRows: Int, bColumns: Int) {
        scratch.lock.lock()
        defer { scratch.lock.unlock() }
        if precision == .bf16 && nativeBF16 && !portableBF16 && k > 0 {
            let (pa, lda2) = bf16Operand(a, rows: aRows, columns: aColumns, ld: lda, into: &scratch.a)
            let (pb, ldb2) = bf16Operand(b, rows: bRows, columns: bColumns, ld: ldb, into: &scratch.b)
            let p = GEMMProblem(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, beta: beta, lda: lda2, ldb: ldb2, ldc: ldc)
            if backend.multiply(p, a: pa, b: pb, elements: .bf16, c: c) { return }
        }
        // The portable path: f32 operands, bf16-rounded in bf16 precision, bf16 ones widened.
        let (fa, lda3) = f32Operand(a, rows: aRows, columns: aColumns, ld: lda, round: precision == .bf16, into: &scratch.a)
        let (fb, ldb3) = f32Operand(b, rows: bRows, columns: bColumns, ld: ldb, round: precision == .bf16, into: &scratch.b)
        sgemmUntimed(transA, transB, m: m, n: n, k: k, alpha: alpha, a: fa, lda: lda3, b: fb, ldb: ldb3, beta: beta, c: c, ldc: ldc)
    }

    /// Calls `body` with a bf16 copy of x [rows, ld] in the same layout when bf16 products run
    /// natively in `precision` (nil otherwise, and for a nil x), for several products that read x:
    /// each product would convert x on its own, and q, k, v with their LoRA pairs read it six times.
    static package func withBF16Copy<R>(of x: UnsafePointer<Float>?, rows: Int, ld: Int, precision: Precision,
                                _ body: (UnsafePointer<UInt16>?) -> R) -> R {
        guard let x, precision == .bf16, nativeBF16, !portableBF16, rows > matVecMaxVectors else { return body(nil) }
        let copy = UnsafeMutablePointer<UInt16>.allocate(capacity: rows * ld)
        defer { copy.deallocate() }
        backend.convertToBF16(x, ld: ld, into: copy, rows: rows, columns: ld)
        return body(copy)
    }

    /// Conversion buffers, reused (products run one at a time; the lock makes sure of it).
    final class Scratch: @unchecked Sendable {
        let lock = NSLock()
        var a = ScratchBuffer(), b = ScratchBuffer()
    }
    struct ScratchBuffer {
        var pointer: UnsafeMutableRawPointer?
        var bytes = 0
        mutating func reserve(_ count: Int) -> UnsafeMutableRawPointer {
            if count > bytes {
                pointer?.deallocate()
                pointer = .allocate(byteCount: count, alignment: 64)
                bytes = count
            }
            return pointer!
        }
    }
    static let scratch = Scratch()

    private static func bf16Operand(_ x: GEMMOperand, rows: Int, columns: Int, ld: Int,
                                    into buffer: inout ScratchBuffer) -> (UnsafeRawPointer, Int) {
        switch x {
        case let .bf16(p), let .f32WithCopy(_, p): return (UnsafeRawPointer(p), ld)
        case let .f32(p):
            let dst = buffer.reserve(rows * columns * 2).assumingMemoryBound(to: UInt16.self)
            backend.convertToBF16(p, ld: ld, into: dst, rows: rows, columns: columns)
            return (UnsafeRawPointer(dst), columns)
        }
    }

    private static func f32Operand(_ x: GEMMOperand, rows: Int, columns: Int, ld: Int, round: Bool,
                                   into buffer: inout ScratchBuffer) -> (UnsafePointer<Float>, Int) {
        switch x {
        case let .f32(p), let .f32WithCopy(p, _):
            guard round else { return (p, ld) }
            let dst = buffer.reserve(rows * columns * 4).assumingMemoryBound(to: Float.self)
            for r in 0..<rows { BFloat16.round(p + r * ld, to: dst + r * columns, count: columns) }
            return (UnsafePointer(dst), columns)
        case let .bf16(p):
            let dst = buffer.reserve(rows * columns * 4).assumingMemoryBound(to: Float.self)
            for r in 0..<rows { BFloat16.convert(p + r * ld, to: dst + r * columns, count: columns) }
            return (UnsafePointer(dst), columns)
        }
    }
}
