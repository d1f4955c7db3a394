// swift-tools-version: 6.0
import Foundation
import PackageDescription

/// Vector code for the CPU that builds: with AVX2, FMA and F16C (x86-64 CPUs since 2013) the
/// kernels' SIMD8 loops become 8-wide AVX with fused multiply-adds and one-instruction f16
/// conversion, 2-3x faster than baseline x86-64 (SSE2); FINCH_F16C lets kernels call these
/// instructions directly (f16 conversion, AVX2 byte dot products). FINCH_PORTABLE=1 builds for any x86-64.
func hostCPUFlags() -> [String] {
    #if arch(x86_64) && os(Linux)
    if ProcessInfo.processInfo.environment["FINCH_PORTABLE"] != nil { return [] }
    guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
          let line = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return [] }
    let flags = Set(line.split(separator: " ").map(String.init))
    return flags.isSuperset(of: ["avx2", "fma", "f16c"]) ? ["-target-cpu", "haswell", "-D", "FINCH_F16C"] : []
    #else
    return []
    #endif
}

let package = Package(
    name: "Finch",
    products: [
        .library(name: "Finch", targets: ["Finch"]),
        .executable(name: "finch", targets: ["FinchCLI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
    ],
    targets: [
        .target(
            name: "Finch",
            // Optimised in debug builds too: the kernels' SIMD loops are 50x slower unoptimised,
            // which would make the test suite crawl.
            swiftSettings: [.unsafeFlags(["-Ounchecked", "-wmo"] + hostCPUFlags(), .when(configuration: .release)),
                            .unsafeFlags(["-O"] + hostCPUFlags(), .when(configuration: .debug))]
        ),
        .executableTarget(
            name: "FinchCLI",
            dependencies: ["Finch", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                           .product(name: "Yams", package: "Yams")]
        ),
        .testTarget(
            name: "FinchTests",
            dependencies: ["Finch"],
            resources: [.copy("Fixtures")]
        ),
    ],
    swiftLanguageModes: [.v5]
)
