import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import FinchKernels

/// The safetensors format (https://github.com/huggingface/safetensors): an 8-byte
/// little-endian header length N, N bytes of JSON `{name: {dtype, shape, data_offsets}}`
/// (plus an optional `__metadata__` string map), then the little-endian tensor data;
/// `data_offsets` count from the first byte after the header.
package enum SafeTensors {
    /// The safetensors dtypes Finch reads and writes (F32, F16, BF16); any other is refused with its name.
    public static let supportedDTypes: [DType] = [.f32, .f16, .bf16]

    /// Maps the file and returns views of its tensors; they keep the mapping alive.
    public static func read(path: String) throws -> [String: TensorData] {
        try read(file: MappedFile(path: path))
    }

    /// The tensors of an already mapped file.
    public static func read(file: MappedFile) throws -> [String: TensorData] {
        let path = file.path
        let (header, dataStart) = try parseHeader(file)
        let dataCount = file.count - dataStart
        var tensors: [String: TensorData] = [:]
        var spans: [(begin: Int, end: Int, name: String)] = []
        tensors.reserveCapacity(header.count)
        for (name, entry) in header where name != "__metadata__" {
            guard let info = entry as? [String: Any] else {
                throw LoadError.malformed(path: path, field: "header entry '\(name)'", found: describe(entry),
                                          expected: "an object with dtype, shape and data_offsets")
            }
            guard let dtypeName = info["dtype"] as? String else {
                throw LoadError.malformed(path: path, field: "tensor '\(name)' dtype", found: describe(info["dtype"]),
                                          expected: "a string such as \"F32\"")
            }
            guard let dtype = DType(rawValue: dtypeName), supportedDTypes.contains(dtype) else {
                throw LoadError.unsupported(path: path, what: "dtype of tensor '\(name)'", found: dtypeName,
                                            supported: supportedDTypes.map(\.rawValue))
            }
            guard let shapeList = info["shape"] as? [Any], let shape = integers(shapeList) else {
                throw LoadError.malformed(path: path, field: "tensor '\(name)' shape", found: describe(info["shape"]),
                                          expected: "a list of non-negative integers")
            }
            guard let offsetList = info["data_offsets"] as? [Any], let offsets = integers(offsetList), offsets.count == 2 else {
                throw LoadError.malformed(path: path, field: "tensor '\(name)' data_offsets", found: describe(info["data_offsets"]),
                                          expected: "[begin, end], two non-negative integers")
            }
            let (begin, end) = (offsets[0], offsets[1])
            guard begin <= end else {
                throw LoadError.malformed(path: path, field: "tensor '\(name)' data_offsets", found: "[\(begin), \(end)]",
                                          expected: "begin <= end")
            }
            guard end <= dataCount else {
                throw LoadError.malformed(path: path, field: "tensor '\(name)' data_offsets", found: "[\(begin), \(end)]",
                                          expected: "an end within the \(dataCount) data bytes after the header (is the file truncated?)")
            }
            guard let expectedBytes = byteCount(shape: shape, elementBytes: dtype.blockBytes), expectedBytes == end - begin else {
                throw LoadError.malformed(path: path, field: "tensor '\(name)' data_offsets", found: "[\(begin), \(end)] (\(end - begin) bytes)",
                                          expected: "\(byteCount(shape: shape, elementBytes: dtype.blockBytes).map(String.init) ?? "an overflowing number of") bytes for shape \(shape) of \(dtypeName)")
            }
            tensors[name] = TensorData(name: name, dtype: dtype, shape: shape, bytes: file.bytes + dataStart + begin,
                                       byteCount: expectedBytes, owner: file)
            spans.append((begin, end, name))
        }
        // The tensors tile the data region exactly, as the reference reader requires: no gap, no
        // overlap, nothing after the last (a header length off by one shifts every tensor).
        var expectedBegin = 0
        for span in spans.sorted(by: { ($0.begin, $0.end) < ($1.begin, $1.end) }) {
            guard span.begin == expectedBegin else {
                throw LoadError.malformed(path: path, field: "tensor '\(span.name)' data_offsets", found: "a start at byte \(span.begin)",
                                          expected: "\(expectedBegin), where the previous tensor ends (tensors tile the data without gaps or overlaps)")
            }
            expectedBegin = span.end
        }
        guard expectedBegin == dataCount else {
            throw LoadError.malformed(path: path, field: "data_offsets", found: "tensors ending at byte \(expectedBegin) of \(dataCount) data bytes",
                                      expected: "the data to end where the last tensor ends (is the header length right?)")
        }
        return tensors
    }

    /// The `__metadata__` string map of a file (empty when it has none).
    public static func metadata(path: String) throws -> [String: String] {
        let file = try MappedFile(path: path)
        let (header, _) = try parseHeader(file)
        guard let raw = header["__metadata__"] else { return [:] }
        guard let map = raw as? [String: Any] else {
            throw LoadError.malformed(path: path, field: "__metadata__", found: describe(raw), expected: "an object of strings")
        }
        var result: [String: String] = [:]
        for (key, value) in map {
            guard let text = value as? String else {
                throw LoadError.malformed(path: path, field: "__metadata__.\(key)", found: describe(value), expected: "a string")
            }
            result[key] = text
        }
        return result
    }

    /// Writes `tensors` as F32.
    public static func write(path: String, tensors: [(name: String, shape: [Int], values: [Float])],
                             metadata: [String: String] = [:]) throws {
        try write(path: path, tensors: tensors, dtype: .f32, metadata: metadata)
    }

    /// Writes `tensors` converted to `dtype` (.f32, .f16 or .bf16, rounding to nearest even),
    /// names sorted, the header padded with spaces to a multiple of 8 bytes. The file appears
    /// atomically: the bytes go to a temporary file in the same folder, which is then renamed.
    public static func write(path: String, tensors: [(name: String, shape: [Int], values: [Float])],
                             dtype: DType, metadata: [String: String] = [:]) throws {
        for tensor in tensors where tensor.shape.allSatisfy({ $0 >= 0 }) && tensor.shape.reduce(1, *) != tensor.values.count {
            throw SaveError.invalidTensor(path: path, name: tensor.name,
                                          problem: "shape \(tensor.shape) does not hold its \(tensor.values.count) values")
        }
        let byName = Dictionary(tensors.map { ($0.name, $0.values) }, uniquingKeysWith: { first, _ in first })
        try write(path: path, layout: tensors.map { (name: $0.name, shape: $0.shape) }, dtype: dtype, metadata: metadata) { name in
            byName[name]!
        }
    }

    /// Writes tensors whose values are produced one at a time by `values(name)` (in name
    /// order), so that a model larger than memory allows twice can be written. Same format
    /// and atomicity as `write(path:tensors:dtype:metadata:)`.
    public static func write(path: String, layout: [(name: String, shape: [Int])], dtype: DType,
                             metadata: [String: String] = [:], values: (String) throws -> [Float]) throws {
        guard supportedDTypes.contains(dtype) else {
            throw SaveError.invalidTensor(path: path, name: layout.first?.name ?? "", problem: "dtype \(dtype.rawValue) is not one of F32, F16, BF16")
        }
        let sorted = layout.sorted { $0.name < $1.name }
        var header = "{"
        if !metadata.isEmpty {
            header += "\"__metadata__\":{"
            header += metadata.keys.sorted().map { "\(jsonQuote($0, ensureASCII: false)):\(jsonQuote(metadata[$0]!, ensureASCII: false))" }.joined(separator: ",")
            header += "},"
        }
        var offset = 0
        for (index, tensor) in sorted.enumerated() {
            if tensor.name == "__metadata__" || tensor.name.isEmpty {
                throw SaveError.invalidTensor(path: path, name: tensor.name, problem: "reserved or empty name")
            }
            if index > 0, sorted[index - 1].name == tensor.name {
                throw SaveError.invalidTensor(path: path, name: tensor.name, problem: "name given twice")
            }
            guard tensor.shape.allSatisfy({ $0 >= 0 }), let bytes = byteCount(shape: tensor.shape, elementBytes: dtype.blockBytes) else {
                throw SaveError.invalidTensor(path: path, name: tensor.name, problem: "shape \(tensor.shape) is not a valid shape")
            }
            if index > 0 { header += "," }
            let shapeText = tensor.shape.map(String.init).joined(separator: ",")
            header += "\(jsonQuote(tensor.name, ensureASCII: false)):{\"dtype\":\"\(dtype.rawValue)\",\"shape\":[\(shapeText)],\"data_offsets\":[\(offset),\(offset + bytes)]}"
            offset += bytes
        }
        header += "}"
        var headerBytes = Array(header.utf8)
        while headerBytes.count % 8 != 0 { headerBytes.append(UInt8(ascii: " ")) }

        try AtomicFileWriter.write(path: path) { sink in
            var length = UInt64(headerBytes.count).littleEndian
            try withUnsafeBytes(of: &length) { try sink($0) }
            try headerBytes.withUnsafeBytes { try sink($0) }
            let chunk = 1 << 16
            let scratch = UnsafeMutableRawPointer.allocate(byteCount: chunk * 4, alignment: 64)
            defer { scratch.deallocate() }
            for tensor in sorted {
                let tensorValues = try values(tensor.name)
                guard tensorValues.count == tensor.shape.reduce(1, *) else {
                    throw SaveError.invalidTensor(path: path, name: tensor.name,
                                                  problem: "shape \(tensor.shape) does not hold its \(tensorValues.count) values")
                }
                try tensorValues.withUnsafeBufferPointer { values in
                    var start = 0
                    while start < values.count {
                        let n = min(chunk, values.count - start)
                        let bytes = encodeRow(values.baseAddress! + start, as: dtype, into: scratch, count: n)
                        try sink(UnsafeRawBufferPointer(start: scratch, count: bytes))
                        start += n
                    }
                }
            }
        }
    }

    // MARK: - Helpers

    /// The parsed JSON header and the file offset where tensor data begins.
    private static func parseHeader(_ file: MappedFile) throws -> ([String: Any], Int) {
        let path = file.path
        guard file.count >= 8 else {
            throw LoadError.malformed(path: path, field: "header length", found: "a file of \(file.count) bytes",
                                      expected: "at least the 8-byte header length (is the file truncated?)")
        }
        let length = UInt64(littleEndian: file.bytes.loadUnaligned(as: UInt64.self))
        guard length <= UInt64(file.count - 8) else {
            throw LoadError.malformed(path: path, field: "header length", found: "\(length) bytes",
                                      expected: "at most the \(file.count - 8) bytes after it in this \(file.count)-byte file (is the file truncated, or not safetensors?)")
        }
        let headerLength = Int(length)
        let data = Data(bytes: file.bytes + 8, count: headerLength)
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: data)
        } catch {
            let preview = String(decoding: data.prefix(40), as: UTF8.self)
            throw LoadError.malformed(path: path, field: "JSON header", found: "invalid JSON starting \(jsonQuote(preview, ensureASCII: false))",
                                      expected: "a JSON object describing the tensors")
        }
        guard let header = object as? [String: Any] else {
            throw LoadError.malformed(path: path, field: "JSON header", found: describe(object), expected: "a JSON object describing the tensors")
        }
        return (header, 8 + headerLength)
    }

    private static func integers(_ list: [Any]) -> [Int]? {
        var result: [Int] = []
        result.reserveCapacity(list.count)
        for item in list {
            guard let number = item as? NSNumber, let value = Int(exactly: number.doubleValue), value >= 0 else { return nil }
            result.append(value)
        }
        return result
    }

    /// product(shape) * elementBytes, or nil on overflow. The product of the non-zero
    /// dimensions must not overflow either, so that `TensorData.rows` cannot trap.
    static func byteCount(shape: [Int], elementBytes: Int) -> Int? {
        var total = elementBytes
        for dim in shape where dim != 0 {
            guard dim > 0 else { return nil }
            let (product, overflow) = total.multipliedReportingOverflow(by: dim)
            if overflow { return nil }
            total = product
        }
        return shape.contains(0) ? 0 : total
    }

    private static func describe(_ value: Any?) -> String {
        guard let value else { return "nothing" }
        let text = "\(value)"
        return text.count > 60 ? String(text.prefix(60)) + "..." : text
    }
}

/// Reads the tensors of an HF model folder: `model.safetensors`, or every shard named in
/// the `weight_map` of `model.safetensors.index.json`.
public func loadSafeTensorsFolder(_ dir: String) throws -> [String: TensorData] {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDirectory) else { throw LoadError.fileNotFound(path: dir) }
    guard isDirectory.boolValue else {
        throw LoadError.unreadable(path: dir, reason: "not a folder; expected a model folder holding model.safetensors")
    }
    let single = (dir as NSString).appendingPathComponent("model.safetensors")
    let indexPath = (dir as NSString).appendingPathComponent("model.safetensors.index.json")
    if FileManager.default.fileExists(atPath: indexPath) {
        guard let data = FileManager.default.contents(atPath: indexPath) else {
            throw LoadError.unreadable(path: indexPath, reason: "the file could not be opened")
        }
        let object: Any
        do { object = try JSONSerialization.jsonObject(with: data) } catch {
            throw LoadError.malformed(path: indexPath, field: "JSON", found: "invalid JSON", expected: "a JSON object with a weight_map")
        }
        guard let json = object as? [String: Any], let rawMap = json["weight_map"] as? [String: Any] else {
            throw LoadError.malformed(path: indexPath, field: "weight_map", found: "\((object as? [String: Any])?["weight_map"] ?? "nothing")",
                                      expected: "an object mapping tensor names to shard file names")
        }
        var shardOf: [String: String] = [:]
        for (name, value) in rawMap {
            guard let shard = value as? String, !shard.isEmpty else {
                throw LoadError.malformed(path: indexPath, field: "weight_map.\(name)", found: "\(value)", expected: "a shard file name")
            }
            shardOf[name] = shard
        }
        var tensors: [String: TensorData] = [:]
        for shard in Set(shardOf.values).sorted() {
            let shardPath = (dir as NSString).appendingPathComponent(shard)
            for (name, tensor) in try SafeTensors.read(path: shardPath) {
                if tensors[name] != nil {
                    throw LoadError.malformed(path: shardPath, field: "tensor '\(name)'", found: "a second copy of it",
                                              expected: "each tensor in exactly one shard")
                }
                tensors[name] = tensor
            }
        }
        for (name, shard) in shardOf where tensors[name] == nil {
            throw LoadError.missingTensor(path: (dir as NSString).appendingPathComponent(shard), name: name)
        }
        return tensors
    }
    if FileManager.default.fileExists(atPath: single) { return try SafeTensors.read(path: single) }
    throw LoadError.unreadable(path: dir, reason: "holds neither model.safetensors nor model.safetensors.index.json")
}

/// Writes a file through a temporary sibling that is renamed over `path` once complete,
/// so that readers never see a half-written file.
enum AtomicFileWriter {
    typealias Sink = (UnsafeRawBufferPointer) throws -> Void

    static func write(path: String, _ body: (Sink) throws -> Void) throws {
        let folder = (path as NSString).deletingLastPathComponent
        let base = (path as NSString).lastPathComponent
        let temporary = (folder.isEmpty ? "" : folder + "/") + ".\(base).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SaveError.unwritable(path: path, reason: String(cString: strerror(errno))) }
        var closed = false
        var renamed = false
        defer {
            if !closed { close(fd) }
            if !renamed { unlink(temporary) }
        }
        try body { buffer in
            var done = 0
            while done < buffer.count {
                let n = posixWrite(fd, buffer.baseAddress! + done, buffer.count - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw SaveError.unwritable(path: path, reason: String(cString: strerror(errno)))
                }
                done += n
            }
        }
        guard fsync(fd) == 0 else { throw SaveError.unwritable(path: path, reason: String(cString: strerror(errno))) }
        closed = true
        guard close(fd) == 0 else { throw SaveError.unwritable(path: path, reason: String(cString: strerror(errno))) }
        guard rename(temporary, path) == 0 else { throw SaveError.unwritable(path: path, reason: String(cString: strerror(errno))) }
        renamed = true
    }
}

private func posixWrite(_ fd: Int32, _ bytes: UnsafeRawPointer, _ count: Int) -> Int {
    write(fd, bytes, count)
}
