import FinchKernels
import FinchIO

/// All trainable parameters in one flat allocation, their gradients in another, with named
/// views (as llm.c keeps them): zeroing gradients or an optimizer step is one loop, and a
/// checkpoint is one write.
public final class ParameterSet: @unchecked Sendable {
    public struct Entry: Sendable {
        public let name: String
        public let shape: [Int]
        public let offset: Int
        public var count: Int { shape.reduce(1, *) }
    }

    public let entries: [Entry]
    public let count: Int
    public let values: UnsafeMutablePointer<Float>
    public let grads: UnsafeMutablePointer<Float>
    private let index: [String: Int]

    /// Lays out `shapes` in order; values and gradients start at zero.
    public init(_ shapes: [(name: String, shape: [Int])]) {
        var entries: [Entry] = []
        var offset = 0
        for (name, shape) in shapes {
            entries.append(Entry(name: name, shape: shape, offset: offset))
            offset += shape.reduce(1, *)
        }
        self.entries = entries
        count = offset
        values = .allocate(capacity: max(offset, 1))
        grads = .allocate(capacity: max(offset, 1))
        values.initialize(repeating: 0, count: max(offset, 1))
        grads.initialize(repeating: 0, count: max(offset, 1))
        index = Dictionary(uniqueKeysWithValues: entries.enumerated().map { ($1.name, $0) })
    }

    deinit {
        values.deallocate()
        grads.deallocate()
    }

    public func entry(_ name: String) -> Entry? { index[name].map { entries[$0] } }
    public func value(_ name: String) -> UnsafeMutablePointer<Float>? { entry(name).map { values + $0.offset } }
    public func grad(_ name: String) -> UnsafeMutablePointer<Float>? { entry(name).map { grads + $0.offset } }
    public func zeroGrads() { grads.update(repeating: 0, count: count) }

    /// A copy of one parameter (or its gradient) as an array, for tests and saving.
    public func array(_ name: String, gradient: Bool = false) -> [Float]? {
        guard let e = entry(name) else { return nil }
        let base = (gradient ? grads : values) + e.offset
        return Array(UnsafeBufferPointer(start: base, count: e.count))
    }
}
