import Foundation

/// How rotary position frequencies are rescaled (`rope_scaling` / `rope_parameters` in config.json).
public enum RopeScaling: Equatable, Sendable {
    case none
    /// Positions divided by `factor`.
    case linear(factor: Float)
    /// Llama 3.x: long wavelengths divided by `factor`, short ones kept, a smooth ramp between.
    case llama3(factor: Float, lowFreqFactor: Float, highFreqFactor: Float, originalMaxPositions: Int)
}

/// Rotary position embedding in the "rotate half" layout of HF Llama: within each head,
/// element i pairs with element i + headDim/2.
package struct RotaryEmbedding: Sendable {
    let headDim: Int
    /// Inverse frequencies [headDim / 2], after any rope scaling.
    let inverseFrequencies: [Float]

    package init(headDim: Int, theta: Float, scaling: RopeScaling) {
        self.headDim = headDim
        let half = headDim / 2
        var freqs = (0..<half).map { i in Float(1.0 / pow(Double(theta), Double(2 * i) / Double(headDim))) }
        switch scaling {
        case .none: break
        case let .linear(factor):
            freqs = freqs.map { $0 / factor }
        case let .llama3(factor, lowFreqFactor, highFreqFactor, originalMax):
            // Long wavelengths are slowed by `factor`, short ones kept, a linear blend between.
            let lowFreqWavelength = Float(originalMax) / lowFreqFactor
            let highFreqWavelength = Float(originalMax) / highFreqFactor
            freqs = freqs.map { f in
                let wavelength = 2 * Float.pi / f
                if wavelength < highFreqWavelength { return f }
                if wavelength > lowFreqWavelength { return f / factor }
                let smooth = (Float(originalMax) / wavelength - lowFreqFactor) / (highFreqFactor - lowFreqFactor)
                return (1 - smooth) * f / factor + smooth * f
            }
        }
        inverseFrequencies = freqs
    }

    /// cos and sin tables [positions.count, headDim / 2].
    package func tables(positions: UnsafePointer<Int32>, count: Int) -> (cos: [Float], sin: [Float]) {
        let half = headDim / 2
        var c = [Float](repeating: 0, count: count * half), s = c
        for t in 0..<count {
            let p = Float(positions[t])
            for i in 0..<half {
                let angle = p * inverseFrequencies[i]
                c[t * half + i] = Foundation.cos(angle)
                s[t * half + i] = Foundation.sin(angle)
            }
        }
        return (c, s)
    }
}

/// Rotates x [tokens, heads, headDim] in place by each token's angle. With `inverse`,
/// rotates by the negative angle, which is the backward pass (the rotation is orthogonal).
package func ropeApply(_ x: UnsafeMutablePointer<Float>, cos: UnsafePointer<Float>, sin: UnsafePointer<Float>,
                      tokens: Int, heads: Int, headDim: Int, inverse: Bool = false) {
    let half = headDim / 2
    let sign: Float = inverse ? -1 : 1
    parallelFor(tokens, grain: 8) { range in
        for t in range {
            let ct = cos + t * half, st = sin + t * half
            for h in 0..<heads {
                // Two pointers, so the inner loop has no index arithmetic to check and vectorises.
                let v = x + (t * heads + h) * headDim, w = v + half
                for i in 0..<half {
                    let a = v[i], b = w[i]
                    let s = sign * st[i]
                    // out1 = x1 cos - x2 sin; out2 = x2 cos + x1 sin
                    v[i] = a * ct[i] - b * s
                    w[i] = b * ct[i] + a * s
                }
            }
        }
    }
}
