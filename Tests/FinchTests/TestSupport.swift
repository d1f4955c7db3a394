import Foundation
import XCTest
@testable import Finch

enum TestSupport {
    /// The Fixtures folder copied into the test bundle.
    static var fixtures: URL { Bundle.module.url(forResource: "Fixtures", withExtension: nil)! }

    static func randomArray(_ count: Int, seed: UInt64, scale: Float = 1) -> [Float] {
        var rng = FinchRandom(seed: seed)
        return (0..<count).map { _ in rng.nextGaussian() * scale }
    }

    /// max |a - b| / max |b|
    static func maxRelativeError(_ a: [Float], _ b: [Float]) -> Float {
        precondition(a.count == b.count, "sizes differ: \(a.count) vs \(b.count)")
        var diff: Float = 0, ref: Float = 0
        for i in 0..<a.count { diff = max(diff, abs(a[i] - b[i])); ref = max(ref, abs(b[i])) }
        return diff / max(ref, 1e-30)
    }

    /// ||a - b|| / ||b||
    static func relativeL2(_ a: [Float], _ b: [Float]) -> Double {
        precondition(a.count == b.count, "sizes differ: \(a.count) vs \(b.count)")
        var diff = 0.0, ref = 0.0
        for i in 0..<a.count { diff += Double(a[i] - b[i]) * Double(a[i] - b[i]); ref += Double(b[i]) * Double(b[i]) }
        return (diff / max(ref, 1e-300)).squareRoot()
    }

    /// Central-difference gradient of `f` at `x`.
    static func numericalGradient(_ x: [Float], eps: Float = 1e-2, _ f: ([Float]) -> Double) -> [Float] {
        var x = x
        var g = [Float](repeating: 0, count: x.count)
        for i in 0..<x.count {
            let saved = x[i]
            x[i] = saved + eps; let plus = f(x)
            x[i] = saved - eps; let minus = f(x)
            x[i] = saved
            g[i] = Float((plus - minus) / Double(2 * eps))
        }
        return g
    }

    static func dot(_ a: [Float], _ b: [Float]) -> Double {
        zip(a, b).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
    }
}

extension Array where Element == Float {
    /// Calls body with mutable copies' pointers, for kernel calls in tests.
    func withPointer<R>(_ body: (UnsafeMutablePointer<Float>) -> R) -> R {
        var copy = self
        return copy.withUnsafeMutableBufferPointer { body($0.baseAddress!) }
    }
}
