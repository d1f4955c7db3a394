import Crypto
import Foundation
import FinchKernels

/// SHA-256 checksums (swift-crypto) of the files a run records: its model and data.
package enum Checksum {
    /// The hex SHA-256 of `data`.
    static func sha256Hex(_ data: Data) -> String { hex(SHA256.hash(data: data)) }

    /// The hex SHA-256 of a file, read through a memory map; of a folder, the SHA-256 of its
    /// files' lines "name digest\n" in name order.
    static package func sha256Hex(ofPath path: String) throws -> String {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { throw LoadError.fileNotFound(path: path) }
        var hasher = SHA256()
        if isDirectory.boolValue {
            for name in try FileManager.default.contentsOfDirectory(atPath: path).sorted() {
                let child = (path as NSString).appendingPathComponent(name)
                var childIsDirectory: ObjCBool = false
                if FileManager.default.fileExists(atPath: child, isDirectory: &childIsDirectory), !childIsDirectory.boolValue {
                    hasher.update(data: Data("\(name) \(try sha256Hex(ofPath: child))\n".utf8))
                }
            }
        } else {
            let file = try MappedFile(path: path)
            hasher.update(bufferPointer: file.buffer)
        }
        return hex(hasher.finalize())
    }

    private static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        digest.map { String(format: "%02x", $0) }.joined()
    }
}
