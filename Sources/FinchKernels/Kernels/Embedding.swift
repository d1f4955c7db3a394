import Foundation

/// out[t] = table[ids[t]]  (out [count, table.columns]); quantized tables are dequantized per row.
package func embeddingForward(_ out: UnsafeMutablePointer<Float>, ids: UnsafePointer<Int32>, count: Int, table: WeightMatrix) {
    let dim = table.columns
    parallelFor(count, grain: 32) { range in
        for t in range { table.dequantizeRows(Int(ids[t]), 1, into: out + t * dim) }
    }
}

/// dtable[ids[t]] += dout[t]. Columns are split across cores, so repeated ids never race.
package func embeddingBackward(_ dtable: UnsafeMutablePointer<Float>, ids: UnsafePointer<Int32>, count: Int,
                              dout: UnsafePointer<Float>, dim: Int) {
    parallelFor(dim, grain: 64) { cols in
        for t in 0..<count {
            let dst = dtable + Int(ids[t]) * dim, src = dout + t * dim
            for c in cols { dst[c] += src[c] }
        }
    }
}
