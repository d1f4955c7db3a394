import Foundation
import XCTest
import FinchKernels
import FinchIO

package enum TestSupport {
    /// The Fixtures folder copied into the test bundle.
    package static var fixtures: URL { Bundle.module.url(forResource: "Fixtures", withExtension: nil)! }

    package static func randomArray(_ count: Int, seed: UInt64, scale: Float = 1) -> [Float] {
        var rng = FinchRandom(seed: seed)
        return (0..<count).map { _ in rng.nextGaussian() * scale }
    }

    /// max |a - b| / max |b|
    package static func maxRelativeError(_ a: [Float], _ b: [Float]) -> Float {
        precondition(a.count == b.count, "sizes differ: \(a.count) vs \(b.count)")
        var diff: Float = 0, ref: Float = 0
        for i in 0..<a.count { diff = max(diff, abs(a[i] - b[i])); ref = max(ref, abs(b[i])) }
        return diff / max(ref, 1e-30)
    }

    /// ||a - b|| / ||b||
    package static func relativeL2(_ a: [Float], _ b: [Float]) -> Double {
        precondition(a.count == b.count, "sizes differ: \(a.count) vs \(b.count)")
        var diff = 0.0, ref = 0.0
        for i in 0..<a.count { diff += Double(a[i] - b[i]) * Double(a[i] - b[i]); ref += Double(b[i]) * Double(b[i]) }
        return (diff / max(ref, 1e-300)).squareRoot()
    }

    /// Central-difference gradient of `f` at `x`.
    package static func numericalGradient(_ x: [Float], eps: Float = 1e-2, _ f: ([Float]) -> Double) -> [Float] {
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

    package static func dot(_ a: [Float], _ b: [Float]) -> Double {
        zip(a, b).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
    }
}

extension Array where Element == Float {
    /// Calls body with mutable copies' pointers, for kernel calls in tests.
    package func withPointer<R>(_ body: (UnsafeMutablePointer<Float>) -> R) -> R {
        var copy = self
        return copy.withUnsafeMutableBufferPointer { body($0.baseAddress!) }
    }
}

/// A small deterministic generator for test data.
package struct SplitMix {
    package var state: UInt64
    package init(seed: UInt64) { state = seed }
    package mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// The `finch` executable built next to the tests, run as a user would.
package enum FinchProcess {
    package struct Result { package let status: Int32; package let out: String; package let err: String }

    /// The built `finch` executable.
    package static func binary() throws -> URL {
        let binary = Bundle.module.bundleURL.deletingLastPathComponent().appendingPathComponent("finch")
        guard FileManager.default.isExecutableFile(atPath: binary.path) else {
            throw XCTSkip("finch is not built next to the tests (run `swift build` first)")
        }
        return binary
    }

    /// Runs `finch` with `arguments`; a run past `timeout` seconds is killed and fails the test.
    package static func run(_ arguments: [String], environment: [String: String] = [:], timeout: TimeInterval = 120) throws -> Result {
        try run(executable: try binary(), arguments, environment: environment, timeout: timeout)
    }

    /// Runs another program (`mpirun finch ...`) the same way.
    package static func run(executable: URL, _ arguments: [String], environment: [String: String] = [:], timeout: TimeInterval = 120) throws -> Result {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let timer = DispatchSource.makeTimerSource()
        timer.schedule(deadline: .now() + timeout)
        timer.setEventHandler { if process.isRunning { process.terminate() } }
        timer.resume()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        timer.cancel()
        if process.terminationReason == .uncaughtSignal && process.terminationStatus == SIGTERM {
            XCTFail("\(executable.lastPathComponent) \(arguments.joined(separator: " ")) ran past \(Int(timeout)) s")
        }
        return Result(status: process.terminationStatus, out: String(decoding: o, as: UTF8.self), err: String(decoding: e, as: UTF8.self))
    }
}

/// A temporary folder per test, removed afterwards, and the tiny trainer-fixture model as an HF
/// folder with its tokenizer beside it.
open class TemporaryDirectoryTestCase: XCTestCase {
    public var temporary: URL!

    open override func setUpWithError() throws {
        temporary = FileManager.default.temporaryDirectory.appendingPathComponent("finch-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: temporary, withIntermediateDirectories: true)
    }

    open override func tearDownWithError() throws { try? FileManager.default.removeItem(at: temporary) }

    public func write(_ name: String, _ text: String) throws -> String {
        let path = temporary.appendingPathComponent(name).path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    public func tinyChatModel() throws -> String {
        let fixtures = TestSupport.fixtures.appendingPathComponent("trainers")
        let folder = temporary.appendingPathComponent("model")
        if !FileManager.default.fileExists(atPath: folder.path) {
            try FileManager.default.copyItem(at: fixtures.appendingPathComponent("model"), to: folder)
            for name in ["tokenizer.json", "tokenizer_config.json"] {
                try FileManager.default.copyItem(at: fixtures.appendingPathComponent("tokenizer/\(name)"), to: folder.appendingPathComponent(name))
            }
        }
        return folder.path
    }
}
