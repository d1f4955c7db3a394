/// A small, fast, seedable generator (xoshiro256**), so that runs repeat exactly for a seed.
package struct FinchRandom: RandomNumberGenerator, Sendable {
    private var s: (UInt64, UInt64, UInt64, UInt64)

    /// A generator whose whole sequence is fixed by `seed` (expanded with splitmix64).
    public init(seed: UInt64) {
        // Expand the seed with splitmix64, as the xoshiro authors recommend.
        var x = seed
        func next() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        s = (next(), next(), next(), next())
    }

    /// The generator's state, to save in a checkpoint.
    public var state: [UInt64] {
        get { [s.0, s.1, s.2, s.3] }
        set { if newValue.count == 4 { s = (newValue[0], newValue[1], newValue[2], newValue[3]) } }
    }

    /// The next 64 random bits (xoshiro256**).
    public mutating func next() -> UInt64 {
        let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0; s.3 ^= s.1; s.1 ^= s.2; s.0 ^= s.3
        s.2 ^= t
        s.3 = (s.3 << 45) | (s.3 >> 19)
        return result
    }

    /// Uniform in [0, 1).
    public mutating func nextFloat() -> Float { Float(next() >> 40) * (1.0 / Float(1 << 24)) }

    /// Standard normal (Box-Muller).
    public mutating func nextGaussian() -> Float {
        let u1 = max(nextFloat(), 1e-12), u2 = nextFloat()
        return (-2 * _log(u1)).squareRoot() * _cos(2 * Float.pi * u2)
    }
}

import Foundation
@inline(__always) private func _log(_ x: Float) -> Float { Foundation.log(x) }
@inline(__always) private func _cos(_ x: Float) -> Float { Foundation.cos(x) }
