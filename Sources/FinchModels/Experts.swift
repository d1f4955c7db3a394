import Foundation
import FinchKernels

/// The router's choices over a pass, summed over every routed layer and real token: what the
/// load-balancing loss is made of (`MixtureOfExperts`). `counts[e]` top-k choices of expert e,
/// `probabilities[e]` the sum of its router probability, `rows` the (layer, token) pairs.
package struct RouterTally: Sendable, Equatable {
    package var counts: [Double]
    package var probabilities: [Double]
    package var rows: Double

    package init(experts: Int) {
        counts = [Double](repeating: 0, count: experts)
        probabilities = counts
        rows = 0
    }

    /// The values in one array (for an all-reduce) and back.
    package var flattened: [Double] { counts + probabilities + [rows] }
    package init(flattened v: [Double]) {
        let e = (v.count - 1) / 2
        counts = Array(v[0..<e]); probabilities = Array(v[e..<2 * e]); rows = v[2 * e]
    }

    /// transformers' load-balancing loss of this tally: E * sum_e (counts_e / rows) (probabilities_e / rows).
    package var loss: Double {
        guard rows > 0 else { return 0 }
        return Double(counts.count) * zip(counts, probabilities).reduce(0) { $0 + $1.0 * $1.1 } / (rows * rows)
    }
}

/// LoRA on one projection of every expert of a layer, in PEFT's layout for a 3D parameter
/// (`target_parameters`): A [r * E, in] holds expert e's A in rows e*r..<(e+1)*r; B [out, r * E]
/// holds expert e's column j at j * E + e. Each expert's B is gathered into a contiguous
/// [out, r] copy before a forward, and its gradient added back into B's layout after backward.
final class ExpertLoRA {
    let rank: Int, scale: Float, experts: Int, inFeatures: Int, outFeatures: Int
    let a, b, da, db: UnsafeMutablePointer<Float>
    /// Per expert [out, r], contiguous.
    let gathered, gatheredGrad: UnsafeMutablePointer<Float>

    init(rank: Int, scale: Float, experts: Int, inFeatures: Int, outFeatures: Int,
         a: UnsafeMutablePointer<Float>, b: UnsafeMutablePointer<Float>, da: UnsafeMutablePointer<Float>, db: UnsafeMutablePointer<Float>) {
        self.rank = rank; self.scale = scale; self.experts = experts; self.inFeatures = inFeatures; self.outFeatures = outFeatures
        self.a = a; self.b = b; self.da = da; self.db = db
        gathered = .allocate(capacity: experts * outFeatures * rank)
        gatheredGrad = .allocate(capacity: experts * outFeatures * rank)
        gatheredGrad.initialize(repeating: 0, count: experts * outFeatures * rank)
    }

    deinit { gathered.deallocate(); gatheredGrad.deallocate() }

    /// Expert e's pair as a `LoRAModule` over rows `firstRow..<firstRow + rows` of its B.
    func module(expert e: Int, firstRow: Int = 0) -> LoRAModule {
        let offset = e * outFeatures * rank + firstRow * rank
        return LoRAModule(rank: rank, scale: scale, dropout: 0, a: a + e * rank * inFeatures, b: gathered + offset,
                          da: da + e * rank * inFeatures, db: gatheredGrad + offset)
    }

    /// Copies B into the per-expert layout (the parameters may have changed since the last forward).
    func gather() {
        for e in 0..<experts {
            for o in 0..<outFeatures { for j in 0..<rank { gathered[(e * outFeatures + o) * rank + j] = b[o * rank * experts + j * experts + e] } }
        }
    }

    /// Adds the per-expert gradients into B's gradient and clears them.
    func scatterGradients() {
        for e in 0..<experts {
            for o in 0..<outFeatures {
                for j in 0..<rank {
                    let i = (e * outFeatures + o) * rank + j
                    db[o * rank * experts + j * experts + e] += gatheredGrad[i]
                    gatheredGrad[i] = 0
                }
            }
        }
    }
}

/// Floats kept from one pass to the next, grown when a pass needs more (uninitialised): fresh
/// large allocations per pass would be page-faulted in and zeroed by the kernel every time.
final class GrowableBuffer {
    private(set) var pointer: UnsafeMutablePointer<Float>
    private(set) var capacity: Int
    init() { pointer = .allocate(capacity: 1); capacity = 1 }
    func reserve(_ count: Int) -> UnsafeMutablePointer<Float> {
        if count > capacity {
            pointer.deallocate()
            pointer = .allocate(capacity: count)
            capacity = count
        }
        return pointer
    }
    deinit { pointer.deallocate() }
}

/// A routed MLP layer (`MixtureOfExperts`): the router, each expert's gate, up and down, and what
/// a training forward keeps for backward. Each expert computes only the tokens routed to it: its
/// rows are gathered into one matrix, so each expert runs one GEMM per projection.
final class ExpertLayer {
    let settings: MixtureOfExperts
    let activation: MLPActivation
    /// [E, C]; its products are f32 in every precision, so that bf16 rounding cannot change a choice.
    let router: Linear
    /// Per expert: gate, up, down.
    let experts: [[Linear]]
    let gateUpLoRA: ExpertLoRA?, downLoRA: ExpertLoRA?

    /// What the last training forward routed, for backward; the computed values are in the stores.
    struct Saved {
        var n = 0
        var probabilities: [Float] = []          // [n, E] softmax of the router logits
        var chosen: [Int] = []                   // [n, k] experts, by decreasing probability
        var weights: [Float] = []                // [n, k] their weights in the output
        var tokens: [[Int]] = []                 // per expert: the tokens routed to it
        var slots: [[Int]] = []                  // per expert: the choice (0..<k) of each
        var offsets: [Int] = []                  // per expert: its first row in the stores
    }
    private(set) var saved = Saved()
    /// A training forward's per-expert values, rows of all experts one after another (n * k rows):
    /// gate/up [rows, 2I], outputs before weighting [rows, C], LoRA's x A^T of gate, up, down [rows, r].
    private let gateUpStore = GrowableBuffer(), outputStore = GrowableBuffer()
    private let loraStores = [GrowableBuffer(), GrowableBuffer(), GrowableBuffer()]

    init(settings: MixtureOfExperts, activation: MLPActivation, router: Linear, experts: [[Linear]],
         gateUpLoRA: ExpertLoRA?, downLoRA: ExpertLoRA?) {
        self.settings = settings; self.activation = activation; self.router = router; self.experts = experts
        self.gateUpLoRA = gateUpLoRA; self.downLoRA = downLoRA
    }

    var linears: [Linear] { [router] + experts.flatMap { $0 } }
    private var intermediate: Int { experts[0][0].outFeatures }
    private var ranks: [Int] { experts[0].map { $0.lora?.rank ?? 0 } }

    /// out[n, C] += the layer's output for x[n, C] (the MLP's normed input). `mask` [n] marks real
    /// tokens (1) for the tally; with `keep`, what backward needs is kept, and the choices are
    /// added to `tally` where there is one.
    func forward(_ x: UnsafePointer<Float>, n: Int, into out: UnsafeMutablePointer<Float>, mask: UnsafePointer<Float>?,
                 keep: Bool, tally: inout RouterTally?, random: inout FinchRandom, training: Bool) {
        let E = settings.expertCount, k = settings.topK, C = router.inFeatures, I = intermediate
        var probabilities = [Float](repeating: 0, count: n * E), chosen = [Int](repeating: 0, count: n * k)
        var weights = [Float](repeating: 0, count: n * k)
        var tokens = [[Int]](repeating: [], count: E), slots = tokens
        ScratchPool.shared.withBuffer(capacity: n * E) { logits in
            router.forward(x, n: n, into: logits, saved: LinearSaved(), random: &random, training: false)
            for t in 0..<n {
                let p = t * E, z = logits + p
                var m = z[0]
                for e in 1..<max(E, 1) { m = max(m, z[e]) }
                var sum: Float = 0
                for e in 0..<E { probabilities[p + e] = expf(z[e] - m); sum += probabilities[p + e] }
                for e in 0..<E { probabilities[p + e] /= sum }
                // The k largest, by decreasing probability (the lower index first on a tie).
                var picked: [Int] = []
                for _ in 0..<k {
                    var best = -1
                    for e in 0..<E where !picked.contains(e) && (best < 0 || probabilities[p + e] > probabilities[p + best]) { best = e }
                    picked.append(best)
                }
                let total = picked.reduce(Float(0)) { $0 + probabilities[p + $1] }
                for (slot, e) in picked.enumerated() {
                    chosen[t * k + slot] = e
                    weights[t * k + slot] = settings.normalizesTopK ? probabilities[p + e] / total : probabilities[p + e]
                    tokens[e].append(t); slots[e].append(slot)
                }
                if tally != nil {
                    let real = Double(mask?[t] ?? 1)
                    if real != 0 {
                        for e in picked { tally!.counts[e] += real }
                        for e in 0..<E { tally!.probabilities[e] += real * Double(probabilities[p + e]) }
                        tally!.rows += real
                    }
                }
            }
        }
        gateUpLoRA?.gather(); downLoRA?.gather()
        var offsets: [Int] = [], rows = 0
        for e in 0..<E { offsets.append(rows); rows += tokens[e].count }
        let ranks = self.ranks, maxRows = tokens.map(\.count).max() ?? 0
        let perRow = 2 * I + C + ranks.reduce(0, +)
        // Kept values go to the stores in training, to scratch otherwise (an inference pass between a
        // training forward and its backward, a reference model's, must leave them alone).
        func withValues(_ body: (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>, [UnsafeMutablePointer<Float>]) -> Void) {
            if keep {
                body(gateUpStore.reserve(rows * 2 * I), outputStore.reserve(rows * C), (0..<3).map { loraStores[$0].reserve(rows * max(ranks[$0], 1)) })
            } else {
                ScratchPool.shared.withBuffer(capacity: rows * perRow) { p in
                    let lora = p + rows * (2 * I + C)
                    body(p, p + rows * 2 * I, [lora, lora + rows * ranks[0], lora + rows * (ranks[0] + ranks[1])])
                }
            }
        }
        withValues { gateUpAll, outputAll, loraAll in
            ScratchPool.shared.withBuffer(capacity: maxRows * (C + I)) { temporary in
                let xe = temporary, h = temporary + maxRows * C
                for e in 0..<E where !tokens[e].isEmpty {
                    let count = tokens[e].count, first = offsets[e]
                    let (gate, up, down) = (experts[e][0], experts[e][1], experts[e][2])
                    let gateUp = gateUpAll + first * 2 * I, output = outputAll + first * C
                    let savedLinears = (0..<3).map { ranks[$0] > 0 ? LinearSaved(xa: loraAll[$0] + first * ranks[$0]) : LinearSaved() }
                    for (i, t) in tokens[e].enumerated() { (xe + i * C).update(from: x + t * C, count: C) }
                    Linear.forward([gate, up], xe, n: count, into: [gateUp, gateUp + I], ldy: 2 * I,
                                   saved: [savedLinears[0], savedLinears[1]], random: &random, training: training)
                    gatedActivationForward(activation, h, gate: gateUp, up: gateUp + I, rows: count, width: I, stride: 2 * I)
                    down.forward(h, n: count, into: output, saved: savedLinears[2], random: &random, training: training)
                    for (i, t) in tokens[e].enumerated() {
                        let w = weights[t * k + slots[e][i]]
                        let dst = out + t * C, src = output + i * C
                        for c in 0..<C { dst[c] += w * src[c] }
                    }
                }
            }
        }
        if keep { saved = Saved(n: n, probabilities: probabilities, chosen: chosen, weights: weights, tokens: tokens, slots: slots, offsets: offsets) }
    }

    /// Backward of the last kept forward: given dOut [n, C], writes dx [n, C] (the gradient of the
    /// MLP's normed input) and adds the gradients of what trains. `auxGradient[e]` is d loss / d
    /// (router probability of e) at each real token, from the load-balancing loss (empty: none).
    func backward(_ dOut: UnsafePointer<Float>, x: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, mask: UnsafePointer<Float>?,
                  auxGradient: [Float]) {
        let s = saved, n = s.n, E = settings.expertCount, k = settings.topK, C = router.inFeatures, I = intermediate
        let ranks = self.ranks, maxRows = s.tokens.map(\.count).max() ?? 0, maxRank = max(ranks.max() ?? 0, 1)
        dx.update(repeating: 0, count: n * C)
        var dWeights = [Float](repeating: 0, count: n * k)
        ScratchPool.shared.withBuffer(capacity: maxRows * (3 * C + 4 * I + maxRank)) { temporary in
            let dy = temporary, xe = dy + maxRows * C, dxe = xe + maxRows * C
            let h = dxe + maxRows * C, dh = h + maxRows * I, dGateUp = dh + maxRows * I, scratch = dGateUp + maxRows * 2 * I
            for e in 0..<E where !s.tokens[e].isEmpty {
                let count = s.tokens[e].count, first = s.offsets[e], (gate, up, down) = (experts[e][0], experts[e][1], experts[e][2])
                let gateUp = gateUpStore.pointer + first * 2 * I, output = outputStore.pointer + first * C
                for (i, t) in s.tokens[e].enumerated() {
                    let slot = t * k + s.slots[e][i], w = s.weights[slot]
                    let d = dOut + t * C, o = output + i * C, row = dy + i * C
                    var dot: Float = 0
                    for c in 0..<C { row[c] = w * d[c]; dot += d[c] * o[c] }
                    dWeights[slot] = dot
                    (xe + i * C).update(from: x + t * C, count: C)
                }
                let savedLinears = (0..<3).map { ranks[$0] > 0 ? LinearSaved(xa: loraStores[$0].pointer + first * ranks[$0]) : LinearSaved() }
                gatedActivationForward(activation, h, gate: gateUp, up: gateUp + I, rows: count, width: I, stride: 2 * I)
                down.backward(dy, x: h, n: count, dx: dh, accumulate: false, saved: savedLinears[2], scratch: scratch)
                gatedActivationBackward(activation, dgate: dGateUp, dup: dGateUp + I, dh: dh, gate: gateUp, up: gateUp + I,
                                        rows: count, width: I, stride: 2 * I)
                Linear.backward([gate, up], [dGateUp, dGateUp + I], lddy: 2 * I, x: xe, n: count, dx: dxe, accumulate: false,
                                saved: [savedLinears[0], savedLinears[1]], scratch: scratch)
                for (i, t) in s.tokens[e].enumerated() {
                    let dst = dx + t * C, src = dxe + i * C
                    for c in 0..<C { dst[c] += src[c] }
                }
            }
        }
        gateUpLoRA?.scatterGradients(); downLoRA?.scatterGradients()
        // Through the weights to the probabilities (w_j = p_j / S with S the chosen ones' sum when
        // renormalised), plus the load-balancing loss's term, then the softmax to the router's logits.
        ScratchPool.shared.withBuffer(capacity: n * E + maxRank) { dLogits in
            var dp = [Float](repeating: 0, count: E)
            for t in 0..<n {
                for e in 0..<E { dp[e] = 0 }
                let p = t * E
                if settings.normalizesTopK {
                    let total = (0..<k).reduce(Float(0)) { $0 + s.probabilities[p + s.chosen[t * k + $1]] }
                    let mixed = (0..<k).reduce(Float(0)) { $0 + dWeights[t * k + $1] * s.weights[t * k + $1] }
                    for j in 0..<k { dp[s.chosen[t * k + j]] += (dWeights[t * k + j] - mixed) / total }
                } else {
                    for j in 0..<k { dp[s.chosen[t * k + j]] += dWeights[t * k + j] }
                }
                let real = mask?[t] ?? 1
                if !auxGradient.isEmpty && real != 0 { for e in 0..<E { dp[e] += real * auxGradient[e] } }
                let inner = (0..<E).reduce(Float(0)) { $0 + dp[$1] * s.probabilities[p + $1] }
                for e in 0..<E { dLogits[p + e] = s.probabilities[p + e] * (dp[e] - inner) }
            }
            // The router has no LoRA pair: its scratch is never read.
            router.backward(dLogits, x: x, n: n, dx: dx, accumulate: true, saved: LinearSaved(), scratch: dLogits + n * E)
        }
    }
}
