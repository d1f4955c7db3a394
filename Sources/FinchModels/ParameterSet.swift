import FinchKernels
import FinchIO

/// All trainable parameters in one flat allocation, their gradients in another, with named
/// views (as llm.c keeps them): zeroing gradients or an optimizer step is one loop, and a
/// checkpoint is one write.
public final class ParameterSet: @unchecked Sendable {
    /// Where one named parameter lives in the flat buffers.
    public struct Entry: Sendable {
        /// HF or PEFT tensor name, such as `model.layers.0.self_attn.q_proj.weight`.
        public let name: String
        /// Row-major shape, `[out, in]` for linear weights.
        public let shape: [Int]
        /// Index of the first element in `values` and `grads`.
        public let offset: Int
        /// Elements in the parameter (the product of `shape`).
        public var count: Int { shape.reduce(1, *) }
    }

    /// Every parameter, in layout order (contiguous, no gaps).
    public let entries: [Entry]
    /// Total elements across all entries.
    public let count: Int
    /// All parameter values, `count` floats; owned and freed by the set, valid while it lives.
    package let values: UnsafeMutablePointer<Float>
    /// All gradients, laid out as `values`; backward accumulates into it, so zero it before each step.
    package let grads: UnsafeMutablePointer<Float>
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

    /// The entry named `name`; nil if the model has no such parameter.
    public func entry(_ name: String) -> Entry? { index[name].map { entries[$0] } }
    /// Pointer to the values of `name` inside `values` (not a copy); nil if absent.
    package func value(_ name: String) -> UnsafeMutablePointer<Float>? { entry(name).map { values + $0.offset } }
    /// Pointer to the gradient of `name` inside `grads` (not a copy); nil if absent.
    package func grad(_ name: String) -> UnsafeMutablePointer<Float>? { entry(name).map { grads + $0.offset } }
    /// Sets every gradient to 0; the trainer calls it before each optimizer step's micro-batches.
    public func zeroGrads() { grads.update(repeating: 0, count: count) }

    /// A copy of one parameter (or its gradient) as an array, for tests and saving.
    public func array(_ name: String, gradient: Bool = false) -> [Float]? {
        guard let e = entry(name) else { return nil }
        let base = (gradient ? grads : values) + e.offset
        return Array(UnsafeBufferPointer(start: base, count: e.count))
    }
}
