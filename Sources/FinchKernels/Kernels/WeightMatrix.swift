import Foundation

/// A frozen or trainable weight matrix [rows, columns] (rows = outputs of a linear layer).
/// Float weights are used in place; quantized ones stay quantized and are dequantized
/// tile by tile inside each product, so a 4-bit base costs 4 bits per weight in memory.
/// bf16 copies (`--precision bf16`) multiply in bf16 (see `Precision`): half the memory of f32.
final package class WeightMatrix: @unchecked Sendable {
    package let rows: Int
    package let columns: Int
    package let dtype: DType
    /// Raw storage: `rows * dtype.rowBytes(columns)` bytes.
    package let storage: UnsafeRawPointer
    package let owner: AnyObject?
    /// The stored (quantized) form of a dense copy: products with a few vectors read these
    /// fewer bytes instead (decoding is bound by the bytes of weights read per token).
    package private(set) var compact: WeightMatrix?
    /// Products with a few vectors round them to 8 bits per block of 32 against quantized
    /// weights (integer dot products, as llama.cpp does): faster decoding, results ~1e-2 from exact.
    package var int8Activations = false
    /// The precision of products with this matrix: bf16 for bf16 copies, and for f32 weights
    /// (full fine-tuning) trained in bf16 mixed precision, whose inputs are then rounded.
    package var precision: Precision = .fp32

    /// Rows dequantized per tile: matrices of up to `wholeTileFloats` weights are dequantized whole
    /// (one GEMM per product: many small GEMMs cost more than the dequantization); larger ones
    /// (a vocabulary-sized head) in tiles of `tileRows` rows.
    static let tileRows = 256
    nonisolated(unsafe) static var wholeTileFloats = 4 << 20

    package init(rows: Int, columns: Int, dtype: DType, storage: UnsafeRawPointer, owner: AnyObject?) {
        self.rows = rows
        self.columns = columns
        self.dtype = dtype
        self.storage = storage
        self.owner = owner
    }

    /// Wraps f32 memory owned elsewhere (a parameter buffer, say).
    package convenience init(rows: Int, columns: Int, floats: UnsafePointer<Float>, owner: AnyObject?) {
        self.init(rows: rows, columns: columns, dtype: .f32, storage: UnsafeRawPointer(floats), owner: owner)
    }

    /// Takes a stored tensor as it is when it is f32 and 4-byte aligned, or quantized; converts
    /// F16 / BF16 (and unaligned f32) to f32 once, since sgemm needs f32 operands anyway.
    package convenience init(_ tensor: TensorData) {
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

    package var floats: UnsafePointer<Float>? { dtype == .f32 ? storage.assumingMemoryBound(to: Float.self) : nil }
    /// The matrix as a GEMM operand, when it is stored f32 or bf16 (not quantized).
    var operand: GEMMOperand? {
        switch dtype {
        case .f32: return .f32(storage.assumingMemoryBound(to: Float.self))
        case .bf16: return .bf16(storage.assumingMemoryBound(to: UInt16.self))
        default: return nil
        }
    }
    package var byteCount: Int { rows * dtype.rowBytes(columns: columns) }

    /// Writes rows [start, start+count) as f32 into dst [count, columns].
    package func dequantizeRows(_ start: Int, _ count: Int, into dst: UnsafeMutablePointer<Float>) {
        let rowBytes = dtype.rowBytes(columns: columns)
        parallelFor(count, grain: 16) { range in
            for r in range {
                dequantizeRow(self.dtype, self.storage + (start + r) * rowBytes, dst + r * self.columns, count: self.columns)
            }
        }
    }

    /// A dense f32 copy (owned), for weights used so often that dequantizing each time costs too much.
    /// It keeps this matrix as its `compact` form when `matVec` reads it.
    package func denseCopy() -> WeightMatrix {
        if dtype == .f32 { return self }
        let owned = OwnedBytes(count: rows * columns * 4)
        let dst = owned.pointer.assumingMemoryBound(to: Float.self)
        dequantizeRows(0, rows, into: dst)
        let dense = WeightMatrix(rows: rows, columns: columns, floats: dst, owner: owned)
        if matVecSupports(dtype) { dense.compact = self }
        return dense
    }

    /// A bf16 copy (owned), rounded to nearest even, multiplying in bf16. It keeps a quantized
    /// original as its `compact` form for `matVec` (decoding reads those fewer bytes, exactly).
    package func bf16Copy() -> WeightMatrix {
        if dtype == .bf16 { return self }
        let owned = OwnedBytes(count: rows * columns * 2)
        let dst = owned.pointer.assumingMemoryBound(to: UInt16.self)
        fillBF16(dst)
        let copy = WeightMatrix(rows: rows, columns: columns, dtype: .bf16, storage: UnsafeRawPointer(dst), owner: owned)
        copy.precision = .bf16
        copy.compact = matVecSupports(dtype) && dtype != .f32 ? self : compact
        return copy
    }

    /// Writes the matrix as bf16 into dst [rows, columns], a tile of rows at a time.
    fileprivate func fillBF16(_ dst: UnsafeMutablePointer<UInt16>) {
        let columns = self.columns
        if let f = floats {
            parallelFor(rows, grain: 64) { range in
                BFloat16.convert(f + range.lowerBound * columns, to: dst + range.lowerBound * columns, count: range.count * columns)
            }
            return
        }
        withTile { tile, start, count in BFloat16.convert(tile, to: dst + start * columns, count: count * columns) }
    }

    /// The form that `matVec` reads for products with a few vectors, if any.
    private var matVecForm: WeightMatrix? {
        if let compact { return compact }
        return matVecSupports(dtype) && columns % 32 == 0 && columns % dtype.blockSize == 0 ? self : nil
    }

    /// y[n, rows] = x[n, columns] W^T (+ y when `accumulate`); row t of y starts at y + t * ldy
    /// (ldy defaults to rows). `xCopy`: x's bf16 copy (`GEMM.withBF16Copy`), if it has one.
    package func multiply(_ x: UnsafePointer<Float>, n: Int, into y: UnsafeMutablePointer<Float>, ldy: Int? = nil,
                         accumulate: Bool = false, xCopy: UnsafePointer<UInt16>? = nil) {
        let beta: Float = accumulate ? 1 : 0, ldy = ldy ?? rows
        if n <= matVecMaxVectors, let form = matVecForm {
            matVec([MatVecTarget(dtype: form.dtype, weights: form.storage, rows: rows, output: y, outputStride: ldy)],
                   columns: columns, x, n: n, accumulate: accumulate, int8: int8Activations)
            return
        }
        if let w = operand {
            GEMM.multiply(.none, .transpose, m: n, n: rows, k: columns, a: .f32(x, copy: xCopy), lda: columns, b: w, ldb: columns,
                          beta: beta, c: y, ldc: ldy, precision: precision)
            return
        }
        withTile { tile, start, count in
            GEMM.multiply(.none, .transpose, m: n, n: count, k: columns, a: .f32(x, copy: xCopy), lda: columns, b: .f32(tile), ldb: columns,
                          beta: beta, c: y + start, ldc: ldy, precision: precision)
        }
    }

    /// Set on matrices laid out with the next one of their group on purpose (`jointDenseCopies`,
    /// full fine-tuning's parameters): only these run as one GEMM, so that whether a product is
    /// joined never depends on where a file happened to store two tensors.
    package var joinedWithNext = false

    /// Whether `next`'s f32 (or bf16) rows follow this matrix's in memory, joined on purpose, so
    /// that the two act as one matrix of rows + next.rows rows in a product.
    func isFollowed(by next: WeightMatrix) -> Bool {
        joinedWithNext && (dtype == .f32 || dtype == .bf16) && next.dtype == dtype && precision == next.precision
            && columns == next.columns && storage + byteCount == next.storage
    }

    /// Matrices whose rows lie one after another in memory and whose outputs are column blocks,
    /// in the same order, of one matrix with row stride `ld`: one product can do them all.
    private static func formOneMatrix(_ matrices: [WeightMatrix], _ outputs: [UnsafePointer<Float>], ld: Int) -> Bool {
        guard matrices.count > 1 else { return false }
        for i in 1..<matrices.count {
            guard matrices[i - 1].isFollowed(by: matrices[i]), outputs[i - 1] + matrices[i - 1].rows == outputs[i] else { return false }
        }
        return matrices.reduce(0) { $0 + $1.rows } <= ld
    }

    /// Calls `body(weights, rows, columns)` with the matrices as one matrix, if their outputs
    /// (or gradients) are column blocks of one matrix in order: joined f32 or bf16 matrices as
    /// they lie, quantized ones (`--keep-quantized`) dequantized together into one f32 tile when
    /// they fit in `wholeTileFloats`. Returns false, calling nothing, otherwise.
    private static func withOneMatrix(_ matrices: [WeightMatrix], _ outputs: [UnsafePointer<Float>], ld: Int,
                                      _ body: (GEMMOperand, Int, Int) -> Void) -> Bool {
        guard let first = matrices.first, matrices.count > 1 else { return false }
        let rows = matrices.reduce(0) { $0 + $1.rows }, columns = first.columns
        if formOneMatrix(matrices, outputs, ld: ld) {
            body(first.operand!, rows, columns)
            return true
        }
        guard matrices.allSatisfy({ $0.operand == nil && $0.columns == columns }), rows <= ld, rows * columns <= wholeTileFloats,
              (1..<matrices.count).allSatisfy({ outputs[$0 - 1] + matrices[$0 - 1].rows == outputs[$0] }) else { return false }
        let tile = UnsafeMutablePointer<Float>.allocate(capacity: rows * columns)
        defer { tile.deallocate() }
        var start = 0
        for m in matrices {
            m.dequantizeRows(0, m.rows, into: tile + start * columns)
            start += m.rows
        }
        body(.f32(tile), rows, columns)
        return true
    }

    /// y_i[n, rows_i] = x[n, columns] W_i^T for matrices that share their input; row t of y_i
    /// starts at y_i + t * ldy (each matrix's rows by default). For a few vectors one matVec pass
    /// over all their rows; for more, one GEMM when the outputs lie side by side in one matrix
    /// (gate and up) and the weights are joined f32 or quantized (`withOneMatrix`), else one product each.
    package static func multiply(_ products: [(matrix: WeightMatrix, output: UnsafeMutablePointer<Float>)],
                         _ x: UnsafePointer<Float>, n: Int, ldy: Int? = nil, xCopy: UnsafePointer<UInt16>? = nil) {
        let matrices = products.map(\.matrix)
        let forms = matrices.compactMap(\.matVecForm)
        guard n <= matVecMaxVectors, forms.count == products.count, let columns = matrices.first?.columns,
              matrices.allSatisfy({ $0.columns == columns }) else {
            if let ldy, withOneMatrix(matrices, products.map { UnsafePointer($0.output) }, ld: ldy, { w, rows, columns in
                GEMM.multiply(.none, .transpose, m: n, n: rows, k: columns, a: .f32(x, copy: xCopy), lda: columns, b: w, ldb: columns,
                              c: products[0].output, ldc: ldy, precision: matrices[0].precision)
            }) { return }
            for p in products { p.matrix.multiply(x, n: n, into: p.output, ldy: ldy, xCopy: xCopy) }
            return
        }
        let targets = zip(forms, products).map {
            MatVecTarget(dtype: $0.dtype, weights: $0.storage, rows: $0.rows, output: $1.output, outputStride: ldy ?? $0.rows)
        }
        matVec(targets, columns: columns, x, n: n, accumulate: false, int8: products.allSatisfy(\.matrix.int8Activations))
    }

    /// dx[n, columns] += dy[n, rows] W (dx = when not `accumulate`); row t of dy starts at
    /// dy + t * lddy (rows by default). `dyCopy`: dy's bf16 copy in the same layout, if any.
    package func multiplyTransposed(_ dy: UnsafePointer<Float>, lddy: Int? = nil, n: Int, into dx: UnsafeMutablePointer<Float>,
                                   accumulate: Bool = true, dyCopy: UnsafePointer<UInt16>? = nil) {
        let lddy = lddy ?? rows
        if let w = operand {
            GEMM.multiply(.none, .none, m: n, n: columns, k: rows, a: .f32(dy, copy: dyCopy), lda: lddy, b: w, ldb: columns,
                          beta: accumulate ? 1 : 0, c: dx, ldc: columns, precision: precision)
            return
        }
        var first = !accumulate
        withTile { tile, start, count in
            GEMM.multiply(.none, .none, m: n, n: columns, k: count, a: .f32(dy + start, copy: dyCopy.map { $0 + start }), lda: lddy,
                          b: .f32(tile), ldb: columns,
                          beta: first ? 0 : 1, c: dx, ldc: columns, precision: precision)
            first = false
        }
    }

    /// dx[n, columns] (+)= sum_i dy_i W_i for matrices that share their input, each dy_i with
    /// row stride `lddy`: one GEMM over all their rows when the dy_i lie side by side (gate and
    /// up) and the weights are joined f32 or quantized (`withOneMatrix`), else one product each, accumulating.
    /// `dyCopy`: the bf16 copy of the matrix of rows `lddy` apart that starts at the first dy and
    /// holds them all, if it has one.
    package static func multiplyTransposed(_ terms: [(matrix: WeightMatrix, dy: UnsafePointer<Float>)], lddy: Int, n: Int,
                                   into dx: UnsafeMutablePointer<Float>, accumulate: Bool, dyCopy: UnsafePointer<UInt16>? = nil) {
        let matrices = terms.map(\.matrix)
        if withOneMatrix(matrices, terms.map(\.dy), ld: lddy, { w, rows, columns in
            GEMM.multiply(.none, .none, m: n, n: columns, k: rows, a: .f32(terms[0].dy, copy: dyCopy), lda: lddy, b: w, ldb: columns,
                          beta: accumulate ? 1 : 0, c: dx, ldc: columns, precision: matrices[0].precision)
        }) { return }
        for (i, term) in terms.enumerated() {
            term.matrix.multiplyTransposed(term.dy, lddy: lddy, n: n, into: dx, accumulate: accumulate || i > 0,
                                           dyCopy: dyCopy.map { $0 + (term.dy - terms[0].dy) })
        }
    }

    /// Dense f32 (or bf16) copies of `matrices` (all with the same columns) in one allocation,
    /// one after another, so that products with all of them can run as one GEMM. Each keeps its
    /// stored form as `compact` for matVec, as `denseCopy` does.
    static package func jointDenseCopies(_ matrices: [WeightMatrix], precision: Precision = .fp32) -> [WeightMatrix] {
        let columns = matrices[0].columns
        precondition(matrices.allSatisfy { $0.columns == columns })
        let elementBytes = precision == .bf16 ? 2 : 4
        let owned = OwnedBytes(count: matrices.reduce(0) { $0 + $1.rows } * columns * elementBytes)
        var dst = owned.pointer
        return matrices.enumerated().map { i, m in
            let dense: WeightMatrix
            switch precision {
            case .fp32:
                let f = dst.assumingMemoryBound(to: Float.self)
                if let src = m.floats { f.update(from: src, count: m.rows * columns) } else { m.dequantizeRows(0, m.rows, into: f) }
                dense = WeightMatrix(rows: m.rows, columns: columns, floats: f, owner: owned)
            case .bf16:
                let h = dst.assumingMemoryBound(to: UInt16.self)
                m.fillBF16(h)
                dense = WeightMatrix(rows: m.rows, columns: columns, dtype: .bf16, storage: UnsafeRawPointer(h), owner: owned)
                dense.precision = .bf16
            }
            if m.dtype != .f32 && matVecSupports(m.dtype) { dense.compact = m } else { dense.compact = m.compact }
            dense.joinedWithNext = i < matrices.count - 1
            dst += m.rows * columns * elementBytes
            return dense
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
