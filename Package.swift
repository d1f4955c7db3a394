// swift-tools-version: 6.0
import Foundation
import PackageDescription

/// The instruction-set baseline of the Swift kernels: Haswell (AVX2, FMA, F16C, BMI2: x86-64-v3, every x86-64
/// CPU since 2013-2015), the same whichever machine builds. Above it, kernels choose at run time:
/// GEMM through oneDNN (AVX-512, AVX512_BF16, AMX), and the C kernels of FinchCPU, compiled per
/// instruction set with target attributes and picked after cpuid. FINCH_F16C lets Swift kernels
/// call F16C and AVX2 byte dot products directly. FINCH_PORTABLE=1 builds for any x86-64.
func baselineFlags() -> [String] {
    #if arch(x86_64)
    if ProcessInfo.processInfo.environment["FINCH_PORTABLE"] != nil { return [] }
    return ["-target-cpu", "haswell", "-D", "FINCH_F16C"]
    #else
    return []
    #endif
}

let package = Package(
    name: "Finch",
    products: [
        .library(name: "Finch", targets: ["Finch"]),
        .executable(name: "finch", targets: ["FinchCLI"]),
        .executable(name: "finch-fuzz", targets: ["FinchFuzz"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        // `swift package generate-documentation --target Finch` (the catalog: Sources/Finch/Finch.docc).
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // What the running CPU can do (cpuid), kernels compiled per instruction set with target
        // attributes and chosen at run time, and the oneDNN binding (dlopen).
        .target(name: "FinchCPU"),
        .target(
            name: "Finch",
            dependencies: ["FinchCPU", .product(name: "Crypto", package: "swift-crypto")],
            // Release builds are -O with whole-module optimisation (SwiftPM's default): bounds and
            // overflow checks stay on (issue 18; -Ounchecked measured under 1% of a training step,
            // perf profiles of both builds). Optimised in debug builds too: the kernels' SIMD loops
            // are 50x slower unoptimised, which would make the test suite crawl.
            swiftSettings: [.unsafeFlags(baselineFlags(), .when(configuration: .release)),
                            .unsafeFlags(["-O"] + baselineFlags(), .when(configuration: .debug))]
        ),
        .executableTarget(
            name: "FinchCLI",
            dependencies: ["Finch", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                           .product(name: "Yams", package: "Yams")]
        ),
        // The fuzzing harness: mutates inputs and runs the finch executable on each (no library dependency).
        .executableTarget(name: "FinchFuzz"),
        .testTarget(
            name: "FinchTests",
            dependencies: ["Finch", "FinchCPU"],
            resources: [.copy("Fixtures")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
