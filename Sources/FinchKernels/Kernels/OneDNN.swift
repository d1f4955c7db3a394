import FinchCPU
import Foundation

/// oneDNN's matmul primitives (libdnnl.so.2, loaded at run time; Debian's `libdnnl-dev`): it picks
/// AVX2, AVX-512, AVX512_BF16 or AMX kernels for the CPU it runs on, within `FINCH_ISA`, and Finch's
/// C layer caches one primitive per shape.
package struct OneDNNGEMM: GEMMBackend {
    package static let name = "onednn"

    package static func load() -> (backend: OneDNNGEMM?, failure: String?) {
        let env = ProcessInfo.processInfo.environment
        // oneDNN's OpenMP threads: this process's share of the cores (ranks of mpirun split them).
        if env["OMP_NUM_THREADS"] == nil { setenv("OMP_NUM_THREADS", String(Parallel.coreCount), 1) }
        // Idle OpenMP workers spin ~300,000 rounds after each product by default, taking a core from
        // the kernels that run between products; 10,000 still catches back-to-back products
        // (ORPO step 2.9-3.1 -> 2.8 s here). A value the user set wins.
        if env["OMP_WAIT_POLICY"] == nil && env["GOMP_SPINCOUNT"] == nil { setenv("GOMP_SPINCOUNT", "10000", 1) }
        var message = [CChar](repeating: 0, count: 256)
        guard finch_onednn_load(CPU.limit?.oneDNNMaxISA ?? 0, &message, message.count) == 0 else {
            return (nil, String(cStringBuffer: message))
        }
        return (OneDNNGEMM(), nil)
    }

    package var description: String {
        let v = Int(finch_onednn_version())
        return "oneDNN \(v / 10000).\(v / 100 % 100).\(v % 100) (\(Self.isaName(finch_onednn_effective_isa()))), "
            + "\(ProcessInfo.processInfo.environment["OMP_NUM_THREADS"] ?? "?") threads"
    }

    /// oneDNN dispatches to AVX512_BF16 (0xe7) or above, and the CPU has it within `FINCH_ISA`.
    package var nativeBF16: Bool { CPU.hasNativeBF16 && finch_onednn_effective_isa() >= 0xe7 }

    package func multiply(_ p: GEMMProblem, a: UnsafeRawPointer, b: UnsafeRawPointer, elements: GEMMElements,
                          c: UnsafeMutablePointer<Float>) -> Bool {
        p.m > 0 && p.n > 0 && p.k > 0
            && finch_onednn_matmul(p.transA == .transpose ? 1 : 0, p.transB == .transpose ? 1 : 0, Int64(p.m), Int64(p.n), Int64(p.k),
                                   p.alpha, a, Int64(p.lda), b, Int64(p.ldb), Int32(elements == .f32 ? FINCH_F32 : FINCH_BF16),
                                   p.beta, c, Int64(p.ldc)) == 0
    }

    package func multiplyOnCallingThread(_ p: GEMMProblem, a: UnsafeRawPointer, b: UnsafeRawPointer, elements: GEMMElements,
                                         c: UnsafeMutablePointer<Float>) -> Bool {
        p.m > 0 && p.n > 0 && p.k > 0 && (elements == .f32 || nativeBF16)
            && finch_onednn_task_matmul(p.transA == .transpose ? 1 : 0, p.transB == .transpose ? 1 : 0, Int64(p.m), Int64(p.n), Int64(p.k),
                                        p.alpha, a, Int64(p.lda), b, Int64(p.ldb), Int32(elements == .bf16 ? FINCH_BF16 : FINCH_F32),
                                        p.beta, c, Int64(p.ldc)) == 0
    }

    /// On oneDNN's OpenMP threads: converting on Dispatch threads fought the spinning OpenMP
    /// workers (a 7% slower step).
    package func convertToBF16(_ src: UnsafePointer<Float>, ld: Int, into dst: UnsafeMutablePointer<UInt16>, rows: Int, columns: Int) {
        finch_onednn_to_bf16_rows(src, ld, dst, rows, columns)
    }

    static func isaName(_ isa: UInt32) -> String {
        switch isa {
        case 0x1: "sse41"
        case 0x3: "avx"
        case 0x7: "avx2"
        case 0x407: "avx2_vnni"
        case 0x27: "avx512_core"
        case 0x67: "avx512_core_vnni"
        case 0xe7: "avx512_core_bf16"
        case 0x3e7, 0x1e7: "avx512_core_amx"
        default: String(format: "isa 0x%x", isa)
        }
    }
}
