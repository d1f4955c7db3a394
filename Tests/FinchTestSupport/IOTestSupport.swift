import Foundation
import XCTest
import FinchKernels
import FinchIO

/// Helpers for the file-format tests.
package enum IOTestSupport {
    package static var fixtures: URL { Bundle.module.url(forResource: "Fixtures", withExtension: nil)! }
    package static func fixture(_ relative: String) -> String { fixtures.appendingPathComponent(relative).path }

    /// A fresh empty folder under the system temporary folder.
    package static func temporaryFolder() -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("finch-io-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url.path
    }

    package static func writeBytes(_ bytes: [UInt8], to path: String) {
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
    }

    /// A safetensors file from a raw header string and data bytes (no validation).
    package static func rawSafeTensors(header: String, data: [UInt8], headerLength: UInt64? = nil) -> [UInt8] {
        let json = Array(header.utf8)
        var bytes: [UInt8] = []
        withUnsafeBytes(of: (headerLength ?? UInt64(json.count)).littleEndian) { bytes.append(contentsOf: $0) }
        return bytes + json + data
    }

    /// Runs `body`, expecting a LoadError whose description contains every one of `parts`.
    package static func assertLoadError<T>(_ body: @autoclosure () throws -> T, mentions parts: [String],
                                   file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try body()
            XCTFail("expected a LoadError mentioning \(parts), but nothing was thrown", file: file, line: line)
        } catch let error as LoadError {
            let text = error.description
            for part in parts where !text.contains(part) {
                XCTFail("error \"\(text)\" does not mention \"\(part)\"", file: file, line: line)
            }
        } catch {
            XCTFail("expected a LoadError, got \(type(of: error)): \(error)", file: file, line: line)
        }
    }

    package static func values(_ tensor: TensorData?) -> [Float] {
        guard let tensor else { return [] }
        return dequantize(tensor)
    }
}
