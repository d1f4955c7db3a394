import Foundation

/// h = silu(gate) * up, elementwise over `count` values.
public func swigluForward(_ h: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int) {
    parallelFor(count, grain: 4096) { range in
        for i in range {
            let g = gate[i]
            h[i] = g / (1 + expf(-g)) * up[i]
        }
    }
}

/// Backward of `swigluForward`: writes (not accumulates) dgate and dup.
/// silu'(g) = sig(g) * (1 + g * (1 - sig(g))).
public func swigluBackward(dgate: UnsafeMutablePointer<Float>, dup: UnsafeMutablePointer<Float>,
                           dh: UnsafePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int) {
    parallelFor(count, grain: 4096) { range in
        for i in range {
            let g = gate[i]
            let sig = 1 / (1 + expf(-g))
            dup[i] = dh[i] * g * sig
            dgate[i] = dh[i] * up[i] * sig * (1 + g * (1 - sig))
        }
    }
}
