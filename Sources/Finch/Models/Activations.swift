/// One allocation carved into named buffers, all freed together.
final class Arena {
    private(set) var base: UnsafeMutablePointer<Float>?
    private var sizes: [Int] = []
    private var pointers: [UnsafeMutablePointer<Float>?] = []

    /// Reserves `count` floats; the pointer is valid after `allocate()`.
    func reserve(_ count: Int) -> Int { sizes.append(count); return sizes.count - 1 }

    func allocate() {
        // Round each buffer up to 16 floats so every one starts 64-byte aligned.
        let padded = sizes.map { ($0 + 15) / 16 * 16 }
        let total = padded.reduce(0, +)
        let memory = UnsafeMutablePointer<Float>.allocate(capacity: max(total, 16))
        memory.initialize(repeating: 0, count: max(total, 16))
        base = memory
        var offset = 0
        pointers = padded.map { size in defer { offset += size }; return memory + offset }
    }

    subscript(handle: Int) -> UnsafeMutablePointer<Float> { pointers[handle]! }
    var floatCount: Int { sizes.reduce(0, +) }
    deinit { base?.deallocate() }
}

/// What one decoder layer keeps from forward for backward, for `n` tokens.
/// Shapes: C hidden, Q = heads * headDim, K = kvHeads * headDim, F intermediate.
/// `xn1`, `xn2` and `h` are cheap to recompute from what is kept (a norm of a kept input,
/// silu(gate) * up), so all layers share one buffer for each and backward recomputes them
/// (bit for bit: the same kernel on the same inputs): 2C + F fewer floats per token and layer.
struct LayerActivations {
    var xn1: UnsafeMutablePointer<Float>      // (n, C) input RMSNorm output (shared by all layers)
    var rstd1: UnsafeMutablePointer<Float>    // (n)
    var q: UnsafeMutablePointer<Float>        // (n, Q) after q-norm and RoPE
    var k: UnsafeMutablePointer<Float>        // (n, K) after k-norm and RoPE
    var v: UnsafeMutablePointer<Float>        // (n, K)
    var qPre: UnsafeMutablePointer<Float>?    // (n, Q) before q-norm (Qwen3)
    var kPre: UnsafeMutablePointer<Float>?    // (n, K)
    var qRstd: UnsafeMutablePointer<Float>?   // (n * heads)
    var kRstd: UnsafeMutablePointer<Float>?   // (n * kvHeads)
    var att: UnsafeMutablePointer<Float>      // (n, Q) attention output
    var lse: UnsafeMutablePointer<Float>      // (batch, heads, seq)
    var xMid: UnsafeMutablePointer<Float>     // (n, C) residual after attention (aliases the stream in inference)
    var xn2: UnsafeMutablePointer<Float>      // (n, C) (shared by all layers)
    var rstd2: UnsafeMutablePointer<Float>    // (n)
    var gate: UnsafeMutablePointer<Float>     // (n, F), rows 2F apart: the left half of one (n, 2F) matrix
    var up: UnsafeMutablePointer<Float>       // (n, F), rows 2F apart: its right half (gate + F)
    var h: UnsafeMutablePointer<Float>        // (n, F) silu(gate) * up (shared by all layers)
    /// Per projection q, k, v, o, gate, up, down.
    var saved: [LinearSaved]
}

/// All buffers of one forward (+ backward) pass, sized for `capacity` tokens: every buffer
/// scales with the token count alone, so any batch shape of at most that many tokens reuses
/// them (length-grouped windows change the shape at every micro-batch). In inference every
/// layer shares one set, and the residual stream is updated in place.
final class Activations {
    var batch: Int, seq: Int
    let capacity: Int, training: Bool
    /// Training with gradient checkpointing: one set of layer buffers shared by all layers
    /// (backward recomputes each layer from its input), and the random state at each layer's start.
    let checkpointing: Bool
    var layerRandom: [FinchRandom] = []
    let arena = Arena()
    var stream: [UnsafeMutablePointer<Float>] = []   // (L + 1) x (n, C) in training, 1 otherwise
    var layers: [LayerActivations] = []
    var finalNormed: UnsafeMutablePointer<Float>!    // (n, C)
    var finalRstd: UnsafeMutablePointer<Float>!      // (n)
    // Backward scratch, shared by all layers.
    var dStream: UnsafeMutablePointer<Float>!, dMid: UnsafeMutablePointer<Float>!, dNormed: UnsafeMutablePointer<Float>!  // (n, C)
    var dq: UnsafeMutablePointer<Float>!, dqPre: UnsafeMutablePointer<Float>!, datt: UnsafeMutablePointer<Float>!      // (n, Q)
    var dk: UnsafeMutablePointer<Float>!, dkPre: UnsafeMutablePointer<Float>!, dv: UnsafeMutablePointer<Float>!       // (n, K)
    var dh: UnsafeMutablePointer<Float>!                                        // (n, F)
    var dgate: UnsafeMutablePointer<Float>!, dup: UnsafeMutablePointer<Float>!  // (n, F) each, laid out as gate and up
    var loraScratch: UnsafeMutablePointer<Float>!   // (n, rank)

    init(config c: ModelConfig, layers linears: [[Linear]], batch: Int, seq: Int, training: Bool, checkpointing: Bool = false) {
        self.batch = batch; self.seq = seq; self.training = training
        self.checkpointing = training && checkpointing
        capacity = batch * seq
        layerRandom = [FinchRandom](repeating: FinchRandom(seed: 0), count: self.checkpointing ? c.layerCount : 0)
        let n = batch * seq, C = c.hiddenSize, Q = c.qDim, K = c.kvDim, F = c.intermediateSize
        let a = arena
        let streamHandles = (0..<(training ? c.layerCount + 1 : 1)).map { _ in a.reserve(n * C) }
        struct Handles { var all: [Int]; var saved: [(Int?, Int?)] }
        var layerHandles: [Handles] = []
        var maxRank = 0
        // Slots 0 (xn1), 12 (xn2) and 16 (h): one buffer for all layers.
        let sharedSlots: [Int: Int] = [0: a.reserve(n * C), 12: a.reserve(n * C), 16: a.reserve(n * F)]
        for l in 0..<(training && !self.checkpointing ? c.layerCount : 1) {
            let sizes = [0, n, n * Q, n * K, n * K, c.qkNorm ? n * Q : 0, c.qkNorm ? n * K : 0,
                         c.qkNorm ? n * c.headCount : 0, c.qkNorm ? n * c.kvHeadCount : 0,
                         n * Q, batch * c.headCount * seq, training ? n * C : 0, 0, n, n * 2 * F, 0, 0]
            let all = sizes.indices.map { sharedSlots[$0] ?? a.reserve(sizes[$0]) }
            let saved: [(Int?, Int?)] = linears[l].map { linear in
                guard let lora = linear.lora else { return (nil, nil) }
                maxRank = max(maxRank, lora.rank)
                return (a.reserve(n * lora.rank), training && lora.dropout > 0 ? a.reserve(n * linear.inFeatures) : nil)
            }
            layerHandles.append(Handles(all: all, saved: saved))
        }
        let finalHandles = [a.reserve(n * C), a.reserve(n)]
        let backwardHandles = training
            ? [n * C, n * C, n * C, n * Q, c.qkNorm ? n * Q : 0, n * Q, n * K, c.qkNorm ? n * K : 0, n * K, n * F, n * 2 * F, 0,
               n * max(maxRank, 1)].map { a.reserve($0) }
            : []
        a.allocate()

        stream = streamHandles.map { a[$0] }
        for handles in layerHandles {
            let p = handles.all.map { a[$0] }
            layers.append(LayerActivations(
                xn1: p[0], rstd1: p[1], q: p[2], k: p[3], v: p[4],
                qPre: c.qkNorm ? p[5] : nil, kPre: c.qkNorm ? p[6] : nil,
                qRstd: c.qkNorm ? p[7] : nil, kRstd: c.qkNorm ? p[8] : nil,
                att: p[9], lse: p[10], xMid: training ? p[11] : stream[0], xn2: p[12], rstd2: p[13],
                gate: p[14], up: p[14] + F, h: p[16],
                saved: handles.saved.map { LinearSaved(xa: $0.0.map { a[$0] }, dropoutMask: $0.1.map { a[$0] }) }))
        }
        finalNormed = a[finalHandles[0]]
        finalRstd = a[finalHandles[1]]
        if training {
            let p = backwardHandles.map { a[$0] }
            dStream = p[0]; dMid = p[1]; dNormed = p[2]
            dq = p[3]; dqPre = p[4]; datt = p[5]
            dk = p[6]; dkPre = p[7]; dv = p[8]
            dh = p[9]; dgate = p[10]; dup = p[10] + F; loraScratch = p[12]
        }
    }

    func layer(_ l: Int) -> LayerActivations { layers[training && !checkpointing ? l : 0] }
    func input(ofLayer l: Int) -> UnsafeMutablePointer<Float> { stream[training ? l : 0] }
}
