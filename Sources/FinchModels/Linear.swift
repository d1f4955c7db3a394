import Foundation
import FinchKernels
import FinchIO

/// Buffers one linear layer keeps from forward for its backward, sized for `n` tokens.
struct LinearSaved {
    /// xa = dropout(x) A^T  [n, rank] (LoRA only).
    var xa: UnsafeMutablePointer<Float>?
    /// The dropout mask [n, in], 0 or 1/keep (LoRA with dropout while training only).
    var dropoutMask: UnsafeMutablePointer<Float>?
}

/// A projection y = x W^T + bias, with an optional LoRA pair and, in full fine-tuning, gradients.
final class Linear {
    let name: String              // HF module path, e.g. model.layers.0.self_attn.q_proj
    let weight: WeightMatrix      // [out, in]
    let bias: UnsafeMutablePointer<Float>?        // [out]
    var weightGrad: UnsafeMutablePointer<Float>?  // [out, in], full fine-tuning only
    var biasGrad: UnsafeMutablePointer<Float>?    // [out]
    var lora: LoRAModule?
    /// Off: the layer computes the frozen base alone (DPO's reference model in LoRA training).
    var loraEnabled = true
    /// Called with each forward's input x [rows, in] before the product (an importance matrix's
    /// collection); nil otherwise.
    var inputObserver: ((_ x: UnsafePointer<Float>, _ rows: Int) -> Void)?
    private var activeLoRA: LoRAModule? { loraEnabled ? lora : nil }

    var inFeatures: Int { weight.columns }
    var outFeatures: Int { weight.rows }

    init(name: String, weight: WeightMatrix, bias: UnsafeMutablePointer<Float>?) {
        self.name = name
        self.weight = weight
        self.bias = bias
    }

    /// y[n, out] (+)= x[n, in] W^T + bias + scale * dropout(x) A^T B^T.
    func forward(_ x: UnsafePointer<Float>, n: Int, into y: UnsafeMutablePointer<Float>, accumulate: Bool = false,
                 saved: LinearSaved, random: inout FinchRandom, training: Bool) {
        inputObserver?(x, n)
        GEMM.withBF16Copy(of: x, rows: n, ld: inFeatures, precision: weight.precision) { xCopy in
            weight.multiply(x, n: n, into: y, accumulate: accumulate, xCopy: xCopy)
            finishForward(x, xCopy: xCopy, n: n, into: y, ldy: outFeatures, saved: saved, random: &random, training: training)
        }
    }

    /// The forwards of layers that share their input x (q, k, v; gate, up), each into its own
    /// output, whose rows are `ldy` apart (each layer's outputs by default; gate and up write the
    /// two halves of one matrix): the base products go together (one pass over all rows when
    /// decoding, one GEMM when the weights lie one after another), then each layer adds its bias
    /// and LoRA term in order, so dropout draws come as from separate calls.
    static func forward(_ linears: [Linear], _ x: UnsafePointer<Float>, n: Int, into outputs: [UnsafeMutablePointer<Float>],
                        ldy: Int? = nil, saved: [LinearSaved], random: inout FinchRandom, training: Bool) {
        for linear in linears { linear.inputObserver?(x, n) }
        GEMM.withBF16Copy(of: x, rows: n, ld: linears[0].inFeatures, precision: linears[0].weight.precision) { xCopy in
            WeightMatrix.multiply(zip(linears, outputs).map { ($0.weight, $1) }, x, n: n, ldy: ldy, xCopy: xCopy)
            let joint = JointLoRA(linears, outputs: outputs.map { UnsafePointer($0) }, ldy: ldy, saved: saved)
            for i in linears.indices {
                linears[i].finishForward(x, xCopy: linears[i].weight.precision == linears[0].weight.precision ? xCopy : nil, n: n,
                                         into: outputs[i], ldy: ldy ?? linears[i].outFeatures, saved: saved[i],
                                         random: &random, training: training, lora: joint == nil)
            }
            joint?.forward(x, xCopy: xCopy, n: n, into: outputs[0])
        }
    }

    /// Adds the bias and the LoRA term to y = x W^T (rows `ldy` apart).
    private func finishForward(_ x: UnsafePointer<Float>, xCopy: UnsafePointer<UInt16>?, n: Int, into y: UnsafeMutablePointer<Float>, ldy: Int,
                               saved: LinearSaved, random: inout FinchRandom, training: Bool, lora withLoRA: Bool = true) {
        if let bias {
            let out = outFeatures
            parallelFor(n, grain: 64) { range in
                for t in range { let row = y + t * ldy; for j in 0..<out { row[j] += bias[j] } }
            }
        }
        guard withLoRA, let lora = activeLoRA, let xa = saved.xa else { return }
        let count = n * inFeatures
        var dropped: UnsafeMutablePointer<Float>?
        defer { dropped?.deallocate() }
        if training, lora.dropout > 0, let mask = saved.dropoutMask {
            let keep = 1 - lora.dropout, inverse = 1 / keep
            for i in 0..<count { mask[i] = random.nextFloat() < keep ? inverse : 0 }
            dropped = .allocate(capacity: count)
            for i in 0..<count { dropped![i] = x[i] * mask[i] }
        }
        let loraInput = dropped.map { GEMMOperand.f32(UnsafePointer($0)) } ?? .f32(x, copy: xCopy)
        // xa = x A^T  [n, r];  y += scale * xa B^T
        loraProduct(.none, .transpose, m: n, n: lora.rank, k: inFeatures, a: loraInput, lda: inFeatures,
                   b: .f32(lora.a), ldb: inFeatures, c: xa, ldc: lora.rank)
        loraProduct(.none, .transpose, m: n, n: outFeatures, k: lora.rank, alpha: lora.scale, a: .f32(xa), lda: lora.rank,
                   b: .f32(lora.b), ldb: lora.rank, beta: 1, c: y, ldc: ldy)
    }

    /// A product of the LoRA path, in the base weight's precision: under bf16 mixed precision
    /// LoRA's products take bf16-rounded inputs too, as PyTorch's autocast runs PEFT's lora_A
    /// and lora_B (the low-rank matrices and their gradients stay f32).
    private func loraProduct(_ transA: BLAS.Transpose, _ transB: BLAS.Transpose, m: Int, n: Int, k: Int, alpha: Float = 1,
                             a: GEMMOperand, lda: Int, b: GEMMOperand, ldb: Int, beta: Float = 0,
                             c: UnsafeMutablePointer<Float>, ldc: Int, precision: Precision? = nil) {
        GEMM.multiply(transA, transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta,
                      c: c, ldc: ldc, precision: precision ?? weight.precision)
    }

    /// Given dy [n, out]: dx (+)= dy W (+ the LoRA path), and gradients of what trains.
    /// `x` is the forward input; `scratch` holds at least n * rank floats.
    func backward(_ dy: UnsafePointer<Float>, x: UnsafePointer<Float>, n: Int, dx: UnsafeMutablePointer<Float>?,
                  accumulate: Bool, saved: LinearSaved, scratch: UnsafeMutablePointer<Float>) {
        GEMM.withBF16Copy(of: dy, rows: n, ld: outFeatures, precision: weight.precision) { dyCopy in
            if let dx { weight.multiplyTransposed(dy, n: n, into: dx, accumulate: accumulate, dyCopy: dyCopy) }
            finishBackward(dy, dyCopy: dyCopy, lddy: outFeatures, x: x, n: n, dx: dx, saved: saved, scratch: scratch)
        }
    }

    /// The backwards of layers that share their input x, given each one's dy with rows `lddy`
    /// apart (gate and up: the two halves of one matrix): dx (+)= sum_i dy_i W_i in one GEMM when
    /// the weights lie one after another, then each layer's gradients and LoRA path.
    static func backward(_ linears: [Linear], _ dys: [UnsafePointer<Float>], lddy: Int, x: UnsafePointer<Float>, n: Int,
                         dx: UnsafeMutablePointer<Float>, accumulate: Bool, saved: [LinearSaved], scratch: UnsafeMutablePointer<Float>) {
        // One bf16 copy serves every dy when they lie in one matrix of rows lddy apart that starts at the first.
        let oneMatrix = dys.allSatisfy { (0..<lddy).contains($0 - dys[0]) }
            && linears.allSatisfy { $0.weight.precision == linears[0].weight.precision }
        GEMM.withBF16Copy(of: oneMatrix ? dys[0] : nil, rows: n, ld: lddy, precision: linears[0].weight.precision) { dyCopy in
            WeightMatrix.multiplyTransposed(zip(linears, dys).map { ($0.weight, $1) }, lddy: lddy, n: n, into: dx, accumulate: accumulate,
                                            dyCopy: dyCopy)
            let joint = oneMatrix ? JointLoRA(linears, outputs: dys, ldy: lddy, saved: saved) : nil
            for i in linears.indices {
                linears[i].finishBackward(dys[i], dyCopy: dyCopy.map { $0 + (dys[i] - dys[0]) }, lddy: lddy, x: x, n: n, dx: dx,
                                          saved: saved[i], scratch: scratch, lora: joint == nil)
            }
            joint?.backward(dys[0], dyCopy: dyCopy, x: x, n: n, dx: dx)
        }
    }

    /// Everything of the backward after the base product dy W: weight and bias gradients when
    /// they train, and the LoRA path (its gradients, and its term added to dx).
    private func finishBackward(_ dy: UnsafePointer<Float>, dyCopy: UnsafePointer<UInt16>?, lddy: Int, x: UnsafePointer<Float>, n: Int, dx: UnsafeMutablePointer<Float>?,
                                saved: LinearSaved, scratch: UnsafeMutablePointer<Float>, lora withLoRA: Bool = true) {
        let out = outFeatures, inF = inFeatures
        if let weightGrad {
            // dW += dy^T x
            GEMM.multiply(.transpose, .none, m: out, n: inF, k: n, a: .f32(dy, copy: dyCopy), lda: lddy, b: .f32(x), ldb: inF, beta: 1,
                          c: weightGrad, ldc: inF, precision: weight.precision)
        }
        if let biasGrad {
            parallelFor(out, grain: 64) { cols in
                for t in 0..<n { let row = dy + t * lddy; for j in cols { biasGrad[j] += row[j] } }
            }
        }
        guard withLoRA, let lora = activeLoRA, let xa = saved.xa else { return }
        let r = lora.rank
        var dropped: UnsafeMutablePointer<Float>?
        defer { dropped?.deallocate() }
        if let mask = saved.dropoutMask {
            dropped = .allocate(capacity: n * inF)
            for i in 0..<n * inF { dropped![i] = x[i] * mask[i] }
        }
        let loraInput = dropped.map { UnsafePointer($0) } ?? x
        // dB += scale * dy^T xa   [out, r]
        loraProduct(.transpose, .none, m: out, n: r, k: n, alpha: lora.scale, a: .f32(dy, copy: dyCopy), lda: lddy, b: .f32(xa), ldb: r,
                   beta: 1, c: lora.db, ldc: r)
        // dxa = scale * dy B   [n, r]
        let dxa = scratch
        loraProduct(.none, .none, m: n, n: r, k: out, alpha: lora.scale, a: .f32(dy, copy: dyCopy), lda: lddy, b: .f32(lora.b), ldb: r,
                   c: dxa, ldc: r)
        // dA += dxa^T dropout(x)   [r, in], from f32 x: its bf16 copy would cost more than the
        // thin product saves (x has no copy in backward; dy's serves the three products above).
        loraProduct(.transpose, .none, m: r, n: inF, k: n, a: .f32(dxa), lda: r, b: .f32(loraInput), ldb: inF,
                   beta: 1, c: lora.da, ldc: inF, precision: .fp32)
        guard let dx else { return }
        if let mask = saved.dropoutMask, let dxLoRA = dropped {
            // d dropout(x) / dx is the mask itself (0 or 1/keep).
            loraProduct(.none, .none, m: n, n: inF, k: r, a: .f32(dxa), lda: r, b: .f32(lora.a), ldb: inF, c: dxLoRA, ldc: inF)
            for i in 0..<n * inF { dx[i] += dxLoRA[i] * mask[i] }
        } else {
            loraProduct(.none, .none, m: n, n: inF, k: r, a: .f32(dxa), lda: r, b: .f32(lora.a), ldb: inF, beta: 1, c: dx, ldc: inF)
        }
    }
}

/// The LoRA terms of siblings that share x and write one matrix (gate and up: the two halves of
/// [n, 2 * intermediate]), run as one: A stacked [R, in] (R the sum of the ranks) and B block
/// diagonal [out, R], so that each product is dense and made once rather than once per sibling
/// into a strided half, which oneDNN runs off its fast kernels (AMX) and which read or write
/// the wide matrix once per sibling. The zero blocks double the thin products' FLOPs (rank 16:
/// 2 * 16 per output rather than 16); the values are the separate terms' up to the order of
/// summation. Only without dropout, with every sibling's pair active at one scale and precision.
struct JointLoRA {
    /// Tests turn it off to compare with the separate terms.
    nonisolated(unsafe) static var enabled = true

    let linears: [Linear]
    let loras: [LoRAModule]
    let saved: [LinearSaved]
    let ranks: Int, inFeatures: Int, outFeatures: Int
    let scale: Float
    let precision: Precision

    /// Nil unless `outputs` lie one after another in rows `ldy` apart that hold nothing else.
    init?(_ linears: [Linear], outputs: [UnsafePointer<Float>], ldy: Int?, saved: [LinearSaved]) {
        guard Self.enabled, linears.count > 1, let ldy else { return nil }
        var loras: [LoRAModule] = []
        var column = 0
        for (i, linear) in linears.enumerated() {
            guard linear.loraEnabled, let lora = linear.lora, saved[i].xa != nil, lora.dropout == 0,
                  lora.scale == linears[0].lora?.scale, linear.weight.precision == linears[0].weight.precision,
                  linear.inFeatures == linears[0].inFeatures, outputs[i] == outputs[0] + column else { return nil }
            loras.append(lora)
            column += linear.outFeatures
        }
        guard column == ldy else { return nil }
        self.linears = linears; self.loras = loras; self.saved = saved
        ranks = loras.reduce(0) { $0 + $1.rank }
        inFeatures = linears[0].inFeatures; outFeatures = column
        scale = loras[0].scale
        precision = linears[0].weight.precision
    }

    /// A of every sibling, one after another [R, in].
    private func stackedA() -> UnsafeMutablePointer<Float> {
        let a = UnsafeMutablePointer<Float>.allocate(capacity: ranks * inFeatures)
        var row = 0
        for lora in loras { (a + row * inFeatures).update(from: lora.a, count: lora.rank * inFeatures); row += lora.rank }
        return a
    }

    /// B of every sibling on the diagonal of [out, R], zeros elsewhere.
    private func blockDiagonalB() -> UnsafeMutablePointer<Float> {
        let b = UnsafeMutablePointer<Float>.allocate(capacity: outFeatures * ranks)
        b.initialize(repeating: 0, count: outFeatures * ranks)
        var row = 0, column = 0
        for (linear, lora) in zip(linears, loras) {
            for o in 0..<linear.outFeatures { (b + (row + o) * ranks + column).update(from: lora.b + o * lora.rank, count: lora.rank) }
            row += linear.outFeatures; column += lora.rank
        }
        return b
    }

    /// y [n, out] += scale * (x A^T) B^T, keeping each sibling's xa for backward.
    func forward(_ x: UnsafePointer<Float>, xCopy: UnsafePointer<UInt16>?, n: Int, into y: UnsafeMutablePointer<Float>) {
        let a = stackedA(), b = blockDiagonalB(), xa = UnsafeMutablePointer<Float>.allocate(capacity: n * ranks)
        defer { a.deallocate(); b.deallocate(); xa.deallocate() }
        GEMM.multiply(.none, .transpose, m: n, n: ranks, k: inFeatures, a: .f32(x, copy: xCopy), lda: inFeatures,
                      b: .f32(a), ldb: inFeatures, c: xa, ldc: ranks, precision: precision)
        var column = 0
        for (lora, kept) in zip(loras, saved) {
            let dst = kept.xa!
            for t in 0..<n { (dst + t * lora.rank).update(from: xa + t * ranks + column, count: lora.rank) }
            column += lora.rank
        }
        GEMM.multiply(.none, .transpose, m: n, n: outFeatures, k: ranks, alpha: scale, a: .f32(xa), lda: ranks,
                      b: .f32(b), ldb: ranks, beta: 1, c: y, ldc: outFeatures, precision: precision)
    }

    /// Given dy [n, out]: each sibling's dA and dB (accumulated), and dx += their terms.
    func backward(_ dy: UnsafePointer<Float>, dyCopy: UnsafePointer<UInt16>?, x: UnsafePointer<Float>, n: Int,
                  dx: UnsafeMutablePointer<Float>?) {
        let a = stackedA(), b = blockDiagonalB()
        let xa = UnsafeMutablePointer<Float>.allocate(capacity: n * ranks), dxa = UnsafeMutablePointer<Float>.allocate(capacity: n * ranks)
        let db = UnsafeMutablePointer<Float>.allocate(capacity: outFeatures * ranks)
        let da = UnsafeMutablePointer<Float>.allocate(capacity: ranks * inFeatures)
        defer { a.deallocate(); b.deallocate(); xa.deallocate(); dxa.deallocate(); db.deallocate(); da.deallocate() }
        var column = 0
        for (lora, kept) in zip(loras, saved) {
            let src = kept.xa!
            for t in 0..<n { (xa + t * ranks + column).update(from: src + t * lora.rank, count: lora.rank) }
            column += lora.rank
        }
        // dB = scale * dy^T xa [out, R] (its diagonal blocks); dxa = scale * dy B [n, R]
        GEMM.multiply(.transpose, .none, m: outFeatures, n: ranks, k: n, alpha: scale, a: .f32(dy, copy: dyCopy), lda: outFeatures,
                      b: .f32(xa), ldb: ranks, c: db, ldc: ranks, precision: precision)
        GEMM.multiply(.none, .none, m: n, n: ranks, k: outFeatures, alpha: scale, a: .f32(dy, copy: dyCopy), lda: outFeatures,
                      b: .f32(b), ldb: ranks, c: dxa, ldc: ranks, precision: precision)
        // dA = dxa^T x [R, in], from f32 x as the separate terms do
        GEMM.multiply(.transpose, .none, m: ranks, n: inFeatures, k: n, a: .f32(dxa), lda: ranks, b: .f32(x), ldb: inFeatures,
                      c: da, ldc: inFeatures, precision: .fp32)
        var row = 0
        column = 0
        for (linear, lora) in zip(linears, loras) {
            for o in 0..<linear.outFeatures {
                let dst = lora.db + o * lora.rank, src = db + (row + o) * ranks + column
                for j in 0..<lora.rank { dst[j] += src[j] }
            }
            let dst = lora.da, src = da + column * inFeatures
            for i in 0..<lora.rank * inFeatures { dst[i] += src[i] }
            row += linear.outFeatures; column += lora.rank
        }
        guard let dx else { return }
        GEMM.multiply(.none, .none, m: n, n: inFeatures, k: ranks, a: .f32(dxa), lda: ranks, b: .f32(a), ldb: inFeatures,
                      beta: 1, c: dx, ldc: inFeatures, precision: precision)
    }
}
