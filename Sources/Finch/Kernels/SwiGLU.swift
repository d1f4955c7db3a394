import Foundation

/// h = silu(gate) * up, elementwise over `count` values.
func swigluForward(_ h: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int) {
    swigluForward(h, gate: gate, up: up, rows: 1, width: count, stride: count)
}

/// h[rows, width] = silu(gate) * up, where row t of gate and of up starts at t * stride (gate and
/// up are the two halves of one [rows, 2 * width] matrix in training) and h is contiguous.
func swigluForward(_ h: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                          rows: Int, width: Int, stride: Int) {
    forEachRowChunk(rows: rows, width: width) { t, j0, j1 in
        let g = gate + t * stride, u = up + t * stride, out = h + t * width
        var j = j0
        while j + 8 <= j1 {
            let gv = load8(g + j), uv = load8(u + j)
            store8(gv / (1 + fastExp(-gv)) * uv, out + j)
            j += 8
        }
        while j < j1 { out[j] = g[j] / (1 + fastExp(-g[j])) * u[j]; j += 1 }
    }
}

/// Backward of `swigluForward`: writes (not accumulates) dgate and dup.
/// silu'(g) = sig(g) * (1 + g * (1 - sig(g))).
func swigluBackward(dgate: UnsafeMutablePointer<Float>, dup: UnsafeMutablePointer<Float>,
                           dh: UnsafePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int) {
    swigluBackward(dgate: dgate, dup: dup, dh: dh, gate: gate, up: up, rows: 1, width: count, stride: count)
}

/// `swigluBackward` with the layout of the strided `swigluForward`: gate, up, dgate and dup rows
/// `stride` apart, dh contiguous [rows, width].
func swigluBackward(dgate: UnsafeMutablePointer<Float>, dup: UnsafeMutablePointer<Float>,
                           dh: UnsafePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                           rows: Int, width: Int, stride: Int) {
    forEachRowChunk(rows: rows, width: width) { t, j0, j1 in
        let g = gate + t * stride, u = up + t * stride, d = dh + t * width
        let dg = dgate + t * stride, du = dup + t * stride
        var j = j0
        while j + 8 <= j1 {
            let gv = load8(g + j), uv = load8(u + j), dv = load8(d + j)
            let sig = 1 / (1 + fastExp(-gv))
            store8(dv * gv * sig, du + j)
            store8(dv * uv * sig * (1 + gv * (1 - sig)), dg + j)
            j += 8
        }
        while j < j1 {
            let sig = 1 / (1 + fastExp(-g[j]))
            du[j] = d[j] * g[j] * sig
            dg[j] = d[j] * u[j] * sig * (1 + g[j] * (1 - sig))
            j += 1
        }
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

@inline(__always) private func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
}

@inline(__always) private func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
}
