// swift-tools-version: 6.0
import Foundation
import PackageDescription

// Finch as a versioned dependency, as another package would use it. FINCH_PACKAGE_URL names the
// repository to resolve (scripts/example-by-version.sh points it at a tagged clone); by default
// it is the checkout this example sits in, which must then have a version tag (git tag 0.1.0).
let finch = URL(fileURLWithPath: Context.environment["FINCH_PACKAGE_URL"] ?? Context.packageDirectory + "/../..").standardized

let package = Package(
    name: "FineTune",
    dependencies: [.package(url: finch.path, from: "0.1.0")],
    targets: [
        // A URL dependency's package name is the last component of its URL, lowercased.
        .executableTarget(name: "FineTune", dependencies: [.product(name: "Finch", package: finch.lastPathComponent.lowercased())]),
    ],
    swiftLanguageModes: [.v6]
)
