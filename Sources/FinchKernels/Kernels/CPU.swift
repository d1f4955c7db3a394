import FinchCPU
import Foundation

/// The instruction sets of the CPU running Finch (cpuid), limited by `FINCH_ISA` when set.
///
/// Every kernel that needs more than the x86-64 baseline checks these at run time, so one
/// binary uses AVX-512 and bf16 where the CPU has them and AVX2 elsewhere. `FINCH_ISA=avx2`
/// (or `avx512`, `avx512_vnni`, `avx512_bf16`, `amx`, `native`) forces a lower path, to test it
/// or to compare: oneDNN is capped at that ISA and Finch's own kernels use nothing above it.
public struct CPUFeatures: OptionSet, Sendable, CustomStringConvertible {
    /// Bit set of `FINCH_CPU_*` flags, as `finch_cpu_features()` returns them.
    public let rawValue: UInt32
    /// Features from `FINCH_CPU_*` bits.
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// 256-bit integer and float vectors; with FMA and F16C, Finch's vector kernels' minimum.
    public static let avx2 = CPUFeatures(rawValue: UInt32(FINCH_CPU_AVX2))
    /// Fused multiply-add.
    public static let fma = CPUFeatures(rawValue: UInt32(FINCH_CPU_FMA))
    /// Hardware f16 <-> f32 conversion.
    public static let f16c = CPUFeatures(rawValue: UInt32(FINCH_CPU_F16C))
    /// AVX-512 foundation; the `avx512` level also needs DQ, BW and VL.
    public static let avx512f = CPUFeatures(rawValue: UInt32(FINCH_CPU_AVX512F))
    /// AVX-512 doubleword and quadword instructions.
    public static let avx512dq = CPUFeatures(rawValue: UInt32(FINCH_CPU_AVX512DQ))
    /// AVX-512 byte and word instructions.
    public static let avx512bw = CPUFeatures(rawValue: UInt32(FINCH_CPU_AVX512BW))
    /// AVX-512 instructions on 128- and 256-bit vectors.
    public static let avx512vl = CPUFeatures(rawValue: UInt32(FINCH_CPU_AVX512VL))
    /// AVX-512 int8 dot products (quantized products).
    public static let avx512vnni = CPUFeatures(rawValue: UInt32(FINCH_CPU_AVX512VNNI))
    /// AVX-512 bf16 dot products and conversion: native bf16 arithmetic.
    public static let avx512bf16 = CPUFeatures(rawValue: UInt32(FINCH_CPU_AVX512BF16))
    /// VEX-encoded int8 dot products on 256-bit vectors (allowed from the avx2 level).
    public static let avxvnni = CPUFeatures(rawValue: UInt32(FINCH_CPU_AVXVNNI))
    /// AMX tile registers (Sapphire Rapids and later), enabled by the OS.
    public static let amxTile = CPUFeatures(rawValue: UInt32(FINCH_CPU_AMX_TILE))
    /// AMX bf16 tile products; also counts as native bf16.
    public static let amxBF16 = CPUFeatures(rawValue: UInt32(FINCH_CPU_AMX_BF16))

    static let names: [(CPUFeatures, String)] = [
        (.avx2, "AVX2"), (.fma, "FMA"), (.f16c, "F16C"), (.avx512f, "AVX512F"), (.avx512dq, "AVX512DQ"),
        (.avx512bw, "AVX512BW"), (.avx512vl, "AVX512VL"), (.avx512vnni, "AVX512_VNNI"), (.avx512bf16, "AVX512_BF16"),
        (.avxvnni, "AVX_VNNI"), (.amxTile, "AMX_TILE"), (.amxBF16, "AMX_BF16"),
    ]

    public var description: String {
        let present = Self.names.filter { contains($0.0) }.map(\.1)
        return present.isEmpty ? "baseline x86-64" : present.joined(separator: " ")
    }
}

/// A level of instruction sets, from the lowest Finch runs to the highest it uses.
public enum ISALevel: Int, Comparable, Sendable, CaseIterable {
    case portable, avx2, avx512, avx512VNNI, avx512BF16, amx

    /// Lower levels use fewer instruction sets: portable < avx2 < ... < amx.
    public static func < (a: ISALevel, b: ISALevel) -> Bool { a.rawValue < b.rawValue }

    /// `FINCH_ISA` spellings.
    public init?(name: String) {
        switch name.lowercased().replacingOccurrences(of: "-", with: "_") {
        case "portable", "baseline", "sse": self = .portable
        case "avx2": self = .avx2
        case "avx512", "avx512_core": self = .avx512
        case "avx512_vnni", "vnni": self = .avx512VNNI
        case "avx512_bf16", "bf16": self = .avx512BF16
        case "amx", "native", "all": self = .amx
        default: return nil
        }
    }

    /// The canonical `FINCH_ISA` spelling of the level.
    public var name: String {
        switch self {
        case .portable: "portable"
        case .avx2: "avx2"
        case .avx512: "avx512"
        case .avx512VNNI: "avx512_vnni"
        case .avx512BF16: "avx512_bf16"
        case .amx: "amx"
        }
    }

    /// The features a CPU at this level may use.
    var allowed: CPUFeatures {
        var f: CPUFeatures = []
        if self >= .avx2 { f.formUnion([.avx2, .fma, .f16c, .avxvnni]) }
        if self >= .avx512 { f.formUnion([.avx512f, .avx512dq, .avx512bw, .avx512vl]) }
        if self >= .avx512VNNI { f.insert(.avx512vnni) }
        if self >= .avx512BF16 { f.insert(.avx512bf16) }
        if self >= .amx { f.formUnion([.amxTile, .amxBF16]) }
        return f
    }

    /// The highest level these features reach.
    static func of(_ f: CPUFeatures) -> ISALevel {
        guard f.isSuperset(of: [.avx2, .fma, .f16c]) else { return .portable }
        guard f.isSuperset(of: [.avx512f, .avx512bw, .avx512vl, .avx512dq]) else { return .avx2 }
        guard f.contains(.avx512vnni) else { return .avx512 }
        guard f.contains(.avx512bf16) else { return .avx512VNNI }
        return f.isSuperset(of: [.amxTile, .amxBF16]) ? .amx : .avx512BF16
    }

    /// oneDNN's `dnnl_cpu_isa_t` cap for this level (0: no cap).
    var oneDNNMaxISA: UInt32 {
        switch self {
        case .portable: 0x1          // sse41
        case .avx2: 0x7
        case .avx512: 0x27           // avx512_core
        case .avx512VNNI: 0x67       // avx512_core_vnni
        case .avx512BF16: 0xe7       // avx512_core_bf16
        case .amx: 0
        }
    }
}

/// The CPU Finch runs on, detected once per process: features, level, name.
public enum CPU {
    /// What cpuid reports (and the OS enabled).
    public static let detected = CPUFeatures(rawValue: finch_cpu_features())

    /// The `FINCH_ISA` limit, if set and valid.
    public static let limit: ISALevel? = {
        guard let value = ProcessInfo.processInfo.environment["FINCH_ISA"], !value.isEmpty else { return nil }
        guard let level = ISALevel(name: value) else {
            FileHandle.standardError.write(Data("finch: ignoring FINCH_ISA=\(value): use portable, avx2, avx512, avx512_vnni, avx512_bf16 or amx\n".utf8))
            return nil
        }
        return level
    }()

    /// The features Finch uses: those detected, less those above `FINCH_ISA`.
    public static let features: CPUFeatures = limit.map { detected.intersection($0.allowed) } ?? detected

    /// The level Finch runs at.
    public static var level: ISALevel { ISALevel.of(features) }

    /// The CPU's model name, e.g. "AMD EPYC 9R14 96-Core Processor".
    public static let modelName: String = {
        var buffer = [CChar](repeating: 0, count: 64)
        finch_cpu_brand(&buffer, buffer.count)
        let brand = String(cStringBuffer: buffer)
        if !brand.isEmpty { return brand }
        if let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
           let line = info.split(separator: "\n").first(where: { $0.hasPrefix("model name") }),
           let colon = line.firstIndex(of: ":") {
            return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return "unknown CPU"
    }()

    /// One line: model, features, and the limit if any.
    public static var description: String {
        var s = "\(modelName): \(features)"
        if let limit { s += " (FINCH_ISA=\(limit.name); detected: \(detected))" }
        return s
    }

    /// bf16 arithmetic in hardware (AVX512_BF16 or AMX), within the limit.
    public static var hasNativeBF16: Bool { features.contains(.avx512bf16) || features.contains(.amxBF16) }

    /// The highest kernel level of FinchCPU's C loops that `level` allows: 0 portable, 1 AVX2,
    /// 2 AVX-512 (each file takes what the CPU also has).
    private static var kernelLevelCap: Int32 {
        switch level {
        case .portable: 0
        case .avx2: 1
        case .avx512, .avx512VNNI, .avx512BF16, .amx: 2
        }
    }

    /// Chooses the bf16 conversion kernels; called once before the first conversion.
    static let bf16Level: Int = Int(finch_bf16_set_level(kernelLevelCap, features.rawValue))

    /// Chooses the vector loops of FinchCPU/vector.c (exp, SwiGLU, matrix-vector products,
    /// decoding attention): AVX2 + FMA + F16C, with the exp loops on AVX-512F where the CPU has it
    /// (the same numbers, 16 lanes at a time), or portable C under FINCH_ISA=portable or on a CPU
    /// without them. Touched before the first call of each kind; tests set a lower level with
    /// `finch_vector_set_level` and restore this one.
    static let vectorLevel: Int = Int(finch_vector_set_level(kernelLevelCap, features.rawValue))
}

/// bf16 (the upper half of an f32) conversions, rounding to nearest even as PyTorch does.
package enum BFloat16 {
    /// f32 to bf16 bit patterns, round to nearest even; `dst` holds `count` values.
    public static func convert(_ src: UnsafePointer<Float>, to dst: UnsafeMutablePointer<UInt16>, count: Int) {
        _ = CPU.bf16Level
        finch_f32_to_bf16(src, dst, count)
    }

    /// bf16 bit patterns to f32 (exact).
    public static func convert(_ src: UnsafePointer<UInt16>, to dst: UnsafeMutablePointer<Float>, count: Int) {
        _ = CPU.bf16Level
        finch_bf16_to_f32(src, dst, count)
    }

    /// dst = f32(bf16(src)): the values a bf16 product sees (dst may be src).
    public static func round(_ src: UnsafePointer<Float>, to dst: UnsafeMutablePointer<Float>, count: Int) {
        _ = CPU.bf16Level
        finch_round_to_bf16(src, dst, count)
    }

    /// Rounds src to bf16 in place and writes the bf16 values to dst, in parallel: a tensor kept
    /// in bf16 whose f32 working copy must hold the same values.
    static package func roundAndPack(_ src: UnsafeMutablePointer<Float>, into dst: UnsafeMutablePointer<UInt16>, count: Int) {
        _ = CPU.bf16Level
        let chunk = 1 << 14
        parallelFor((count + chunk - 1) / chunk, grain: 1) { range in
            for c in range {
                let start = c * chunk, n = min(chunk, count - start)
                finch_f32_to_bf16(src + start, dst + start, n)
                finch_bf16_to_f32(dst + start, src + start, n)
            }
        }
    }

    /// dst = f32(src), in parallel.
    static package func unpack(_ src: UnsafePointer<UInt16>, into dst: UnsafeMutablePointer<Float>, count: Int) {
        _ = CPU.bf16Level
        let chunk = 1 << 14
        parallelFor((count + chunk - 1) / chunk, grain: 1) { range in
            for c in range {
                let start = c * chunk
                finch_bf16_to_f32(src + start, dst + start, min(chunk, count - start))
            }
        }
    }

    /// Rows `ld` apart to a dense [rows, columns] bf16 matrix.
    static func convertRows(_ src: UnsafePointer<Float>, ld: Int, to dst: UnsafeMutablePointer<UInt16>, rows: Int, columns: Int) {
        _ = CPU.bf16Level
        finch_f32_to_bf16_rows(src, ld, dst, rows, columns)
    }
}

extension String {
    /// The text of a NUL-terminated C buffer (up to the first NUL, or all of it).
    init(cStringBuffer buffer: [CChar]) {
        self.init(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
