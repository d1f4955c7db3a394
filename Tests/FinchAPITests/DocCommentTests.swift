import Foundation
import XCTest
import FinchTestSupport

/// Every public declaration of the library modules carries a `///` doc comment (DocC shows it;
/// a declaration without one is API nobody explained). Read from the sources: a `public` line
/// whose nearest line above, past attributes, is not a doc comment fails, by file and line.
final class DocCommentTests: XCTestCase {
    /// Conformance requirements whose meaning the protocol already documents.
    static let exempt = try! NSRegularExpression(pattern: #"public (init\(from decoder|func encode\(to|var description: String|var errorDescription)"#)
    static let declaration = try! NSRegularExpression(pattern: #"^(@\w+(\([^)]*\))?\s+)*public\s"#)

    func testEveryPublicDeclarationHasADocComment() throws {
        let sources = LayeringTests.sources
        var undocumented: [String] = [], checked = 0
        for module in LayeringTests.layers.flatMap({ $0 }) where !["FinchCPU", "FinchCLI"].contains(module) {
            let root = sources.appendingPathComponent(module)
            for case let url as URL in FileManager.default.enumerator(at: root, includingPropertiesForKeys: nil)! where url.pathExtension == "swift" {
                let lines = try String(contentsOf: url, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
                    .map { $0.trimmingCharacters(in: .whitespaces) }
                for (index, line) in lines.enumerated() where Self.matches(Self.declaration, line) && !Self.matches(Self.exempt, line) {
                    checked += 1
                    var above = index - 1
                    while above >= 0 && (lines[above].isEmpty || lines[above].hasPrefix("@")) { above -= 1 }
                    if above < 0 || !(lines[above].hasPrefix("///") || lines[above].hasSuffix("*/")) {
                        undocumented.append("\(module)/\(url.lastPathComponent):\(index + 1): \(line.prefix(80))")
                    }
                }
            }
        }
        XCTAssertGreaterThan(checked, 300, "the declaration pattern finds almost nothing")
        XCTAssertEqual(undocumented, [], "public declarations without a /// doc comment")
    }

    static func matches(_ pattern: NSRegularExpression, _ line: String) -> Bool {
        pattern.firstMatch(in: line, range: NSRange(line.startIndex..., in: line)) != nil
    }
}
