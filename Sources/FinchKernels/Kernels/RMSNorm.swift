import Foundation

/// y = x * rstd * (offset + weight), rstd = 1 / sqrt(mean(x^2) + eps), over each row of `x`
/// [rows, dim]. `weightOffset` is 0 for Llama's norm and 1 for Gemma's, whose stored weight is
/// zero-centred (the product is taken in f32 either way, as transformers does).
/// Saves `rstd` [rows] for backward. `y` may alias `x`.
package func rmsnormForward(_ y: UnsafeMutablePointer<Float>, _ rstd: UnsafeMutablePointer<Float>?,
                           _ x: UnsafePointer<Float>, _ weight: UnsafePointer<Float>,
                           rows: Int, dim: Int, eps: Float, weightOffset: Float = 0) {
    parallelFor(rows, grain: 16) { range in
        for r in range {
            let xr = x + r * dim, yr = y + r * dim
            var sumSquares: Float = 0
            for i in 0..<dim { sumSquares += xr[i] * xr[i] }
            let s = 1 / (sumSquares / Float(dim) + eps).squareRoot()
            rstd?[r] = s
            if weightOffset == 0 {
                for i in 0..<dim { yr[i] = xr[i] * s * weight[i] }
            } else {
                for i in 0..<dim { yr[i] = xr[i] * s * (weightOffset + weight[i]) }
            }
        }
    }
}

/// Backward of `rmsnormForward`: dx += d/dx, dweight += d/dweight (when given).
/// From y_i = w_i x_i r with r = (mean(x^2) + eps)^-1/2 and w_i = offset + weight_i:
/// dx_j = r w_j dy_j - x_j r^3 / dim * sum_i(w_i dy_i x_i); dweight_i = dy_i x_i r (the offset is a constant).
package func rmsnormBackward(_ dx: UnsafeMutablePointer<Float>, _ dweight: UnsafeMutablePointer<Float>?,
                            _ dy: UnsafePointer<Float>, _ x: UnsafePointer<Float>,
                            _ weight: UnsafePointer<Float>, _ rstd: UnsafePointer<Float>,
                            rows: Int, dim: Int, weightOffset: Float = 0) {
    parallelFor(rows, grain: 16) { range in
        // Gemma's offset: the effective weights of the row, once per task.
        let effective: UnsafeMutablePointer<Float>? = weightOffset == 0 ? nil : .allocate(capacity: dim)
        defer { effective?.deallocate() }
        if let effective { for i in 0..<dim { effective[i] = weightOffset + weight[i] } }
        let w = UnsafePointer(effective) ?? weight
        for r in range {
            let xr = x + r * dim, dyr = dy + r * dim, dxr = dx + r * dim
            let s = rstd[r]
            var dot: Float = 0
            for i in 0..<dim { dot += w[i] * dyr[i] * xr[i] }
            let c = dot * s * s * s / Float(dim)
            for i in 0..<dim { dxr[i] += s * w[i] * dyr[i] - xr[i] * c }
        }
    }
    if let dweight {
        // Reduce over rows per column; columns are split across cores so no two write the same element.
        parallelFor(dim, grain: 64) { cols in
            for r in 0..<rows {
                let xr = x + r * dim, dyr = dy + r * dim
                let s = rstd[r]
                for i in cols { dweight[i] += dyr[i] * xr[i] * s }
            }
        }
    }
}
