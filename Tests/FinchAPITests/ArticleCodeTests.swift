import Foundation
import XCTest
import FinchTestSupport

/// The Swift code of the DocC articles is code the tests run: every line of each article's code
/// blocks (but `import Finch` and lines marked `// given`, whose values a test sets its own way)
/// appears, in order, in PublicAPITests.swift, which compiles with a plain `import Finch`.
final class ArticleCodeTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    func testArticlesCodeIsRunByPublicAPITests() throws {
        let catalog = Self.root.appendingPathComponent("Sources/Finch/Finch.docc")
        let tests = try String(contentsOf: Self.root.appendingPathComponent("Tests/FinchAPITests/PublicAPITests.swift"), encoding: .utf8)
            .split(separator: "\n", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        var blocks = 0
        for article in try FileManager.default.contentsOfDirectory(atPath: catalog.path) where article.hasSuffix(".md") && article != "Finch.md" {
            let text = try String(contentsOf: catalog.appendingPathComponent(article), encoding: .utf8)
            let parts = text.components(separatedBy: "```swift\n").dropFirst().map { $0.components(separatedBy: "```")[0] }
            XCTAssertFalse(parts.isEmpty, "\(article) has no Swift code")
            // Each block's lines, found one after another in the tests (lines between them allowed).
            var position = 0
            for block in parts {
                blocks += 1
                let lines = block.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
                    .filter { !$0.isEmpty && $0 != "import Finch" && !$0.hasSuffix("// given") && !$0.contains("// given:") }
                for line in lines {
                    guard let found = tests[position...].firstIndex(of: line) else {
                        XCTFail("\(article): `\(line)` is not in PublicAPITests.swift after line \(position + 1)")
                        break
                    }
                    position = found + 1
                }
            }
        }
        XCTAssertGreaterThanOrEqual(blocks, 4)
    }
}
