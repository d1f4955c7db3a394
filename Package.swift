// swift-tools-version: 6.0
import PackageDescription

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
            swiftSettings: [.unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release)),
                            .unsafeFlags(["-O"], .when(configuration: .debug))]
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
