// swift-tools-version: 6.0
import PackageDescription

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
        // The library's layers, bottom up; arrows point down only (each target lists what it
        // uses). No unsafe flags: the package builds as a versioned dependency, the same for
        // every machine; the vector loops that need AVX2 / FMA / F16C / AVX-512 are FinchCPU's C,
        // chosen at run time. Release builds are -O with whole-module optimisation and keep
        // bounds checks.
        .target(name: "FinchKernels", dependencies: ["FinchCPU"]),
        .target(name: "FinchIO", dependencies: ["FinchKernels", .product(name: "Crypto", package: "swift-crypto")]),
        .target(name: "FinchTokenizers", dependencies: ["FinchKernels", "FinchIO"]),   // usable alone
        .target(name: "FinchModels", dependencies: ["FinchKernels", "FinchIO", .product(name: "Crypto", package: "swift-crypto")]),
        .target(name: "FinchGeneration", dependencies: ["FinchModels", "FinchTokenizers"]),
        .target(name: "FinchDistributed", dependencies: ["FinchKernels"]),
        .target(name: "FinchTraining", dependencies: ["FinchModels", "FinchTokenizers", "FinchGeneration", "FinchDistributed"]),
        .target(name: "FinchExport", dependencies: ["FinchModels", "FinchTokenizers"]),
        // The umbrella that re-exports every layer's public API, and the benchmarks.
        .target(name: "Finch", dependencies: ["FinchKernels", "FinchIO", "FinchTokenizers", "FinchModels", "FinchGeneration",
                                              "FinchDistributed", "FinchTraining", "FinchExport"]),
        .executableTarget(
            name: "FinchCLI",
            dependencies: ["Finch", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                           .product(name: "Yams", package: "Yams")]
        ),
        // The fuzzing harness: mutates inputs and runs the finch executable on each (no library dependency).
        .executableTarget(name: "FinchFuzz"),
        // Tests: one target per module, parity against the Python stack and end-to-end runs of the
        // `finch` executable apart; FinchTestSupport holds the shared helpers and the fixtures.
        .target(name: "FinchTestSupport", dependencies: ["FinchKernels", "FinchIO", "FinchTokenizers"], path: "Tests/FinchTestSupport",
                resources: [.copy("Fixtures")]),
        .testTarget(name: "FinchKernelsTests", dependencies: ["FinchKernels", "FinchCPU", "FinchTestSupport"]),
        .testTarget(name: "FinchIOTests", dependencies: ["FinchIO", "FinchTestSupport"]),
        .testTarget(name: "FinchTokenizersTests", dependencies: ["FinchTokenizers", "FinchTestSupport"]),
        .testTarget(name: "FinchModelsTests", dependencies: ["FinchModels", "FinchTestSupport", .product(name: "Crypto", package: "swift-crypto")]),
        .testTarget(name: "FinchGenerationTests", dependencies: ["FinchGeneration", "FinchTestSupport"]),
        .testTarget(name: "FinchTrainingTests", dependencies: ["FinchTraining", "FinchTestSupport"]),
        .testTarget(name: "FinchExportTests", dependencies: ["FinchExport", "FinchTestSupport"]),
        .testTarget(name: "FinchParityTests", dependencies: ["Finch", "FinchTestSupport"]),
        .testTarget(name: "FinchEndToEndTests", dependencies: ["Finch", "FinchTestSupport"]),
        .testTarget(name: "FinchAPITests", dependencies: ["Finch", "FinchTestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
