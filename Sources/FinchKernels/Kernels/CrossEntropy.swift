import Foundation

/// Per-row figures `crossEntropy` can write, each [rows] (0 at skipped rows).
package struct CrossEntropyOutputs {
    /// log p(target).
    var logProbs: UnsafeMutablePointer<Float>?
    /// Entropy of the row's softmax, -sum p log p.
    var entropies: UnsafeMutablePointer<Float>?
    /// 1 where the argmax is the target, else 0.
    var correct: UnsafeMutablePointer<Float>?

    package init(logProbs: UnsafeMutablePointer<Float>? = nil, entropies: UnsafeMutablePointer<Float>? = nil,
                correct: UnsafeMutablePointer<Float>? = nil) {
        self.logProbs = logProbs; self.entropies = entropies; self.correct = correct
    }
}

/// What the backward half of `crossEntropy` should produce.
package struct CrossEntropyBackward {
    /// d loss / d logit_r = rowWeights[r] * (softmax_r - onehot(target_r)); nil weights mean `uniformWeight` for all.
    var rowWeights: UnsafePointer<Float>?
    var uniformWeight: Float
    /// dHidden [rows, dim] += ...
    var dHidden: UnsafeMutablePointer<Float>
    /// dHead [vocab, dim] += ..., in full fine-tuning.
    var dHead: UnsafeMutablePointer<Float>?

    package init(rowWeights: UnsafePointer<Float>? = nil, uniformWeight: Float = 1,
                dHidden: UnsafeMutablePointer<Float>, dHead: UnsafeMutablePointer<Float>? = nil) {
        self.rowWeights = rowWeights; self.uniformWeight = uniformWeight; self.dHidden = dHidden; self.dHead = dHead
    }
}

/// Softmax cross-entropy of the language-model head, fused with its backward.
///
/// hidden [rows, dim] are the final normed states; logits = hidden head^T [rows, vocab] are
/// never held for more than `chunkRows` rows at once (256 rows of SmolLM2's 49152-token vocabulary:
/// 50 MB, and a 2048-row head pass 10-15% faster than with 128). Rows whose target is negative are skipped
/// entirely (no head work). Returns the sum of -log p(target) over scored rows and their count.
/// With a `softcap` c > 0 the logits are c * tanh(logit / c) (Gemma's `final_logit_softcapping`);
/// then, with a `logitScale` s != 1, s times that (GRPO's log-probs at a sampling temperature T: s = 1 / T).
@discardableResult
package func crossEntropy(hidden: UnsafePointer<Float>, targets: UnsafePointer<Int32>, rows: Int,
                         head: WeightMatrix, outputs: CrossEntropyOutputs = CrossEntropyOutputs(),
                         backward: CrossEntropyBackward? = nil, softcap: Float = 0, logitScale: Float = 1,
                         chunkRows: Int = 256) -> (loss: Double, count: Int) {
    let vocab = head.rows
    let scored = (0..<rows).filter { targets[$0] >= 0 }
    for r in 0..<rows where targets[r] < 0 {
        outputs.logProbs?[r] = 0; outputs.entropies?[r] = 0; outputs.correct?[r] = 0
    }
    guard !scored.isEmpty else { return (0, 0) }
    // A softcap's backward keeps 1 - tanh^2 of a whole chunk of logits: fewer rows per chunk
    // (32 rows of Gemma 2's 256000-token vocabulary: 33 MB rather than 262 MB at 256).
    let chunk = min(softcap > 0 && backward != nil ? min(chunkRows, 32) : chunkRows, scored.count)
    // The logits (and a softcap's slopes: d capped / d logit = 1 - tanh^2, in backward) come
    // from the scratch pool: at 50 MB a fresh allocation is page-faulted in on every call.
    let slopes = softcap > 0 && backward != nil ? chunk * vocab : 0
    return ScratchPool.shared.withBuffer(capacity: chunk * vocab + slopes) { logits in
        let capSlope = logits + chunk * vocab
        return crossEntropyChunks(hidden: hidden, targets: targets, scored: scored, chunk: chunk, head: head, outputs: outputs,
                                  backward: backward, softcap: softcap, logitScale: logitScale, logits: logits, capSlope: capSlope)
    }
}

/// `crossEntropy` over the scored rows, `chunk` at a time, with the logits (and slopes) in the
/// caller's scratch.
private func crossEntropyChunks(hidden: UnsafePointer<Float>, targets: UnsafePointer<Int32>, scored: [Int], chunk: Int,
                                head: WeightMatrix, outputs: CrossEntropyOutputs, backward: CrossEntropyBackward?, softcap: Float,
                                logitScale: Float, logits: UnsafeMutablePointer<Float>, capSlope: UnsafeMutablePointer<Float>) -> (loss: Double, count: Int) {
    let dim = head.columns, vocab = head.rows
    let h = UnsafeMutablePointer<Float>.allocate(capacity: chunk * dim)       // [chunk, dim]
    let dh = UnsafeMutablePointer<Float>.allocate(capacity: chunk * dim)      // [chunk, dim]
    let rowLogProb = UnsafeMutablePointer<Float>.allocate(capacity: chunk)
    defer { h.deallocate(); dh.deallocate(); rowLogProb.deallocate() }
    var totalLoss = 0.0

    var start = 0
    while start < scored.count {
        let n = min(chunk, scored.count - start)
        for i in 0..<n { (h + i * dim).update(from: hidden + scored[start + i] * dim, count: dim) }
        head.multiply(h, n: n, into: logits)
        parallelFor(n, grain: 4) { range in
            for i in range {
                let row = scored[start + i]
                let l = logits + i * vocab
                let target = Int(targets[row])
                if softcap > 0 {
                    if backward != nil {
                        let slope = capSlope + i * vocab
                        for j in 0..<vocab {
                            let t = tanhf(l[j] / softcap)
                            l[j] = softcap * t
                            slope[j] = 1 - t * t
                        }
                    } else {
                        softcapInPlace(l, count: vocab, cap: softcap)
                    }
                }
                if logitScale != 1 { scaleInPlace(l, count: vocab, by: logitScale) }
                let (m, argmax) = maxAndIndex(l, count: vocab)
                let targetLogit = l[target]
                // The row (scratch) becomes exp(l - m) in the pass that sums it; a backward then scales it to w * softmax.
                let (sum, weighted) = expSumsInPlace(l, count: vocab, shift: m)
                let logSumExp = m + logf(sum)
                rowLogProb[i] = targetLogit - logSumExp
                outputs.logProbs?[row] = rowLogProb[i]
                outputs.entropies?[row] = logSumExp - weighted / sum
                outputs.correct?[row] = argmax == target ? 1 : 0
                if let backward {
                    // d loss / d (scaled logit) = w (softmax - onehot); times the scale for the logit itself.
                    let w = (backward.rowWeights?[row] ?? backward.uniformWeight) * logitScale
                    scaleInPlace(l, count: vocab, by: w / sum)
                    l[target] -= w
                    if softcap > 0 { let slope = capSlope + i * vocab; for j in 0..<vocab { l[j] *= slope[j] } }
                }
            }
        }
        for i in 0..<n { totalLoss -= Double(rowLogProb[i]) }
        if let backward {
            head.multiplyTransposed(logits, n: n, into: dh, accumulate: false)
            for i in 0..<n {
                let dst = backward.dHidden + scored[start + i] * dim
                for c in 0..<dim { dst[c] += dh[i * dim + c] }
            }
            if let dHead = backward.dHead {
                GEMM.multiply(.transpose, .none, m: vocab, n: dim, k: n, a: .f32(logits), lda: vocab, b: .f32(h), ldb: dim,
                              beta: 1, c: dHead, ldc: dim, precision: head.precision)
            }
        }
        start += n
    }
    return (totalLoss, scored.count)
}
