import FinchKernels

/// One metadata value of a GGUF file.
package enum GGUFValue: Equatable, Sendable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case uint64(UInt64), int64(Int64), float32(Float), float64(Double), bool(Bool)
    case string(String)
    case array([GGUFValue])

    /// Any integer value that fits in Int.
    public var int: Int? {
        switch self {
        case let .uint8(v): return Int(v)
        case let .int8(v): return Int(v)
        case let .uint16(v): return Int(v)
        case let .int16(v): return Int(v)
        case let .uint32(v): return Int(v)
        case let .int32(v): return Int(v)
        case let .uint64(v): return Int(exactly: v)
        case let .int64(v): return Int(exactly: v)
        default: return nil
        }
    }

    /// Any numeric value.
    public var double: Double? {
        switch self {
        case let .float32(v): return Double(v)
        case let .float64(v): return v
        default: return int.map(Double.init)
        }
    }

    /// Any numeric value as Float (float32 exactly, others rounded); nil for non-numbers.
    public var float: Float? {
        if case let .float32(v) = self { return v }
        return double.map(Float.init)
    }

    /// The value of a GGUF bool; nil for any other type (no 0/1 coercion).
    public var bool: Bool? {
        if case let .bool(v) = self { return v }
        return nil
    }

    /// The value of a GGUF string; nil for any other type.
    public var string: String? {
        if case let .string(v) = self { return v }
        return nil
    }

    /// The elements of a GGUF array; nil for any other type.
    public var array: [GGUFValue]? {
        if case let .array(v) = self { return v }
        return nil
    }

    /// An array whose every element is a string.
    public var strings: [String]? {
        guard let array else { return nil }
        var result: [String] = []
        result.reserveCapacity(array.count)
        for item in array {
            guard let s = item.string else { return nil }
            result.append(s)
        }
        return result
    }

    /// An array whose every element is an integer.
    public var ints: [Int]? {
        guard let array else { return nil }
        var result: [Int] = []
        result.reserveCapacity(array.count)
        for item in array {
            guard let v = item.int else { return nil }
            result.append(v)
        }
        return result
    }

    /// An array whose every element is numeric.
    public var floats: [Float]? {
        guard let array else { return nil }
        var result: [Float] = []
        result.reserveCapacity(array.count)
        for item in array {
            guard let v = item.float else { return nil }
            result.append(v)
        }
        return result
    }

    /// The GGUF type name, for messages.
    public var typeName: String {
        switch self {
        case .uint8: return "uint8"
        case .int8: return "int8"
        case .uint16: return "uint16"
        case .int16: return "int16"
        case .uint32: return "uint32"
        case .int32: return "int32"
        case .uint64: return "uint64"
        case .int64: return "int64"
        case .float32: return "float32"
        case .float64: return "float64"
        case .bool: return "bool"
        case .string: return "string"
        case let .array(items): return "array of \(items.count)"
        }
    }
}

/// A GGUF file (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md), versions 2 and 3,
/// memory-mapped. Tensors keep llama.cpp's names and point into the mapping; `hfTensors()`
/// gives them Hugging Face names and layout.
final package class GGUFFile: @unchecked Sendable {
    /// The file's path, for error messages.
    public let path: String
    /// GGUF format version, 2 or 3.
    public let version: Int
    /// Every key-value pair of the header (`general.architecture`, `llama.block_count`, `tokenizer.ggml.tokens`, ...).
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order.
    public let metadataKeys: [String]
    /// GGUF names; shapes row-major (`[rows, columns]`), i.e. GGUF's `ne` reversed.
    public let tensors: [String: TensorData]
    /// Tensor names in file order.
    public let tensorNames: [String]
    /// Alignment of the tensor data (`general.alignment`, default 32).
    public let alignment: Int
    /// File offset of the tensor data section.
    public let dataOffset: Int
    /// The mapping the tensors point into; kept alive as long as the GGUFFile.
    public let file: MappedFile

    /// GGML type ids Finch reads.
    public static let supportedTensorTypes: [(id: UInt32, dtype: DType)] = [
        (0, .f32), (1, .f16), (2, .q4_0), (3, .q4_1), (6, .q5_0), (7, .q5_1), (8, .q8_0), (10, .q2_K), (11, .q3_K),
        (12, .q4_K), (13, .q5_K), (14, .q6_K), (20, .iq4_NL), (23, .iq4_XS), (30, .bf16),
    ]
    /// Names of the other GGML type ids, for messages.
    static let otherTensorTypeNames: [UInt32: String] = [
        9: "Q8_1", 15: "Q8_K", 16: "IQ2_XXS",
        17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 21: "IQ3_S", 22: "IQ2_S",
        24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
    ]

    /// Maps and parses the file at `path`.
    public convenience init(path: String) throws {
        try self.init(file: MappedFile(path: path))
    }

    /// Parses header, metadata and tensor infos of a mapped file; throws `LoadError` for a bad
    /// magic, an unsupported version or tensor type, or offsets outside the file.
    public init(file: MappedFile) throws {
        self.file = file
        path = file.path
        var reader = GGUFReader(file: file)

        let magic = try reader.bytes(4, "magic")
        guard magic[0] == 0x47, magic[1] == 0x47, magic[2] == 0x55, magic[3] == 0x46 else {
            let hex = (0..<4).map { String(magic[$0], radix: 16) }.joined(separator: " ")
            throw LoadError.malformed(path: path, field: "magic", found: "bytes \(hex)", expected: "\"GGUF\" (47 47 55 46): this is not a GGUF file")
        }
        let rawVersion = try reader.u32("version")
        guard rawVersion == 2 || rawVersion == 3 else {
            let found = rawVersion.byteSwapped == 2 || rawVersion.byteSwapped == 3
                ? "\(rawVersion.byteSwapped) big-endian" : "\(rawVersion)"
            throw LoadError.unsupported(path: path, what: "GGUF version", found: found, supported: ["2", "3 (little-endian)"])
        }
        version = Int(rawVersion)
        let tensorCount = try reader.count("tensor count", minimumItemBytes: 24)
        let metadataCount = try reader.count("metadata count", minimumItemBytes: 13)

        var metadata: [String: GGUFValue] = [:]
        metadata.reserveCapacity(metadataCount)
        var metadataKeys: [String] = []
        for index in 0..<metadataCount {
            let key = try reader.string("metadata key #\(index)")
            metadataKeys.append(key)
            let type = try reader.u32("type of metadata '\(key)'")
            let value = try reader.value(type: type, key: key, depth: 0)
            guard metadata.updateValue(value, forKey: key) == nil else {
                throw LoadError.malformed(path: path, field: "metadata '\(key)'", found: "a second value", expected: "each key once")
            }
        }
        self.metadata = metadata
        self.metadataKeys = metadataKeys

        var alignment = 32
        if let value = metadata["general.alignment"] {
            guard let a = value.int, a > 0, a & (a - 1) == 0 else {
                throw LoadError.malformed(path: path, field: "general.alignment", found: "\(value)", expected: "a positive power of two")
            }
            alignment = a
        }
        self.alignment = alignment

        struct Info { var name: String; var dims: [Int]; var dtype: DType; var offset: Int }
        var infos: [Info] = []
        infos.reserveCapacity(tensorCount)
        for index in 0..<tensorCount {
            let name = try reader.string("name of tensor #\(index)")
            let dimCount = try reader.u32("dimension count of tensor '\(name)'")
            guard (1...4).contains(dimCount) else {
                throw LoadError.malformed(path: path, field: "dimension count of tensor '\(name)'", found: "\(dimCount)", expected: "1 to 4")
            }
            var dims: [Int] = []
            for d in 0..<Int(dimCount) {
                let raw = try reader.u64("dimension \(d) of tensor '\(name)'")
                guard let dim = Int(exactly: raw), dim >= 1 else {
                    throw LoadError.malformed(path: path, field: "dimension \(d) of tensor '\(name)'", found: "\(raw)", expected: "a size from 1 to 2^63 - 1")
                }
                dims.append(dim)
            }
            let typeId = try reader.u32("type of tensor '\(name)'")
            guard let dtype = Self.supportedTensorTypes.first(where: { $0.id == typeId })?.dtype else {
                let found = Self.otherTensorTypeNames[typeId].map { "\($0) (type id \(typeId))" } ?? "type id \(typeId)"
                throw LoadError.unsupported(path: path, what: "type of tensor '\(name)'", found: found,
                                            supported: Self.supportedTensorTypes.map { "\($0.dtype.rawValue) (\($0.id))" })
            }
            let rawOffset = try reader.u64("data offset of tensor '\(name)'")
            guard let offset = Int(exactly: rawOffset) else {
                throw LoadError.malformed(path: path, field: "data offset of tensor '\(name)'", found: "\(rawOffset)", expected: "an offset inside the file")
            }
            infos.append(Info(name: name, dims: dims, dtype: dtype, offset: offset))
        }

        // The data section starts at the next multiple of the alignment.
        let (padded, overflow) = reader.offset.addingReportingOverflow(alignment - 1)
        guard !overflow else {
            throw LoadError.malformed(path: path, field: "tensor data offset", found: "an overflowing offset", expected: "an offset inside the file")
        }
        dataOffset = padded / alignment * alignment

        var tensors: [String: TensorData] = [:]
        tensors.reserveCapacity(infos.count)
        // Tensors lie one after another in the order of their infos, each padded to the alignment:
        // every offset must be the running padded sum (llama.cpp's reader requires the same), so
        // no two tensors overlap and no bytes go unaccounted.
        var expectedOffset = 0
        for info in infos {
            let name = info.name
            let columns = info.dims[0]
            guard columns % info.dtype.blockSize == 0 else {
                throw LoadError.malformed(path: path, field: "dimensions of tensor '\(name)'", found: "ne = \(info.dims), \(columns) columns",
                                          expected: "columns (ne[0]) a multiple of the \(info.dtype.rawValue) block size \(info.dtype.blockSize)")
            }
            var elements = 1
            for dim in info.dims {
                let (product, overflow) = elements.multipliedReportingOverflow(by: dim)
                guard !overflow else {
                    throw LoadError.malformed(path: path, field: "dimensions of tensor '\(name)'", found: "ne = \(info.dims)", expected: "a size that fits in memory")
                }
                elements = product
            }
            let (byteCount, o1) = (elements / info.dtype.blockSize).multipliedReportingOverflow(by: info.dtype.blockBytes)
            guard info.offset % alignment == 0 else {
                throw LoadError.malformed(path: path, field: "data offset of tensor '\(name)'", found: "\(info.offset)",
                                          expected: "a multiple of the alignment \(alignment)")
            }
            guard info.offset == expectedOffset else {
                throw LoadError.malformed(path: path, field: "data offset of tensor '\(name)'", found: "\(info.offset)",
                                          expected: "\(expectedOffset), the end of the previous tensor padded to \(alignment) bytes")
            }
            let (start, o2) = dataOffset.addingReportingOverflow(info.offset)
            let (end, o3) = start.addingReportingOverflow(byteCount)
            guard !o1, !o2, !o3, end <= file.count else {
                throw LoadError.malformed(path: path, field: "data of tensor '\(name)'",
                                          found: "\(byteCount) bytes at file offset \(start) (ending at \(o1 || o2 || o3 ? "an overflowing offset" : "\(end)"))",
                                          expected: "data within the \(file.count)-byte file (is the file truncated?)")
            }
            expectedOffset = (info.offset + byteCount + alignment - 1) / alignment * alignment
            let tensor = TensorData(name: name, dtype: info.dtype, shape: info.dims.reversed(),
                                    bytes: file.bytes + start, byteCount: byteCount, owner: file)
            guard tensors.updateValue(tensor, forKey: name) == nil else {
                throw LoadError.malformed(path: path, field: "tensor '\(name)'", found: "a second tensor of that name", expected: "unique tensor names")
            }
        }
        self.tensors = tensors
        tensorNames = infos.map(\.name)
    }

    /// `general.architecture`.
    public var architecture: String? { metadata["general.architecture"]?.string }
}

/// Bounds-checked little-endian reads from a mapped GGUF file; every failure names the field.
private struct GGUFReader {
    let path: String
    let base: UnsafeRawPointer
    let count: Int
    var offset = 0
    /// Nested arrays deeper than this are refused (a crafted file could otherwise exhaust the stack).
    static let maxDepth = 8

    init(file: MappedFile) {
        path = file.path
        base = file.bytes
        count = file.count
    }

    var remaining: Int { count - offset }

    mutating func bytes(_ n: Int, _ field: @autoclosure () -> String) throws -> UnsafePointer<UInt8> {
        guard n >= 0, n <= remaining else {
            throw LoadError.malformed(path: path, field: field(), found: "the end of the file (\(count) bytes) while reading \(n) bytes at offset \(offset)",
                                      expected: "a complete GGUF header (is the file truncated?)")
        }
        let p = (base + offset).assumingMemoryBound(to: UInt8.self)
        offset += n
        return p
    }

    mutating func load<T: FixedWidthInteger>(_ type: T.Type, _ field: @autoclosure () -> String) throws -> T {
        let p = try bytes(MemoryLayout<T>.size, field())
        return T(littleEndian: UnsafeRawPointer(p).loadUnaligned(as: T.self))
    }

    mutating func u32(_ field: @autoclosure () -> String) throws -> UInt32 { try load(UInt32.self, field()) }
    mutating func u64(_ field: @autoclosure () -> String) throws -> UInt64 { try load(UInt64.self, field()) }

    /// A u64 count of items each at least `minimumItemBytes` long, checked against what is left of the file.
    mutating func count(_ field: @autoclosure () -> String, minimumItemBytes: Int) throws -> Int {
        let raw = try u64(field())
        guard let n = Int(exactly: raw), n <= remaining / max(1, minimumItemBytes) else {
            throw LoadError.malformed(path: path, field: field(), found: "\(raw)",
                                      expected: "at most \(remaining / max(1, minimumItemBytes)) (items of at least \(minimumItemBytes) bytes in the \(remaining) bytes left)")
        }
        return n
    }

    mutating func string(_ field: @autoclosure () -> String) throws -> String {
        let n = try count(field(), minimumItemBytes: 1)
        let p = try bytes(n, field())
        return String(decoding: UnsafeBufferPointer(start: p, count: n), as: UTF8.self)
    }

    static let valueTypeNames = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool",
                                 "string", "array", "uint64", "int64", "float64"]

    /// Smallest encoding of one value of `type`.
    static func minimumBytes(_ type: UInt32) -> Int {
        switch type {
        case 0, 1, 7: return 1
        case 2, 3: return 2
        case 4, 5, 6: return 4
        case 8, 10, 11, 12: return 8
        default: return 12  // array: element type + count
        }
    }

    mutating func value(type: UInt32, key: String, depth: Int) throws -> GGUFValue {
        let field = "value of metadata '\(key)'"
        switch type {
        case 0: return .uint8(try load(UInt8.self, field))
        case 1: return .int8(try load(Int8.self, field))
        case 2: return .uint16(try load(UInt16.self, field))
        case 3: return .int16(try load(Int16.self, field))
        case 4: return .uint32(try load(UInt32.self, field))
        case 5: return .int32(try load(Int32.self, field))
        case 6: return .float32(Float(bitPattern: try load(UInt32.self, field)))
        case 7: return .bool(try load(UInt8.self, field) != 0)
        case 8: return .string(try string(field))
        case 9:
            guard depth < Self.maxDepth else {
                throw LoadError.malformed(path: path, field: field, found: "arrays nested \(depth + 1) deep", expected: "at most \(Self.maxDepth)")
            }
            let elementType = try u32("element type of metadata '\(key)'")
            guard elementType < 13 else { throw unknownType(elementType, key: key) }
            let n = try count("element count of metadata '\(key)'", minimumItemBytes: Self.minimumBytes(elementType))
            var items: [GGUFValue] = []
            items.reserveCapacity(n)
            for _ in 0..<n { items.append(try value(type: elementType, key: key, depth: depth + 1)) }
            return .array(items)
        case 10: return .uint64(try load(UInt64.self, field))
        case 11: return .int64(try load(Int64.self, field))
        case 12: return .float64(Double(bitPattern: try load(UInt64.self, field)))
        default: throw unknownType(type, key: key)
        }
    }

    func unknownType(_ type: UInt32, key: String) -> LoadError {
        .unsupported(path: path, what: "value type of metadata '\(key)'", found: "type id \(type)",
                     supported: Self.valueTypeNames.enumerated().map { "\($0.element) (\($0.offset))" })
    }
}
