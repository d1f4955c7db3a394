import FinchKernels
import FinchIO

/// Keys and values of every layer for `batch` sequences, preallocated up to `capacity`
/// positions, so decoding never reallocates. Rows share positions; left padding is masked.
final package class KVCache {
    /// Decoder layers cached (the model's `layerCount`).
    public let layers: Int
    /// Sequences decoded together, one cache row each.
    public let batch: Int
    /// Positions each row can hold: prompt plus every new token; storing past it is out of bounds.
    public let capacity: Int
    /// Floats per cached key or value of one position (`kvHeadCount * headDim`).
    public let kvDim: Int
    /// Positions filled so far (the same for every row).
    public internal(set) var length = 0
    /// 1 where a position holds a real token, 0 at padding [batch, capacity].
    var keyMask: [Float]
    let keys: UnsafeMutablePointer<Float>     // (layers, batch, capacity, kvDim)
    let values: UnsafeMutablePointer<Float>   // (layers, batch, capacity, kvDim)

    /// Allocates (uninitialised) keys and values for `batch` rows of `capacity` positions; freed on deinit.
    public init(config: ModelConfig, batch: Int, capacity: Int) {
        layers = config.layerCount
        self.batch = batch
        self.capacity = capacity
        kvDim = config.kvDim
        let count = layers * batch * capacity * kvDim
        keys = .allocate(capacity: count)
        values = .allocate(capacity: count)
        keyMask = [Float](repeating: 0, count: batch * capacity)
    }

    deinit {
        keys.deallocate()
        values.deallocate()
    }

    func keys(layer: Int, row: Int) -> UnsafeMutablePointer<Float> { keys + ((layer * batch + row) * capacity) * kvDim }
    func values(layer: Int, row: Int) -> UnsafeMutablePointer<Float> { values + ((layer * batch + row) * capacity) * kvDim }

    /// Copies the new chunk's k and v ([batch * count, kvDim], token-major) of `layer` into place.
    func store(layer: Int, k: UnsafePointer<Float>, v: UnsafePointer<Float>, count: Int) {
        for b in 0..<batch {
            keys(layer: layer, row: b).advanced(by: length * kvDim).update(from: k + b * count * kvDim, count: count * kvDim)
            values(layer: layer, row: b).advanced(by: length * kvDim).update(from: v + b * count * kvDim, count: count * kvDim)
        }
    }
}
