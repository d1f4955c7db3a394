import Foundation
import FinchKernels

/// An importance matrix as llama.cpp's `llama-imatrix` writes it: for each weight matrix, the
/// mean squared activation each of its input columns met on a calibration text. Quantizers
/// weight their rounding error by it (`finch export --format gguf --quant q4_k_m --imatrix FILE`).
///
/// Two layouts are read, as llama-quantize reads them:
/// - GGUF (`general.type` `imatrix`): per weight `<name>.in_sum2` (F32 [experts, columns], sums of
///   squared activations) and `<name>.counts` (F32 [experts, 1], activations summed), plus the
///   keys `imatrix.datasets`, `imatrix.chunk_count` and `imatrix.chunk_size`. Values are
///   in_sum2 / count per expert, and 1 for an expert no token reached.
/// - legacy `.dat`: int32 entry count, then per entry int32 name length, the name, int32 calls,
///   int32 value count, the float32 values (already means, times the calls); optionally int32
///   chunk count, int32 length and the dataset's name. Values are divided by the calls.
public struct ImportanceMatrix: Sendable {
    /// The file read, for messages.
    public let path: String
    /// Per GGUF tensor name (`blk.0.attn_q.weight`), one weight per input column, normalised;
    /// for a stack of experts, each expert's columns in turn.
    public let entries: [String: [Float]]
    /// Names of the texts it was computed on (`imatrix.datasets`; may be empty).
    public let datasets: [String]
    /// Chunks of text evaluated (`imatrix.chunk_count`; 0 where the file does not say).
    public let chunkCount: Int

    /// Reads `path` in either layout; throws `LoadError` naming the file and the entry or field
    /// that is missing, truncated, of the wrong type, negative or not finite.
    public static func read(path: String) throws -> ImportanceMatrix {
        let file = try MappedFile(path: path)
        let isGGUF = file.count >= 4 && file.bytes.loadUnaligned(as: UInt32.self) == 0x4655_4747  // "GGUF"
        return isGGUF ? try readGGUF(file) : try readLegacy(file)
    }

    static func readGGUF(_ file: MappedFile) throws -> ImportanceMatrix {
        let path = file.path
        let gguf = try GGUFFile(file: file)
        var sums: [String: TensorData] = [:], counts: [String: TensorData] = [:]
        for name in gguf.tensorNames {
            if name.hasSuffix(".in_sum2") { sums[String(name.dropLast(8))] = gguf.tensors[name] }
            if name.hasSuffix(".counts") { counts[String(name.dropLast(7))] = gguf.tensors[name] }
        }
        guard !sums.isEmpty else {
            let type = gguf.metadata["general.type"]?.string ?? "none"
            throw LoadError.malformed(path: path, field: "tensors", found: "no <name>.in_sum2 tensors (general.type \(type))",
                                      expected: "an importance matrix written by llama-imatrix")
        }
        for key in ["imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"] where gguf.metadata[key] == nil {
            throw LoadError.malformed(path: path, field: key, found: "nothing", expected: "the key llama-imatrix writes (llama-quantize refuses a file without it)")
        }
        var entries: [String: [Float]] = [:]
        for (name, sum) in sums {
            guard let count = counts[name] else { throw LoadError.missingTensor(path: path, name: name + ".counts") }
            for tensor in [sum, count] where tensor.dtype != .f32 {
                throw LoadError.malformed(path: path, field: tensor.name, found: tensor.dtype.rawValue, expected: "F32")
            }
            let values = dequantize(sum), perExpert = dequantize(count)
            guard !perExpert.isEmpty, values.count % perExpert.count == 0, values.count > 0 else {
                throw LoadError.malformed(path: path, field: name + ".in_sum2", found: "\(values.count) values for \(perExpert.count) counts",
                                          expected: "a whole number of columns per count (one count per expert)")
            }
            try check(values, path: path, field: name + ".in_sum2")
            try check(perExpert, path: path, field: name + ".counts")
            let columns = values.count / perExpert.count
            var normalised = values
            for (expert, c) in perExpert.enumerated() {
                // llama-quantize: counts rounded to integers (lround), then a float division; an
                // expert that saw no token weighs every column 1.
                let n = c.rounded(.toNearestOrAwayFromZero)  // lround's value, without its overflow
                for i in expert * columns..<(expert + 1) * columns { normalised[i] = n > 0 ? values[i] / n : 1 }
            }
            entries[name] = normalised
        }
        if let orphan = counts.keys.sorted().first(where: { sums[$0] == nil }) {
            throw LoadError.missingTensor(path: path, name: orphan + ".in_sum2")
        }
        return ImportanceMatrix(path: path, entries: entries, datasets: gguf.metadata["imatrix.datasets"]?.strings ?? [],
                                chunkCount: gguf.metadata["imatrix.chunk_count"]?.int ?? 0)
    }

    static func readLegacy(_ file: MappedFile) throws -> ImportanceMatrix {
        let path = file.path
        var offset = 0
        func int32(_ field: @autoclosure () -> String) throws -> Int {
            guard offset + 4 <= file.count else {
                throw LoadError.malformed(path: path, field: field(), found: "end of file at byte \(offset)", expected: "an int32")
            }
            defer { offset += 4 }
            return Int(Int32(littleEndian: file.bytes.loadUnaligned(fromByteOffset: offset, as: Int32.self)))
        }
        let entryCount = try int32("entry count")
        guard entryCount >= 1 else {
            throw LoadError.malformed(path: path, field: "entry count", found: "\(entryCount)",
                                      expected: "at least 1 (a GGUF importance matrix or llama-imatrix's legacy .dat)")
        }
        var entries: [String: [Float]] = [:]
        for index in 1...entryCount {
            let length = try int32("name length of entry \(index)")
            guard length > 0, length <= 4096, offset + length <= file.count else {
                throw LoadError.malformed(path: path, field: "name length of entry \(index)", found: "\(length)",
                                          expected: "1...4096 bytes within the file")
            }
            guard let name = String(bytes: UnsafeRawBufferPointer(start: file.bytes + offset, count: length), encoding: .utf8) else {
                throw LoadError.malformed(path: path, field: "name of entry \(index)", found: "bytes that are not UTF-8", expected: "a tensor name")
            }
            offset += length
            let calls = try int32("calls of \(name)"), valueCount = try int32("value count of \(name)")
            guard valueCount >= 1, offset + 4 * valueCount <= file.count else {
                throw LoadError.malformed(path: path, field: "value count of \(name)", found: "\(valueCount)",
                                          expected: "1 or more float32 values within the file (\(max(0, (file.count - offset) / 4)) remain)")
            }
            let values = (0..<valueCount).map { i in
                Float(bitPattern: UInt32(littleEndian: file.bytes.loadUnaligned(fromByteOffset: offset + 4 * i, as: UInt32.self)))
            }
            offset += 4 * valueCount
            try check(values, path: path, field: name)
            // llama-quantize: the stored values are means times the calls.
            entries[name] = calls > 0 ? values.map { $0 / Float(calls) } : values
        }
        // Optional trailer: chunk count, then the dataset's name.
        var chunkCount = 0, datasets: [String] = []
        if offset + 4 <= file.count {
            chunkCount = try int32("chunk count")
            if offset + 4 <= file.count {
                let length = try int32("dataset name length")
                if length > 0, offset + length <= file.count,
                   let name = String(bytes: UnsafeRawBufferPointer(start: file.bytes + offset, count: length), encoding: .utf8) {
                    datasets = [name]
                }
            }
        }
        return ImportanceMatrix(path: path, entries: entries, datasets: datasets, chunkCount: max(0, chunkCount))
    }

    /// Importance is a mean of squares: finite and not negative.
    static func check(_ values: [Float], path: String, field: String) throws {
        if let i = values.firstIndex(where: { !$0.isFinite || $0 < 0 }) {
            throw LoadError.malformed(path: path, field: "\(field) value \(i)", found: "\(values[i])", expected: "a finite value >= 0")
        }
    }
}
