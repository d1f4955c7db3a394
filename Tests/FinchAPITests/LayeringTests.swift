import Foundation
import XCTest
import FinchTestSupport

/// The library's modules are layers, and arrows point down only. SwiftPM refuses a cycle in the
/// target graph and a module cannot use what it does not import; this test reads every source
/// file's imports and checks that each Finch module it imports is in a layer below its own (the
/// layers as Package.swift declares their dependencies), so that no module reaches up or sideways.
final class LayeringTests: XCTestCase {
    /// Bottom first. Modules in one layer are peers and must not import each other.
    static let layers: [[String]] = [
        ["FinchCPU"],                          // C: cpuid, oneDNN binding, vector loops
        ["FinchKernels"],                      // support, tensors, CPU features, GEMM, the numeric kernels
        ["FinchIO"],                           // mapped files, safetensors, the GGUF container, checksums
        ["FinchTokenizers", "FinchModels"],    // tokenizers and chat templates; configs, the decoder, LoRA, KV cache
        ["FinchGeneration", "FinchDistributed"],
        ["FinchTraining", "FinchExport"],
        ["Finch"],                             // the umbrella (re-exports every layer) and the benchmarks
        ["FinchCLI"],
    ]

    static let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Sources")

    func testEveryModuleIsALayer() throws {
        let modules = try FileManager.default.contentsOfDirectory(atPath: Self.sources.path).filter { $0.hasPrefix("Finch") && $0 != "FinchFuzz" }
        XCTAssertEqual(Set(modules), Set(Self.layers.flatMap { $0 }), "a module of Sources is missing from LayeringTests.layers")
    }

    func testImportsPointDown() throws {
        let layerOf = Dictionary(uniqueKeysWithValues: Self.layers.enumerated().flatMap { index, names in names.map { ($0, index) } })
        let importLine = try NSRegularExpression(pattern: #"^\s*(?:@testable\s+|@_exported\s+)?import\s+(Finch\w*)"#, options: [.anchorsMatchLines])
        var checked = 0
        for module in Self.layers.flatMap({ $0 }) where module != "FinchCPU" {
            let root = Self.sources.appendingPathComponent(module)
            for case let url as URL in FileManager.default.enumerator(at: root, includingPropertiesForKeys: nil)! where url.pathExtension == "swift" {
                let text = try String(contentsOf: url, encoding: .utf8)
                for match in importLine.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
                    let imported = String(text[Range(match.range(at: 1), in: text)!])
                    checked += 1
                    guard let layer = layerOf[imported] else { XCTFail("\(url.lastPathComponent) imports \(imported), which is not a layer"); continue }
                    XCTAssertLessThan(layer, layerOf[module]!, "\(module)/\(url.lastPathComponent) imports \(imported): arrows point down only")
                }
            }
        }
        XCTAssertGreaterThan(checked, 100, "the import pattern finds almost nothing")
    }
}
