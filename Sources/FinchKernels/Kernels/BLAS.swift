import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Single-precision GEMM through OpenBLAS, loaded at run time.
///
/// Debian's OpenBLAS 0.3.21 does not recognise recent CPUs and falls back to its slow
/// "Prescott" kernels. It reads `OPENBLAS_CORETYPE` when the library is loaded, so Finch
/// does not link it: it picks the core type from the CPU's features, sets the variable
/// (a value the user set wins) and only then `dlopen`s the library.
package enum BLAS {
    package enum Transpose: Sendable { case none, transpose }

    typealias SgemmFunction = @convention(c) (
        Int32, Int32, Int32, Int32, Int32, Int32, Float,
        UnsafePointer<Float>?, Int32, UnsafePointer<Float>?, Int32, Float,
        UnsafeMutablePointer<Float>?, Int32) -> Void
    typealias SetThreadsFunction = @convention(c) (Int32) -> Void
    typealias GetConfigFunction = @convention(c) () -> UnsafePointer<CChar>?

    typealias GetThreadsFunction = @convention(c) () -> Int32

    struct Library {
        let sgemm: SgemmFunction
        let setThreads: SetThreadsFunction?
        let getThreads: GetThreadsFunction?
        let config: String
        let coreType: String?
    }

    static let library: Library = load()

    /// The kernel family chosen for this CPU, from its feature flags.
    static func coreTypeForThisCPU() -> String? {
        guard let cpuinfo = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let flagsLine = cpuinfo.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return nil }
        let flags = Set(flagsLine.split(separator: " ").map(String.init))
        if flags.contains("avx512_bf16") { return "Cooperlake" }
        if flags.contains("avx512f") && flags.contains("avx512vl") { return "SkylakeX" }
        if flags.contains("avx2") && flags.contains("fma") { return "Haswell" }
        return nil
    }

    static func load() -> Library {
        var coreType = ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"]
        if coreType == nil, let chosen = coreTypeForThisCPU() {
            setenv("OPENBLAS_CORETYPE", chosen, 1)
            coreType = chosen
        }
        // OpenBLAS's idle workers spin for ~2^28 cycles after each call, stealing a core from the
        // parallel loops that run between GEMMs; 2^4 cycles makes them sleep at once (20% faster steps here).
        if ProcessInfo.processInfo.environment["OPENBLAS_THREAD_TIMEOUT"] == nil { setenv("OPENBLAS_THREAD_TIMEOUT", "4", 1) }
        let candidates = ["libopenblas.so.0", "libopenblas.so", "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
                          "/usr/lib/aarch64-linux-gnu/libopenblas.so.0"]
        for name in candidates {
            guard let handle = dlopen(name, RTLD_NOW | RTLD_LOCAL),
                  let sgemm = dlsym(handle, "cblas_sgemm") else { continue }
            let setThreads = dlsym(handle, "openblas_set_num_threads").map { unsafeBitCast($0, to: SetThreadsFunction.self) }
            let config = dlsym(handle, "openblas_get_config")
                .map { unsafeBitCast($0, to: GetConfigFunction.self) }
                .flatMap { $0() }.map { String(cString: $0) } ?? "unknown"
            let getThreads = dlsym(handle, "openblas_get_num_threads").map { unsafeBitCast($0, to: GetThreadsFunction.self) }
            return Library(sgemm: unsafeBitCast(sgemm, to: SgemmFunction.self), setThreads: setThreads, getThreads: getThreads,
                           config: config, coreType: coreType)
        }
        fatalError("Finch needs OpenBLAS: libopenblas.so.0 was not found. Install it with `apt-get install libopenblas0-pthread` (scripts/setup.sh does).")
    }

    /// A one-line description of the loaded library and its kernel, for benchmarks and logs.
    package static var description: String {
        "OpenBLAS \(library.config), OPENBLAS_CORETYPE=\(library.coreType ?? "auto"), \(library.getThreads?() ?? 0) threads"
    }

    package static func setThreadCount(_ n: Int) { library.setThreads?(Int32(n)) }

    /// C[m, n] = alpha * op(A) op(B) + beta * C, all row-major. `op(A)` is [m, k], `op(B)` is [k, n].
    @inline(__always)
    package static func sgemm(_ transA: Transpose, _ transB: Transpose, m: Int, n: Int, k: Int,
                             alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                             b: UnsafePointer<Float>, ldb: Int,
                             beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        guard m > 0, n > 0 else { return }
        if k == 0 {
            if beta == 0 { for i in 0..<m { (c + i * ldc).update(repeating: 0, count: n) } }
            else if beta != 1 { for i in 0..<m { for j in 0..<n { c[i * ldc + j] *= beta } } }
            return
        }
        // CBLAS enums: RowMajor = 101, NoTrans = 111, Trans = 112.
        library.sgemm(101, transA == .none ? 111 : 112, transB == .none ? 111 : 112,
                      Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// The product `p` describes, f32.
    @inline(__always)
    package static func sgemm(_ p: GEMMProblem, a: UnsafePointer<Float>, b: UnsafePointer<Float>, c: UnsafeMutablePointer<Float>) {
        sgemm(p.transA, p.transB, m: p.m, n: p.n, k: p.k, alpha: p.alpha, a: a, lda: p.lda, b: b, ldb: p.ldb, beta: p.beta, c: c, ldc: p.ldc)
    }
}

/// OpenBLAS as a GEMM backend: f32 products only (bf16 inputs are widened first), and the last
/// resort of every product.
package struct OpenBLASGEMM: GEMMBackend {
    package static let name = "openblas"
    package static func load() -> (backend: OpenBLASGEMM?, failure: String?) { (OpenBLASGEMM(), nil) }
    package var description: String { BLAS.description }
    package var nativeBF16: Bool { false }

    package func multiply(_ p: GEMMProblem, a: UnsafeRawPointer, b: UnsafeRawPointer, elements: GEMMElements,
                          c: UnsafeMutablePointer<Float>) -> Bool {
        guard elements == .f32 else { return false }
        BLAS.sgemm(p, a: a.assumingMemoryBound(to: Float.self), b: b.assumingMemoryBound(to: Float.self), c: c)
        return true
    }
}
