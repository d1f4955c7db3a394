import Foundation
import FinchKernels

/// Writes GGUF v3 files (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md),
/// little-endian: header, metadata, tensor infos (`ne` = the row-major shape reversed),
/// then the tensor data, each tensor starting at a multiple of `general.alignment`.
/// The file appears atomically (a temporary sibling renamed into place).
package enum GGUFWriter {
    /// One tensor's header entry; its bytes come later from the `data` callback of `write`.
    public struct Tensor {
        /// llama.cpp's name (`blk.0.attn_q.weight`), unique in the file.
        public var name: String
        /// Row-major, slowest dimension first (`[rows, columns]`), as `GGUFFile.tensors` gives it.
        public var shape: [Int]
        /// Encoding of the bytes the `data` callback will supply.
        public var dtype: DType
        /// An entry for a tensor of `shape` stored as `dtype`.
        public init(name: String, shape: [Int], dtype: DType) { self.name = name; self.shape = shape; self.dtype = dtype }
        /// Bytes the data callback must hand over for this tensor (whole blocks for quantized types).
        public var byteCount: Int { shape.reduce(1, *) / dtype.blockSize * dtype.blockBytes }
    }

    /// GGML type id of a dtype.
    public static func typeID(_ dtype: DType) -> UInt32 {
        GGUFFile.supportedTensorTypes.first { $0.dtype == dtype }!.id
    }

    /// Writes `metadata` (in the order given; `general.alignment` is set to `alignment`) and
    /// `tensors`, whose bytes `data(index, sink)` hands to `sink` (exactly `byteCount` bytes each).
    public static func write(path: String, metadata: [(key: String, value: GGUFValue)], tensors: [Tensor], alignment: Int = 32,
                             data: (Int, (UnsafeRawBufferPointer) throws -> Void) throws -> Void) throws {
        precondition(alignment > 0 && alignment & (alignment - 1) == 0, "alignment must be a power of two")
        var metadata = metadata.filter { $0.key != "general.alignment" }
        metadata.insert((key: "general.alignment", value: .uint32(UInt32(alignment))), at: min(metadata.count, 1))
        var seen = Set<String>()
        for (key, _) in metadata where !seen.insert(key).inserted {
            throw SaveError.invalidMetadata(path: path, key: key, problem: "the key is given twice")
        }
        var names = Set<String>()
        for tensor in tensors {
            guard names.insert(tensor.name).inserted else {
                throw SaveError.invalidTensor(path: path, name: tensor.name, problem: "name given twice")
            }
            guard (1...4).contains(tensor.shape.count), tensor.shape.allSatisfy({ $0 > 0 }),
                  tensor.shape.last! % tensor.dtype.blockSize == 0 else {
                throw SaveError.invalidTensor(path: path, name: tensor.name,
                                              problem: "shape \(tensor.shape) cannot be stored as \(tensor.dtype.rawValue) (1 to 4 positive dimensions, columns a multiple of \(tensor.dtype.blockSize))")
            }
        }

        var header = ByteWriter()
        header.append(contentsOf: Array("GGUF".utf8))
        header.u32(3)
        header.u64(UInt64(tensors.count))
        header.u64(UInt64(metadata.count))
        for (key, value) in metadata {
            header.string(key)
            header.u32(valueType(value))
            try header.value(value, key: key, path: path)
        }
        var offset = 0
        for tensor in tensors {
            header.string(tensor.name)
            header.u32(UInt32(tensor.shape.count))
            for dim in tensor.shape.reversed() { header.u64(UInt64(dim)) }
            header.u32(typeID(tensor.dtype))
            header.u64(UInt64(offset))
            offset = (offset + tensor.byteCount + alignment - 1) / alignment * alignment
        }
        header.pad(to: alignment)

        try AtomicFileWriter.write(path: path) { outerSink in try withoutActuallyEscaping(outerSink) { sink in
            try header.bytes.withUnsafeBytes { try sink($0) }
            let zeros = [UInt8](repeating: 0, count: alignment)
            for (index, tensor) in tensors.enumerated() {
                var written = 0
                try data(index) { buffer in
                    written += buffer.count
                    guard written <= tensor.byteCount else {
                        throw SaveError.invalidTensor(path: path, name: tensor.name, problem: "more than its \(tensor.byteCount) bytes were given")
                    }
                    try sink(buffer)
                }
                guard written == tensor.byteCount else {
                    throw SaveError.invalidTensor(path: path, name: tensor.name, problem: "\(written) bytes were given, expected \(tensor.byteCount)")
                }
                let padding = (alignment - tensor.byteCount % alignment) % alignment
                if padding > 0 { try zeros.withUnsafeBytes { try sink(UnsafeRawBufferPointer(rebasing: $0[0..<padding])) } }
            }
        } }
    }

    /// GGUF value type id (0 uint8 ... 12 float64).
    static func valueType(_ value: GGUFValue) -> UInt32 {
        switch value {
        case .uint8: return 0
        case .int8: return 1
        case .uint16: return 2
        case .int16: return 3
        case .uint32: return 4
        case .int32: return 5
        case .float32: return 6
        case .bool: return 7
        case .string: return 8
        case .array: return 9
        case .uint64: return 10
        case .int64: return 11
        case .float64: return 12
        }
    }

    struct ByteWriter {
        var bytes: [UInt8] = []
        mutating func append(contentsOf b: [UInt8]) { bytes.append(contentsOf: b) }
        mutating func integer<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
        mutating func u32(_ v: UInt32) { integer(v) }
        mutating func u64(_ v: UInt64) { integer(v) }
        mutating func string(_ s: String) { let utf8 = Array(s.utf8); u64(UInt64(utf8.count)); bytes.append(contentsOf: utf8) }
        mutating func pad(to alignment: Int) { while bytes.count % alignment != 0 { bytes.append(0) } }

        mutating func value(_ value: GGUFValue, key: String, path: String) throws {
            switch value {
            case let .uint8(v): integer(v)
            case let .int8(v): integer(v)
            case let .uint16(v): integer(v)
            case let .int16(v): integer(v)
            case let .uint32(v): integer(v)
            case let .int32(v): integer(v)
            case let .uint64(v): integer(v)
            case let .int64(v): integer(v)
            case let .float32(v): integer(v.bitPattern)
            case let .float64(v): integer(v.bitPattern)
            case let .bool(v): bytes.append(v ? 1 : 0)
            case let .string(v): string(v)
            case let .array(items):
                // An empty array's element type is not recorded by GGUFValue; uint8 is as good as any.
                let elementType = items.first.map(GGUFWriter.valueType) ?? 0
                u32(elementType)
                u64(UInt64(items.count))
                for item in items {
                    let type = GGUFWriter.valueType(item)
                    guard type == elementType else {
                        throw SaveError.invalidMetadata(path: path, key: key, problem: "an array mixes \(items[0].typeName) and \(item.typeName) values")
                    }
                    try self.value(item, key: key, path: path)
                }
            }
        }
    }
}
