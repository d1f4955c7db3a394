import Foundation
import XCTest

/// The folders of Sources/Finch are layers, and arrows point down only: a folder's code may use
/// names declared in the layers below it, never in its own layer's other folders or above. This
/// reads the sources: every non-private top-level declaration (type, function, constant) of each
/// folder, then every identifier each other folder uses, comments and string literals removed.
/// (These folders are to become SwiftPM modules, issue 17; until then this test is the check.)
final class LayeringTests: XCTestCase {
    /// Bottom first. Folders in one layer are peers and must not use each other either.
    static let layers: [[String]] = [
        ["Support"],                  // version, random numbers, clocks, JSON text
        ["Kernels"],                  // tensors, CPU features, GEMM, the numeric kernels
        ["IO"],                       // mapped files, safetensors, the GGUF container, checksums
        ["Tokenizers"],               // tokenizers and chat templates (GGUF vocabularies through IO)
        ["Models"],                   // configs, the decoder, LoRA, adapters, the KV cache
        ["Generation", "Distributed"],
        ["Training", "Export"],
        ["Bench"],
    ]

    static let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Sources/Finch")

    /// The text of every Swift file under `folder`, comments and string literals removed.
    static func code(of folder: String) throws -> String {
        let root = sources.appendingPathComponent(folder)
        var text = ""
        for case let url as URL in FileManager.default.enumerator(at: root, includingPropertiesForKeys: nil)! where url.pathExtension == "swift" {
            text += try String(contentsOf: url, encoding: .utf8) + "\n"
        }
        for pattern in [#"/\*[\s\S]*?\*/"#, #"//[^\n]*"#, ##"#"[\s\S]*?"#"##, #""""[\s\S]*?""""#, #""(?:\\.|[^"\\\n])*""#] {
            text = text.replacingOccurrences(of: pattern, with: "\"\"", options: .regularExpression)
        }
        return text
    }

    static func matches(_ pattern: String, in text: String, group: Int = 0) -> Set<String> {
        let regex = try! NSRegularExpression(pattern: pattern, options: [.anchorsMatchLines])
        return Set(regex.matches(in: text, range: NSRange(text.startIndex..., in: text)).map { String(text[Range($0.range(at: group), in: text)!]) })
    }

    func testEveryFolderIsALayer() throws {
        let folders = try FileManager.default.contentsOfDirectory(atPath: Self.sources.path).filter { !$0.hasSuffix(".docc") && !$0.hasPrefix(".") }
        XCTAssertEqual(Set(folders), Set(Self.layers.flatMap { $0 }), "a folder of Sources/Finch is missing from LayeringTests.layers, or a layer has no folder")
    }

    func testArrowsPointDown() throws {
        let folders = Self.layers.flatMap { $0 }
        let code = try Dictionary(uniqueKeysWithValues: folders.map { ($0, try Self.code(of: $0)) })
        let declaration = #"^(?:(?:public|package|internal|final|indirect|nonisolated\(unsafe\)|@inline\(__always\)|@usableFromInline|@discardableResult)\s+)*(?:struct|class|enum|protocol|typealias|actor|func|let|var)\s+([A-Za-z_][A-Za-z0-9_]*)"#
        let declared = code.mapValues { Self.matches(declaration, in: $0, group: 1) }
        XCTAssertTrue(declared["Models"]!.contains("Transformer") && declared["Kernels"]!.contains("GEMM"), "the declaration pattern finds nothing")
        let layerOf = Dictionary(uniqueKeysWithValues: Self.layers.enumerated().flatMap { index, names in names.map { ($0, index) } })
        for user in folders {
            let used = Self.matches(#"\b[A-Za-z_][A-Za-z0-9_]*\b"#, in: code[user]!).subtracting(declared[user]!)
            for owner in folders where owner != user && layerOf[owner]! >= layerOf[user]! {
                let upward = used.intersection(declared[owner]!)
                XCTAssertTrue(upward.isEmpty, "\(user) (layer \(layerOf[user]!)) uses \(upward.sorted()) of \(owner) (layer \(layerOf[owner]!)): arrows point down only")
            }
        }
    }
}
