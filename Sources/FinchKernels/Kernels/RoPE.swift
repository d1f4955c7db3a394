import Foundation

/// How rotary position frequencies are rescaled (`rope_scaling` / `rope_parameters` in config.json).
public enum RopeScaling: Equatable, Sendable {
    case none
    /// Positions divided by `factor`.
    case linear(factor: Float)
    /// Llama 3.x: long wavelengths divided by `factor`, short ones kept, a smooth ramp between.
    case llama3(factor: Float, lowFreqFactor: Float, highFreqFactor: Float, originalMaxPositions: Int)
    /// LongRoPE (Phi-3.5, Phi-4-mini): frequency i divided by `shortFactors[i]`, or by
    /// `longFactors[i]` in a pass whose positions reach past `originalMaxPositions` (as
    /// transformers picks them from the largest position of each forward); cos and sin
    /// multiplied by `attentionFactor`.
    case longrope(shortFactors: [Float], longFactors: [Float], originalMaxPositions: Int, attentionFactor: Float)
}

extension RopeScaling {
    /// The rotary inverse frequencies theta^(-2i/headDim), i < headDim / 2, before scaling.
    static func baseFrequencies(headDim: Int, theta: Float) -> [Float] {
        (0..<headDim / 2).map { i in Float(1.0 / pow(Double(theta), Double(2 * i) / Double(headDim))) }
    }

    /// The divisor of each rotary frequency that this scaling applies (1 where it keeps the
    /// frequency): llama.cpp's form of Llama 3 scaling, the tensor `rope_freqs.weight`.
    public func frequencyFactors(headDim: Int, theta: Float) -> [Float] {
        let base = Self.baseFrequencies(headDim: headDim, theta: theta)
        let scaled = RotaryEmbedding(headDim: headDim, theta: theta, scaling: self).inverseFrequencies
        return zip(base, scaled).map { $0 / $1 }
    }

    /// The Llama 3 scaling whose factors are `factors` (within 1e-5 relative), as llama.cpp's
    /// `rope_freqs.weight` holds them without the parameters: the factor is the largest value;
    /// the band between kept and slowed frequencies gives the wavelengths where the ramp starts
    /// and ends (two values in the band determine them; with fewer, the first parameters that
    /// reproduce every factor, HF's defaults first). Nil when no Llama 3 scaling gives them.
    public static func llama3(fromFactors factors: [Float], headDim: Int, theta: Float) -> RopeScaling? {
        guard factors.count == headDim / 2, let factor = factors.max(), factor >= 1, factors.allSatisfy({ $0 >= 1 - 1e-6 }) else { return nil }
        if factor == 1 { return RopeScaling.none }
        func matches(_ candidate: RopeScaling) -> Bool {
            zip(candidate.frequencyFactors(headDim: headDim, theta: theta), factors).allSatisfy { abs($0 - $1) <= 1e-5 * $1 }
        }
        var candidates: [RopeScaling] = [.llama3(factor: factor, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192)]
        // In the band, 1 / f = (1 - s) / factor + s with s = (original / wavelength - low) / (high - low):
        // s is linear in 1 / wavelength, so two band values give original / low and original / high.
        let wavelengths = baseFrequencies(headDim: headDim, theta: theta).map { 2 * Double.pi / Double($0) }
        let band = factors.indices.filter { factors[$0] > 1 + 1e-5 && factors[$0] < factor * (1 - 1e-5) }
        if let i = band.first, let j = band.last, i != j {
            func s(_ k: Int) -> Double { (1 / Double(factors[k]) - 1 / Double(factor)) / (1 - 1 / Double(factor)) }
            let alpha = (s(j) - s(i)) / (1 / wavelengths[j] - 1 / wavelengths[i])   // original / (high - low)
            let beta = alpha / wavelengths[i] - s(i)                                   // low / (high - low)
            if alpha > 0, beta > 0 {
                let original = alpha / beta   // with low = 1
                candidates.append(.llama3(factor: factor, lowFreqFactor: 1, highFreqFactor: Float(1 + 1 / beta),
                                          originalMaxPositions: Int(original.rounded())))
            }
        }
        for exponent in 4...20 {
            for high in [2, 4, 8, 16, 32] as [Float] {
                candidates.append(.llama3(factor: factor, lowFreqFactor: 1, highFreqFactor: high, originalMaxPositions: 1 << exponent))
            }
        }
        return candidates.first(where: matches)
    }
}

/// Rotary position embedding in the "rotate half" layout of HF Llama: within each head,
/// element i pairs with element i + headDim/2.
package struct RotaryEmbedding: Sendable {
    /// The rotated dimensions of each head (all of it, or the first part with a partial rotary factor).
    let headDim: Int
    /// Inverse frequencies [headDim / 2], after any rope scaling.
    let inverseFrequencies: [Float]
    /// LongRoPE's frequencies for passes past `longFrom` positions; nil for other scalings.
    let longInverseFrequencies: [Float]?
    let longFrom: Int
    /// cos and sin are multiplied by this (LongRoPE's attention factor; 1 otherwise).
    let attentionFactor: Float

    /// `headDim`: the rotated dimensions of a head (`ModelConfig.rotaryDim`).
    package init(headDim: Int, theta: Float, scaling: RopeScaling) {
        self.headDim = headDim
        var freqs = RopeScaling.baseFrequencies(headDim: headDim, theta: theta)
        var long: [Float]?, longFrom = Int.max, attentionFactor: Float = 1
        switch scaling {
        case .none: break
        case let .longrope(short, longFactors, originalMax, factor):
            long = zip(freqs, longFactors).map { $0 / $1 }
            freqs = zip(freqs, short).map { $0 / $1 }
            longFrom = originalMax
            attentionFactor = factor
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
        longInverseFrequencies = long
        self.longFrom = longFrom
        self.attentionFactor = attentionFactor
    }

    /// cos and sin tables [positions.count, headDim / 2]. LongRoPE takes its long frequencies
    /// when the largest position is at or past its original context.
    package func tables(positions: UnsafePointer<Int32>, count: Int) -> (cos: [Float], sin: [Float]) {
        let half = headDim / 2
        var c = [Float](repeating: 0, count: count * half), s = c
        let largest = (0..<count).reduce(Int32.min) { max($0, positions[$1]) }
        let freqs = longInverseFrequencies.map { Int(largest) + 1 > longFrom ? $0 : inverseFrequencies } ?? inverseFrequencies
        for t in 0..<count {
            let p = Float(positions[t])
            for i in 0..<half {
                let angle = p * freqs[i]
                c[t * half + i] = Foundation.cos(angle) * attentionFactor
                s[t * half + i] = Foundation.sin(angle) * attentionFactor
            }
        }
        return (c, s)
    }
}

/// Rotates x [tokens, heads, headDim] in place by each token's angle: the first `rotaryDim`
/// dimensions of each head (all by default; Phi's partial rotary factor leaves the rest as
/// they are). With `inverse`, rotates by the negative angle, which is the backward pass (the
/// rotation is orthogonal, or, with LongRoPE's attention factor in the tables, that factor
/// times an orthogonal one, whose transpose this also is).
package func ropeApply(_ x: UnsafeMutablePointer<Float>, cos: UnsafePointer<Float>, sin: UnsafePointer<Float>,
                      tokens: Int, heads: Int, headDim: Int, rotaryDim: Int? = nil, inverse: Bool = false) {
    let half = (rotaryDim ?? headDim) / 2
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
