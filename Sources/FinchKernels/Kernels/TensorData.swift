/// Element encodings of stored tensors: the safetensors dtypes Finch reads and the GGML
/// block formats of GGUF files. Quantized types pack `blockSize` values into `blockBytes`.
public enum DType: String, Sendable, CaseIterable {
    case f32 = "F32"
    case f16 = "F16"
    case bf16 = "BF16"
    case q8_0 = "Q8_0"
    case q4_0 = "Q4_0"
    case q4_1 = "Q4_1"
    case q4_K = "Q4_K"
    case q6_K = "Q6_K"
    case q5_0 = "Q5_0"
    case q5_1 = "Q5_1"
    case q2_K = "Q2_K"
    case q3_K = "Q3_K"
    case q5_K = "Q5_K"
    case iq4_NL = "IQ4_NL"
    case iq4_XS = "IQ4_XS"

    /// Values per block (1 for plain float types).
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16: return 1
        case .q8_0, .q4_0, .q4_1, .q5_0, .q5_1, .iq4_NL: return 32
        case .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .iq4_XS: return 256
        }
    }

    /// Bytes per block.
    public var blockBytes: Int {
        switch self {
        case .f32: return 4
        case .f16, .bf16: return 2
        case .q8_0: return 34
        case .q4_0: return 18
        case .q4_1: return 20
        case .q4_K: return 144
        case .q6_K: return 210
        case .q5_0: return 22
        case .q5_1: return 24
        case .q2_K: return 84
        case .q3_K: return 110
        case .q5_K: return 176
        case .iq4_NL: return 18
        case .iq4_XS: return 136
        }
    }

    /// A GGML block format (Q8_0, Q4_K, ...) rather than a plain float type.
    public var isQuantized: Bool { blockSize > 1 }

    /// Bytes of one row of `columns` values; `columns` must be a multiple of `blockSize`.
    public func rowBytes(columns: Int) -> Int { columns / blockSize * blockBytes }
}

/// A view of one stored tensor: its bytes stay where they are (usually a memory-mapped
/// file, kept alive by `owner`). `shape` is row-major, slowest dimension first, as in
/// PyTorch: a linear layer's weight is `[out, in]`.
public struct TensorData: @unchecked Sendable {
    /// The tensor's name: as stored in its file, or the HF name once `ModelFiles` mapped a GGUF's.
    public var name: String
    /// How the elements are encoded in `bytes`.
    public var dtype: DType
    /// Row-major, slowest dimension first.
    public var shape: [Int]
    /// The encoded elements; valid while `owner` lives. Read-only: usually a memory-mapped file.
    public var bytes: UnsafeRawPointer
    /// Size of the data at `bytes`, in bytes (the readers check it against shape and dtype).
    public var byteCount: Int
    /// Keeps the memory behind `bytes` alive.
    public var owner: AnyObject

    /// A view of `byteCount` bytes at `bytes`; `owner` must keep them alive. Nothing is copied or checked.
    public init(name: String, dtype: DType, shape: [Int], bytes: UnsafeRawPointer, byteCount: Int, owner: AnyObject) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
        self.byteCount = byteCount
        self.owner = owner
    }

    /// Values in the tensor (the product of `shape`; 1 for a scalar).
    public var elementCount: Int { shape.reduce(1, *) }
    /// Rows and columns when seen as a matrix: the last dimension is the columns.
    public var rows: Int { shape.count <= 1 ? 1 : shape.dropLast().reduce(1, *) }
    /// The last dimension (1 for a scalar).
    public var columns: Int { shape.last ?? 1 }
}

/// Memory that Finch allocated itself and that a `TensorData` can point into.
final package class OwnedBytes: @unchecked Sendable {
    /// Start of the allocation, 64-byte aligned; freed on deinit.
    public let pointer: UnsafeMutableRawPointer
    /// Bytes requested (at least one is allocated).
    public let count: Int
    /// Allocates `count` uninitialised bytes.
    public init(count: Int) {
        self.count = count
        pointer = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 64)
    }
    deinit { pointer.deallocate() }
}

/// Rounds a Float to bfloat16 (nearest, ties to even), as PyTorch does; NaN stays NaN.
@inline(__always)
package func bfloat16Bits(_ value: Float) -> UInt16 {
    let bits = value.bitPattern
    if value.isNaN { return UInt16(truncatingIfNeeded: bits >> 16) | 0x0040 }
    let rounded = bits &+ 0x7FFF &+ ((bits >> 16) & 1)
    return UInt16(truncatingIfNeeded: rounded >> 16)
}

extension TensorData {
    /// Rows first..<first + count of a matrix, as a view of the same bytes (a joined projection's
    /// part: Phi-3's q of `qkv_proj`). Whole rows, so quantized blocks stay whole.
    public func rowSlice(_ first: Int, _ count: Int, name: String) -> TensorData {
        precondition(shape.count == 2 && first >= 0 && count >= 0 && first + count <= shape[0], "rows outside the matrix")
        let rowBytes = dtype.rowBytes(columns: shape[1])
        return TensorData(name: name, dtype: dtype, shape: [count, shape[1]], bytes: bytes + first * rowBytes,
                          byteCount: count * rowBytes, owner: owner)
    }
}
