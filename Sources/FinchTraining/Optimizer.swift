import Foundation
import FinchKernels
import FinchIO
import FinchTokenizers
import FinchModels
import FinchGeneration
import FinchDistributed

/// Optimizers over a `ParameterSet`'s flat buffers: one loop each.
public enum OptimizerKind: String, Sendable, Codable, CaseIterable { case adamw, sgd }

/// The update rule applied to a `ParameterSet` after each window's gradients are complete;
/// its moments and step count are what a checkpoint saves besides the parameters.
public final class Optimizer {
    /// AdamW or SGD, fixed at creation (SGD keeps no moments).
    public let kind: OptimizerKind
    /// AdamW's decay of the first moment (torch's default 0.9).
    public var beta1: Float = 0.9
    /// AdamW's decay of the second moment (torch's default 0.999).
    public var beta2: Float = 0.999
    /// Added to AdamW's bias-corrected sqrt(v) to avoid dividing by zero (torch's default 1e-8).
    public var epsilon: Float = 1e-8
    /// Decoupled decay: each update first multiplies weights by 1 - lr * weightDecay; biases and norms are exempt.
    public var weightDecay: Float
    /// Updates taken so far (AdamW's bias correction uses it).
    public private(set) var step = 0
    /// AdamW's first moments (running mean of gradients), one per parameter; empty for SGD.
    package private(set) var m: [Float]
    /// AdamW's second moments (running mean of squared gradients); empty for SGD.
    package private(set) var v: [Float]
    /// 1 where weight decay applies, 0 for biases and norm weights (as transformers' Trainer does).
    let decayMask: [Float]

    /// Zero moments sized for `parameters`; the decay mask is read from their names (`.bias`, `norm`).
    public init(kind: OptimizerKind, parameters: ParameterSet, weightDecay: Float = 0) {
        self.kind = kind
        self.weightDecay = weightDecay
        let n = kind == .adamw ? parameters.count : 0
        m = [Float](repeating: 0, count: n)
        v = [Float](repeating: 0, count: n)
        var mask = [Float](repeating: 1, count: parameters.count)
        for e in parameters.entries where e.name.hasSuffix(".bias") || e.name.contains("norm") {
            for i in e.offset..<e.offset + e.count { mask[i] = 0 }
        }
        decayMask = mask
    }

    /// Applies one update with learning rate `lr` from the gradients in `parameters.grads`.
    public func update(_ parameters: ParameterSet, lr: Float) {
        step += 1
        let p = parameters.values, g = parameters.grads
        let decay = lr * weightDecay
        switch kind {
        case .sgd:
            decayMask.withUnsafeBufferPointer { mask in
                parallelFor(parameters.count, grain: 16384) { range in
                    for i in range { p[i] -= decay * mask[i] * p[i] + lr * g[i] }
                }
            }
        case .adamw:
            // torch.optim.AdamW: p *= 1 - lr*wd; m, v moments; p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
            let bc1 = 1 - pow(beta1, Float(step)), bc2 = 1 - pow(beta2, Float(step))
            let stepSize = lr / bc1, bc2Root = bc2.squareRoot()
            let (b1, b2, eps) = (beta1, beta2, epsilon)
            m.withUnsafeMutableBufferPointer { mb in v.withUnsafeMutableBufferPointer { vb in decayMask.withUnsafeBufferPointer { mask in
                let m = mb.baseAddress!, v = vb.baseAddress!
                parallelFor(parameters.count, grain: 16384) { range in
                    for i in range {
                        p[i] -= decay * mask[i] * p[i]
                        m[i] = b1 * m[i] + (1 - b1) * g[i]
                        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i]
                        p[i] -= stepSize * m[i] / (v[i].squareRoot() / bc2Root + eps)
                    }
                }
            } } }
        }
    }

    /// Restores state saved by a checkpoint.
    package func restore(step: Int, m: [Float], v: [Float]) {
        self.step = step
        self.m = m
        self.v = v
    }
}

/// The L2 norm of all gradients; when `maxNorm` > 0 and the norm exceeds it, scales the
/// gradients down as torch's clip_grad_norm_ does. Returns the norm before clipping.
@discardableResult
package func clipGradientNorm(_ parameters: ParameterSet, maxNorm: Float) -> Float {
    let g = parameters.grads
    var total = 0.0
    for i in 0..<parameters.count { total += Double(g[i]) * Double(g[i]) }
    let norm = Float(total.squareRoot())
    if maxNorm > 0 {
        let coefficient = maxNorm / (norm + 1e-6)
        if coefficient < 1 { for i in 0..<parameters.count { g[i] *= coefficient } }
    }
    return norm
}

/// Learning-rate schedules with linear warmup, as transformers' get_scheduler defines them.
public enum LRScheduleKind: String, Sendable, Codable, CaseIterable { case constant, linear, cosine }

/// The learning rate of every optimizer step: linear warm-up to `peak`, then `kind`'s decay to `totalSteps`.
public struct LRSchedule: Sendable {
    /// The shape after warm-up: constant, linear to 0, or cosine to 0.
    public var kind: LRScheduleKind
    /// The rate at the end of warm-up (the configured learning rate).
    public var peak: Float
    /// Steps of linear rise from 0; rate(at: 0) is 0 when this is positive.
    public var warmupSteps: Int
    /// Steps of the whole run; linear and cosine reach 0 here.
    public var totalSteps: Int

    /// A schedule over `totalSteps` optimizer steps.
    public init(kind: LRScheduleKind, peak: Float, warmupSteps: Int, totalSteps: Int) {
        self.kind = kind; self.peak = peak; self.warmupSteps = warmupSteps; self.totalSteps = totalSteps
    }

    /// The rate of update number `step` (0-based).
    public func rate(at step: Int) -> Float {
        if step < warmupSteps { return peak * Float(step) / Float(max(1, warmupSteps)) }
        let progress = Float(step - warmupSteps) / Float(max(1, totalSteps - warmupSteps))
        switch kind {
        case .constant: return peak
        case .linear: return peak * max(0, 1 - progress)
        case .cosine: return peak * max(0, 0.5 * (1 + cos(Float.pi * progress)))
        }
    }
}
