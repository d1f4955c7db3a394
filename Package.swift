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
        // No unsafe flags: the package builds as a versioned dependency, the same for every machine.
        // The vector loops that need AVX2 / FMA / F16C / AVX-512 are FinchCPU's C, chosen at run
        // time; release builds are -O with whole-module optimisation and keep bounds checks.
        .target(
            name: "Finch",
            dependencies: ["FinchCPU", .product(name: "Crypto", package: "swift-crypto")]
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
