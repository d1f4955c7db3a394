import FinchCPU

/// h = silu(gate) * up, elementwise over `count` values.
package func swigluForward(_ h: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int) {
    swigluForward(h, gate: gate, up: up, rows: 1, width: count, stride: count)
}

/// h[rows, width] = silu(gate) * up, where row t of gate and of up starts at t * stride (gate and
/// up are the two halves of one [rows, 2 * width] matrix in training) and h is contiguous.
package func swigluForward(_ h: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                          rows: Int, width: Int, stride: Int) {
    _ = CPU.vectorLevel
    forEachRowChunk(rows: rows, width: width) { t, j0, j1 in
        let row = t * stride
        finch_swiglu_forward(h + t * width + j0, gate + row + j0, up + row + j0, Int64(j1 - j0))
    }
}

/// Backward of `swigluForward`: writes (not accumulates) dgate and dup.
/// silu'(g) = sig(g) * (1 + g * (1 - sig(g))).
package func swigluBackward(dgate: UnsafeMutablePointer<Float>, dup: UnsafeMutablePointer<Float>,
                           dh: UnsafePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int) {
    swigluBackward(dgate: dgate, dup: dup, dh: dh, gate: gate, up: up, rows: 1, width: count, stride: count)
}

/// `swigluBackward` with the layout of the strided `swigluForward`: gate, up, dgate and dup rows
/// `stride` apart, dh contiguous [rows, width].
package func swigluBackward(dgate: UnsafeMutablePointer<Float>, dup: UnsafeMutablePointer<Float>,
                           dh: UnsafePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                           rows: Int, width: Int, stride: Int) {
    _ = CPU.vectorLevel
    forEachRowChunk(rows: rows, width: width) { t, j0, j1 in
        let row = t * stride + j0
        finch_swiglu_backward(dgate + row, dup + row, dh + t * width + j0, gate + row, up + row, Int64(j1 - j0))
    }
}

/// Runs body(row, start, end) over all cores for pieces of about 4096 values: whole rows, or
/// slices of one long row (a single vector of `count` values) cut at multiples of 8.
private func forEachRowChunk(rows: Int, width: Int, _ body: (Int, Int, Int) -> Void) {
    let piece = 4096
    let slices = max(1, width / piece)
    parallelFor(rows * slices, grain: max(1, piece / max(width, 1))) { range in
        for i in range {
            let t = i / slices, s = i % slices
            let j0 = width * s / slices / 8 * 8
            let j1 = s == slices - 1 ? width : width * (s + 1) / slices / 8 * 8
            body(t, j0, j1)
        }
    }
}
