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
            for i in linears.indices {
                linears[i].finishForward(x, xCopy: linears[i].weight.precision == linears[0].weight.precision ? xCopy : nil, n: n,
                                         into: outputs[i], ldy: ldy ?? linears[i].outFeatures, saved: saved[i],
                                         random: &random, training: training)
            }
        }
    }

    /// Adds the bias and the LoRA term to y = x W^T (rows `ldy` apart).
    private func finishForward(_ x: UnsafePointer<Float>, xCopy: UnsafePointer<UInt16>?, n: Int, into y: UnsafeMutablePointer<Float>, ldy: Int,
                               saved: LinearSaved, random: inout FinchRandom, training: Bool) {
        if let bias {
            let out = outFeatures
            parallelFor(n, grain: 64) { range in
                for t in range { let row = y + t * ldy; for j in 0..<out { row[j] += bias[j] } }
            }
        }
        guard let lora = activeLoRA, let xa = saved.xa else { return }
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
            for i in linears.indices {
                linears[i].finishBackward(dys[i], dyCopy: dyCopy.map { $0 + (dys[i] - dys[0]) }, lddy: lddy, x: x, n: n, dx: dx,
                                          saved: saved[i], scratch: scratch)
            }
        }
    }

    /// Everything of the backward after the base product dy W: weight and bias gradients when
    /// they train, and the LoRA path (its gradients, and its term added to dx).
    private func finishBackward(_ dy: UnsafePointer<Float>, dyCopy: UnsafePointer<UInt16>?, lddy: Int, x: UnsafePointer<Float>, n: Int, dx: UnsafeMutablePointer<Float>?,
                                saved: LinearSaved, scratch: UnsafeMutablePointer<Float>) {
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
        guard let lora = activeLoRA, let xa = saved.xa else { return }
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
