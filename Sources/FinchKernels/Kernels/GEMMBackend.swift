import Foundation

/// The shape of one product C[m, n] = alpha * op(A) op(B) + beta * C, all row-major: `op(A)` is
/// [m, k] (A^T when `transA`), `op(B)` is [k, n]; `lda`, `ldb`, `ldc` are row strides in elements.
package struct GEMMProblem: Sendable {
    package var transA: GEMM.Transpose, transB: GEMM.Transpose
    package var m: Int, n: Int, k: Int
    package var alpha: Float, beta: Float
    package var lda: Int, ldb: Int, ldc: Int
}

/// The element type of both inputs of a product (the result is always f32).
package enum GEMMElements: Sendable { case f32, bf16 }

/// A library that computes matrix products: oneDNN and OpenBLAS today, a GPU library later.
///
/// To add one: a type conforming to this protocol and its entry in `GEMM.registry`. `GEMM`
/// dispatches every product of the model to the first backend of the registry that loads
/// (`FINCH_GEMM=name` picks one), and falls back to OpenBLAS for a product the backend declines.
package protocol GEMMBackend: Sendable {
    /// The name `FINCH_GEMM` selects it by, lower-case.
    static var name: String { get }
    /// Loads the library, or says in `failure` why it cannot be used here.
    static func load() -> (backend: Self?, failure: String?)
    /// One line: the library, its version, ISA and threads.
    var description: String { get }
    /// Whether bf16 x bf16 products run in bf16 hardware (AVX512_BF16, AMX, a GPU) rather than
    /// being widened to f32 first.
    var nativeBF16: Bool { get }
    /// C = alpha op(A) op(B) + beta C over all of this process's cores, inputs of type `elements`.
    /// Returns false when this backend cannot compute it (the caller then widens and uses OpenBLAS).
    func multiply(_ p: GEMMProblem, a: UnsafeRawPointer, b: UnsafeRawPointer, elements: GEMMElements,
                  c: UnsafeMutablePointer<Float>) -> Bool
    /// A product on the calling thread alone, inside Finch's own parallel tasks (attention's
    /// per-head blocks), so that several run at once; inputs of type `elements`. Returns false
    /// when not supported.
    func multiplyOnCallingThread(_ p: GEMMProblem, a: UnsafeRawPointer, b: UnsafeRawPointer, elements: GEMMElements,
                                 c: UnsafeMutablePointer<Float>) -> Bool
    /// Rounds `rows` x `columns` f32 values (row stride `ld`) to bf16 into `dst` (stride `columns`).
    func convertToBF16(_ src: UnsafePointer<Float>, ld: Int, into dst: UnsafeMutablePointer<UInt16>, rows: Int, columns: Int)
}

extension GEMMBackend {
    package var name: String { Self.name }

    package func multiplyOnCallingThread(_ p: GEMMProblem, a: UnsafeRawPointer, b: UnsafeRawPointer, elements: GEMMElements,
                                         c: UnsafeMutablePointer<Float>) -> Bool { false }

    package func convertToBF16(_ src: UnsafePointer<Float>, ld: Int, into dst: UnsafeMutablePointer<UInt16>, rows: Int, columns: Int) {
        for r in 0..<rows { BFloat16.convert(src + r * ld, to: dst + r * columns, count: columns) }
    }
}

extension GEMM {
    /// The backends in order of preference.
    package static let registry: [any GEMMBackend.Type] = [OneDNNGEMM.self, OpenBLASGEMM.self]

    /// The backend of every product, and a notice when a preferred one could not be loaded.
    static let loaded: (backend: any GEMMBackend, notice: String?) = choose(
        registry, forced: ProcessInfo.processInfo.environment["FINCH_GEMM"]?.lowercased())

    /// The first backend of `candidates` that loads, or the one named `forced`. OpenBLAS, the
    /// last resort, is always there (`BLAS` stops the program with an install hint when it is not).
    static func choose(_ candidates: [any GEMMBackend.Type], forced: String?) -> (backend: any GEMMBackend, notice: String?) {
        var failures: [String] = []
        var order = candidates
        if let forced {
            if let chosen = candidates.first(where: { $0.name == forced }) { order = [chosen] }
            else { failures.append("FINCH_GEMM=\(forced) is not one of \(candidates.map { $0.name }.joined(separator: ", "))") }
        }
        for candidate in order {
            let (backend, failure) = candidate.load()
            if let backend {
                return (backend, failures.isEmpty ? nil : "finch: \(failures.joined(separator: "; ")); matrix products run on \(backend.name)")
            }
            failures.append("\(candidate.name) not used (\(failure ?? "it did not load"))")
        }
        return (OpenBLASGEMM(), "finch: \(failures.joined(separator: "; ")); matrix products run on \(OpenBLASGEMM.name)")
    }
}
