import Foundation

/// h = silu(gate) * up, elementwise over `count` values.
public func swigluForward(_ h: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int) {
    parallelFor(count / 8, grain: 512) { range in
        for block in range {
            let g = UnsafeRawPointer(gate).loadUnaligned(fromByteOffset: block * 32, as: SIMD8<Float>.self)
            let u = UnsafeRawPointer(up).loadUnaligned(fromByteOffset: block * 32, as: SIMD8<Float>.self)
            let v = g / (1 + fastExp(-g)) * u
            UnsafeMutableRawPointer(h).storeBytes(of: v, toByteOffset: block * 32, as: SIMD8<Float>.self)
        }
    }
    for i in count / 8 * 8..<count { h[i] = gate[i] / (1 + fastExp(-gate[i])) * up[i] }
}

/// Backward of `swigluForward`: writes (not accumulates) dgate and dup.
/// silu'(g) = sig(g) * (1 + g * (1 - sig(g))).
public func swigluBackward(dgate: UnsafeMutablePointer<Float>, dup: UnsafeMutablePointer<Float>,
                           dh: UnsafePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int) {
    @inline(__always) func load(_ p: UnsafePointer<Float>, _ block: Int) -> SIMD8<Float> {
        UnsafeRawPointer(p).loadUnaligned(fromByteOffset: block * 32, as: SIMD8<Float>.self)
    }
    parallelFor(count / 8, grain: 512) { range in
        for block in range {
            let g = load(gate, block), u = load(up, block), d = load(dh, block)
            let sig = 1 / (1 + fastExp(-g))
            UnsafeMutableRawPointer(dup).storeBytes(of: d * g * sig, toByteOffset: block * 32, as: SIMD8<Float>.self)
            UnsafeMutableRawPointer(dgate).storeBytes(of: d * u * sig * (1 + g * (1 - sig)), toByteOffset: block * 32, as: SIMD8<Float>.self)
        }
    }
    for i in count / 8 * 8..<count {
        let g = gate[i], sig = 1 / (1 + fastExp(-g))
        dup[i] = dh[i] * g * sig
        dgate[i] = dh[i] * up[i] * sig * (1 + g * (1 - sig))
    }
}
