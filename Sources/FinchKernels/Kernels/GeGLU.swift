import Foundation

/// The gated MLP's activation: h = act(gate) * up.
public enum MLPActivation: String, Sendable, Equatable {
    /// silu(x) = x * sigmoid(x): Llama, Qwen, SmolLM (`hidden_act` "silu"). SwiGLU.
    case silu
    /// gelu with the tanh approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))):
    /// Gemma (`hidden_activation` "gelu_pytorch_tanh", torch's `gelu(approximate="tanh")`). GeGLU.
    case geluTanh
}

/// h[rows, width] = act(gate) * up, with gate and up rows `stride` apart (as `swigluForward`).
package func gatedActivationForward(_ activation: MLPActivation, _ h: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>,
                                    up: UnsafePointer<Float>, rows: Int, width: Int, stride: Int) {
    switch activation {
    case .silu: swigluForward(h, gate: gate, up: up, rows: rows, width: width, stride: stride)
    case .geluTanh: gegluForward(h, gate: gate, up: up, rows: rows, width: width, stride: stride)
    }
}

/// Backward of `gatedActivationForward`: writes (not accumulates) dgate and dup.
package func gatedActivationBackward(_ activation: MLPActivation, dgate: UnsafeMutablePointer<Float>, dup: UnsafeMutablePointer<Float>,
                                     dh: UnsafePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                                     rows: Int, width: Int, stride: Int) {
    switch activation {
    case .silu: swigluBackward(dgate: dgate, dup: dup, dh: dh, gate: gate, up: up, rows: rows, width: width, stride: stride)
    case .geluTanh: gegluBackward(dgate: dgate, dup: dup, dh: dh, gate: gate, up: up, rows: rows, width: width, stride: stride)
    }
}

// torch: kBeta = M_SQRT2 * M_2_SQRTPI * 0.5 = sqrt(2/pi), kKappa = 0.044715.
private let geluBeta = Float(0.5 * 2.0.squareRoot() * (2 / Double.pi.squareRoot()))
private let geluKappa: Float = 0.044715

/// h = gelu_tanh(gate) * up over rows `stride` apart; h contiguous [rows, width].
package func gegluForward(_ h: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                          rows: Int, width: Int, stride: Int) {
    parallelFor(rows, grain: max(1, 4096 / max(width, 1))) { range in
        for t in range {
            let g = gate + t * stride, u = up + t * stride, out = h + t * width
            for j in 0..<width {
                let x = g[j]
                // gelu(x) = 0.5 x (1 + tanh(beta (x + kappa x^3)))
                out[j] = 0.5 * x * (1 + tanhf(geluBeta * (x + geluKappa * x * x * x))) * u[j]
            }
        }
    }
}

/// Backward of `gegluForward`: dgate = dh up gelu'(gate), dup = dh gelu(gate), with
/// gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) beta (1 + 3 kappa x^2), t = tanh(beta (x + kappa x^3)).
package func gegluBackward(dgate: UnsafeMutablePointer<Float>, dup: UnsafeMutablePointer<Float>,
                           dh: UnsafePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                           rows: Int, width: Int, stride: Int) {
    parallelFor(rows, grain: max(1, 4096 / max(width, 1))) { range in
        for t in range {
            let g = gate + t * stride, u = up + t * stride, d = dh + t * width
            let dg = dgate + t * stride, du = dup + t * stride
            for j in 0..<width {
                let x = g[j]
                let th = tanhf(geluBeta * (x + geluKappa * x * x * x))
                let gelu = 0.5 * x * (1 + th)
                let slope = 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * geluBeta * (1 + 3 * geluKappa * x * x)
                let upValue = u[j], grad = d[j]
                dg[j] = grad * upValue * slope
                du[j] = grad * gelu
            }
        }
    }
}

/// x = cap * tanh(x / cap), in place over `count` values (Gemma's logit soft-capping; divided,
/// not multiplied by 1 / cap, as transformers computes it).
package func softcapInPlace(_ x: UnsafeMutablePointer<Float>, count: Int, cap: Float) {
    for i in 0..<count { x[i] = cap * tanhf(x[i] / cap) }
}
