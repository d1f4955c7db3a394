import FinchKernels
import FinchIO

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
    // With branch output norms (Gemma) only:
    var attentionOutput: UnsafeMutablePointer<Float>? = nil      // (n, C) o(att), before its norm
    var attentionOutputRstd: UnsafeMutablePointer<Float>? = nil  // (n)
    var mlpOutput: UnsafeMutablePointer<Float>? = nil            // (n, C) down(h), before its norm
    var mlpOutputRstd: UnsafeMutablePointer<Float>? = nil        // (n)
}

/// One layer's q, k, v, attention output and gate/up (n tokens each) as bf16, kept from forward
/// for backward in bf16 training: the f32 buffers of these are then shared by all layers (like
/// xn1), rounded to bf16 in place in forward so that forward and backward see the same values,
/// and refilled from these copies before the layer's backward. PyTorch's autocast keeps these
/// tensors in bf16 too (they are outputs of bf16 products); the residual stream, norms' inputs
/// and LoRA's low-rank products stay f32. Saves 2(Q + 2K + Q + 2F) bytes per token and layer.
struct CompressedLayer {
    let q: UnsafeMutablePointer<UInt16>       // (n, Q)
    let k: UnsafeMutablePointer<UInt16>       // (n, K)
    let v: UnsafeMutablePointer<UInt16>       // (n, K)
    let att: UnsafeMutablePointer<UInt16>     // (n, Q)
    let gateUp: UnsafeMutablePointer<UInt16>  // (n, 2F)
}

/// All buffers of one forward (+ backward) pass, sized for `capacity` tokens: every buffer
/// scales with the token count alone, so any batch shape of at most that many tokens reuses
/// them (length-grouped windows change the shape at every micro-batch). In inference every
/// layer shares one set, and the residual stream is updated in place.
final package class Activations {
    var batch: Int, seq: Int
    let capacity: Int, training: Bool
    /// Training with gradient checkpointing: one set of layer buffers shared by all layers
    /// (backward recomputes each layer from its input), and the random state at each layer's start.
    let checkpointing: Bool
    var layerRandom: [FinchRandom] = []
    /// Training in bf16 without checkpointing: each layer's q, k, v, att and gate/up kept in bf16
    /// (`CompressedLayer`), their f32 buffers shared by all layers. Empty otherwise.
    private(set) var compressed: [CompressedLayer] = []
    private var compressedStorage: UnsafeMutablePointer<UInt16>?
    /// bf16 values in `compressed`, all layers.
    private(set) var keptBF16Count = 0
    let arena = Arena()
    var stream: [UnsafeMutablePointer<Float>] = []   // (L + 1) x (n, C) in training, 1 otherwise
    var layers: [LayerActivations] = []
    var finalNormed: UnsafeMutablePointer<Float>!    // (n, C)
    var finalRstd: UnsafeMutablePointer<Float>!      // (n)
    /// A branch output's norm (Gemma), before it is added to the stream (n, C); shared by all layers.
    var branchNormed: UnsafeMutablePointer<Float>?
    // Backward scratch, shared by all layers.
    var dStream: UnsafeMutablePointer<Float>!, dMid: UnsafeMutablePointer<Float>!, dNormed: UnsafeMutablePointer<Float>!  // (n, C)
    var dq: UnsafeMutablePointer<Float>!, dqPre: UnsafeMutablePointer<Float>!, datt: UnsafeMutablePointer<Float>!      // (n, Q)
    var dk: UnsafeMutablePointer<Float>!, dkPre: UnsafeMutablePointer<Float>!, dv: UnsafeMutablePointer<Float>!       // (n, K)
    var dh: UnsafeMutablePointer<Float>!                                        // (n, F)
    var dgate: UnsafeMutablePointer<Float>!, dup: UnsafeMutablePointer<Float>!  // (n, F) each, laid out as gate and up
    var loraScratch: UnsafeMutablePointer<Float>!   // (n, rank)
    var dBranch: UnsafeMutablePointer<Float>?       // (n, C) d of a branch output before its norm (Gemma)

    init(config c: ModelConfig, layers linears: [[Linear]], batch: Int, seq: Int, training: Bool, checkpointing: Bool = false,
         bf16Saved: Bool = false) {
        self.batch = batch; self.seq = seq; self.training = training
        self.checkpointing = training && checkpointing
        let compress = training && !self.checkpointing && bf16Saved
        capacity = batch * seq
        layerRandom = [FinchRandom](repeating: FinchRandom(seed: 0), count: self.checkpointing ? c.layerCount : 0)
        let n = batch * seq, C = c.hiddenSize, Q = c.qDim, K = c.kvDim, F = c.intermediateSize
        let a = arena
        let streamHandles = (0..<(training ? c.layerCount + 1 : 1)).map { _ in a.reserve(n * C) }
        struct Handles { var all: [Int]; var saved: [(Int?, Int?)]; var branch: [Int] }
        var layerHandles: [Handles] = []
        var maxRank = 0
        // Slots 0 (xn1), 12 (xn2) and 16 (h): one buffer for all layers; with bf16 copies kept per
        // layer, also 2 (q), 3 (k), 4 (v), 9 (att) and 14 (gate/up).
        var sharedSlots: [Int: Int] = [0: a.reserve(n * C), 12: a.reserve(n * C), 16: a.reserve(n * F)]
        if compress {
            for (slot, size) in [2: n * Q, 3: n * K, 4: n * K, 9: n * Q, 14: n * 2 * F] { sharedSlots[slot] = a.reserve(size) }
        }
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
            // o(att), its rstd, down(h), its rstd: per layer in training, as the other saved values.
            let branch = c.branchOutputNorms ? [a.reserve(n * C), a.reserve(n), a.reserve(n * C), a.reserve(n)] : []
            layerHandles.append(Handles(all: all, saved: saved, branch: branch))
        }
        let branchNormedHandle = c.branchOutputNorms ? a.reserve(n * C) : nil
        let dBranchHandle = c.branchOutputNorms && training ? a.reserve(n * C) : nil
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
            if !handles.branch.isEmpty {
                let b = handles.branch.map { a[$0] }
                layers[layers.count - 1].attentionOutput = b[0]; layers[layers.count - 1].attentionOutputRstd = b[1]
                layers[layers.count - 1].mlpOutput = b[2]; layers[layers.count - 1].mlpOutputRstd = b[3]
            }
        }
        branchNormed = branchNormedHandle.map { a[$0] }
        dBranch = dBranchHandle.map { a[$0] }
        if compress {
            let perLayer = [n * Q, n * K, n * K, n * Q, n * 2 * F]
            let layerCount = c.layerCount, layerSize = perLayer.reduce(0, +)
            keptBF16Count = layerCount * layerSize
            let storage = UnsafeMutablePointer<UInt16>.allocate(capacity: keptBF16Count)
            compressedStorage = storage
            compressed = (0..<layerCount).map { l in
                var p = storage + l * layerSize
                let parts = perLayer.map { size in defer { p += size }; return p }
                return CompressedLayer(q: parts[0], k: parts[1], v: parts[2], att: parts[3], gateUp: parts[4])
            }
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

    deinit { compressedStorage?.deallocate() }

    func layer(_ l: Int) -> LayerActivations { layers[training && !checkpointing ? l : 0] }

    /// The parts of a layer's forward output that are kept in bf16 (in forward order).
    enum KeptPart { case qkv, attention, gateUp }

    /// Forward, with bf16 copies kept: rounds the part's f32 buffers in place and keeps them as
    /// layer `l`'s bf16 copy. Does nothing otherwise.
    func keep(_ part: KeptPart, layer l: Int, config c: ModelConfig) {
        guard !compressed.isEmpty else { return }
        let a = layers[l], kept = compressed[l], n = batch * seq
        switch part {
        case .qkv:
            BFloat16.roundAndPack(a.q, into: kept.q, count: n * c.qDim)
            BFloat16.roundAndPack(a.k, into: kept.k, count: n * c.kvDim)
            BFloat16.roundAndPack(a.v, into: kept.v, count: n * c.kvDim)
        case .attention: BFloat16.roundAndPack(a.att, into: kept.att, count: n * c.qDim)
        case .gateUp: BFloat16.roundAndPack(a.gate, into: kept.gateUp, count: n * 2 * c.intermediateSize)
        }
    }

    /// Backward, with bf16 copies kept: refills the shared f32 buffers from layer `l`'s copies.
    func restore(layer l: Int, config c: ModelConfig) {
        guard !compressed.isEmpty else { return }
        let a = layers[l], kept = compressed[l], n = batch * seq
        BFloat16.unpack(kept.q, into: a.q, count: n * c.qDim)
        BFloat16.unpack(kept.k, into: a.k, count: n * c.kvDim)
        BFloat16.unpack(kept.v, into: a.v, count: n * c.kvDim)
        BFloat16.unpack(kept.att, into: a.att, count: n * c.qDim)
        BFloat16.unpack(kept.gateUp, into: a.gate, count: n * 2 * c.intermediateSize)
    }
    func input(ofLayer l: Int) -> UnsafeMutablePointer<Float> { stream[training ? l : 0] }
}
