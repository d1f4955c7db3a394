import Foundation

/// A frozen or trainable weight matrix [rows, columns] (rows = outputs of a linear layer).
/// Float weights are used in place; quantized ones stay quantized and are dequantized
/// tile by tile inside each product, so a 4-bit base costs 4 bits per weight in memory.
public final class WeightMatrix: @unchecked Sendable {
    public let rows: Int
    public let columns: Int
    public let dtype: DType
    /// Raw storage: `rows * dtype.rowBytes(columns)` bytes.
    public let storage: UnsafeRawPointer
    let owner: AnyObject?
    /// The stored (quantized) form of a dense copy: products with a few vectors read these
    /// fewer bytes instead (decoding is bound by the bytes of weights read per token).
    public private(set) var compact: WeightMatrix?
    /// Products with a few vectors round them to 8 bits per block of 32 against quantized
    /// weights (integer dot products, as llama.cpp does): faster decoding, results ~1e-2 from exact.
    public var int8Activations = false

    /// Rows dequantized per tile: matrices of up to `wholeTileFloats` weights are dequantized whole
    /// (one GEMM per product: many small GEMMs cost more than the dequantization); larger ones
    /// (a vocabulary-sized head) in tiles of `tileRows` rows.
    static let tileRows = 256
    static var wholeTileFloats = 4 << 20

    public init(rows: Int, columns: Int, dtype: DType, storage: UnsafeRawPointer, owner: AnyObject?) {
        self.rows = rows
        self.columns = columns
        self.dtype = dtype
        self.storage = storage
        self.owner = owner
    }

    /// Wraps f32 memory owned elsewhere (a parameter buffer, say).
    public convenience init(rows: Int, columns: Int, floats: UnsafePointer<Float>, owner: AnyObject?) {
        self.init(rows: rows, columns: columns, dtype: .f32, storage: UnsafeRawPointer(floats), owner: owner)
    }

    /// Takes a stored tensor as it is when it is f32 and 4-byte aligned, or quantized; converts
    /// F16 / BF16 (and unaligned f32) to f32 once, since sgemm needs f32 operands anyway.
    public convenience init(_ tensor: TensorData) {
        let rows = tensor.rows, columns = tensor.columns
        if tensor.dtype.isQuantized || (tensor.dtype == .f32 && Int(bitPattern: tensor.bytes) % 4 == 0) {
            self.init(rows: rows, columns: columns, dtype: tensor.dtype, storage: tensor.bytes, owner: tensor.owner)
        } else {
            let owned = OwnedBytes(count: rows * columns * 4)
            let dst = owned.pointer.assumingMemoryBound(to: Float.self)
            let rowBytes = tensor.dtype.rowBytes(columns: columns)
            parallelFor(rows, grain: 64) { range in
                for r in range { dequantizeRow(tensor.dtype, tensor.bytes + r * rowBytes, dst + r * columns, count: columns) }
            }
            self.init(rows: rows, columns: columns, dtype: .f32, storage: UnsafeRawPointer(dst), owner: owned)
        }
    }

    public var floats: UnsafePointer<Float>? { dtype == .f32 ? storage.assumingMemoryBound(to: Float.self) : nil }
    public var byteCount: Int { rows * dtype.rowBytes(columns: columns) }

    /// Writes rows [start, start+count) as f32 into dst [count, columns].
    public func dequantizeRows(_ start: Int, _ count: Int, into dst: UnsafeMutablePointer<Float>) {
        let rowBytes = dtype.rowBytes(columns: columns)
        parallelFor(count, grain: 16) { range in
            for r in range {
                dequantizeRow(self.dtype, self.storage + (start + r) * rowBytes, dst + r * self.columns, count: self.columns)
            }
        }
    }

    /// A dense f32 copy (owned), for weights used so often that dequantizing each time costs too much.
    /// It keeps this matrix as its `compact` form when `matVec` reads it.
    public func denseCopy() -> WeightMatrix {
        if dtype == .f32 { return self }
        let owned = OwnedBytes(count: rows * columns * 4)
        let dst = owned.pointer.assumingMemoryBound(to: Float.self)
        dequantizeRows(0, rows, into: dst)
        let dense = WeightMatrix(rows: rows, columns: columns, floats: dst, owner: owned)
        if matVecSupports(dtype) { dense.compact = self }
        return dense
    }

    /// The form that `matVec` reads for products with a few vectors, if any.
    private var matVecForm: WeightMatrix? {
        if let compact { return compact }
        return matVecSupports(dtype) && columns % 32 == 0 ? self : nil
    }

    /// y[n, rows] = x[n, columns] W^T (+ y when `accumulate`).
    public func multiply(_ x: UnsafePointer<Float>, n: Int, into y: UnsafeMutablePointer<Float>, accumulate: Bool = false) {
        let beta: Float = accumulate ? 1 : 0
        if n <= matVecMaxVectors, let form = matVecForm {
            matVec(form.dtype, form.storage, rows: rows, columns: columns, x, n: n, into: y, accumulate: accumulate,
                   int8: int8Activations)
            return
        }
        if let w = floats {
            BLAS.sgemm(.none, .transpose, m: n, n: rows, k: columns, a: x, lda: columns, b: w, ldb: columns,
                       beta: beta, c: y, ldc: rows)
            return
        }
        withTile { tile, start, count in
            BLAS.sgemm(.none, .transpose, m: n, n: count, k: columns, a: x, lda: columns, b: tile, ldb: columns,
                       beta: beta, c: y + start, ldc: rows)
        }
    }

    /// y_i[n, rows_i] = x[n, columns] W_i^T for matrices that share their input: for a few
    /// vectors one matVec pass over all their rows, else one product each.
    static func multiply(_ products: [(matrix: WeightMatrix, output: UnsafeMutablePointer<Float>)],
                         _ x: UnsafePointer<Float>, n: Int) {
        let forms = products.compactMap(\.matrix.matVecForm)
        guard n <= matVecMaxVectors, forms.count == products.count, let columns = products.first?.matrix.columns,
              products.allSatisfy({ $0.matrix.columns == columns }) else {
            for p in products { p.matrix.multiply(x, n: n, into: p.output) }
            return
        }
        let targets = zip(forms, products).map { MatVecTarget(dtype: $0.dtype, weights: $0.storage, rows: $0.rows, output: $1.output) }
        matVec(targets, columns: columns, x, n: n, accumulate: false, int8: products.allSatisfy(\.matrix.int8Activations))
    }

    /// dx[n, columns] += dy[n, rows] W.
    public func multiplyTransposed(_ dy: UnsafePointer<Float>, n: Int, into dx: UnsafeMutablePointer<Float>, accumulate: Bool = true) {
        if let w = floats {
            BLAS.sgemm(.none, .none, m: n, n: columns, k: rows, a: dy, lda: rows, b: w, ldb: columns,
                       beta: accumulate ? 1 : 0, c: dx, ldc: columns)
            return
        }
        var first = !accumulate
        withTile { tile, start, count in
            BLAS.sgemm(.none, .none, m: n, n: columns, k: count, a: dy + start, lda: rows, b: tile, ldb: columns,
                       beta: first ? 0 : 1, c: dx, ldc: columns)
            first = false
        }
    }

    /// Calls `body` with each dequantized tile of rows, in order.
    private func withTile(_ body: (UnsafePointer<Float>, Int, Int) -> Void) {
        let tileRows = rows * columns <= Self.wholeTileFloats ? rows : min(Self.tileRows, rows)
        let tile = UnsafeMutablePointer<Float>.allocate(capacity: tileRows * columns)
        defer { tile.deallocate() }
        var start = 0
        while start < rows {
            let count = min(tileRows, rows - start)
            dequantizeRows(start, count, into: tile)
            body(tile, start, count)
            start += count
        }
    }
}
