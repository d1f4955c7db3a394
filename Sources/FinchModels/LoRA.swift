import Foundation
import FinchKernels
import FinchIO

/// LoRA hyper-parameters, named as PEFT's `LoraConfig`.
public struct LoRAConfig: Equatable, Sendable {
    /// The seven linear projections of a Llama-family block: the default targets and the allowed names.
    public static let allProjections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    /// Modules that join projections in some families (Phi-3), with the projections they hold.
    public static let joinedModules: [(name: String, parts: [String])] = [("qkv_proj", ["q_proj", "k_proj", "v_proj"]),
                                                                          ("gate_up_proj", ["gate_proj", "up_proj"])]
    /// The experts of a mixture-of-experts layer, adapted as PEFT's `target_parameters`
    /// (`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`): one pair per expert, gate and up
    /// sharing A. Only where named: never by default.
    public static let expertTargets = ["experts.gate_up_proj", "experts.down_proj"]
    /// Every name a target may have: the seven projections, the joined modules and the experts.
    public static var targetNames: [String] { allProjections + joinedModules.map(\.name) + expertTargets }

    /// Rank r of each A [r, in] / B [out, r] pair (PEFT's `r`).
    public var rank: Int
    /// Numerator of the scale applied to the LoRA term (PEFT's `lora_alpha`); see `scale`.
    public var alpha: Float
    /// Probability of zeroing an input of the LoRA branch while training (PEFT's `lora_dropout`); 0 disables.
    public var dropout: Float
    /// Module names (the last component of a module path, as PEFT matches them).
    public var targets: [String]
    /// rsLoRA: scale by alpha / sqrt(rank) instead of alpha / rank.
    public var useRSLoRA: Bool
    /// Ranks and alphas of expert targets that differ from `rank` and `alpha` (PEFT's
    /// `rank_pattern` / `alpha_pattern`, which PEFT itself sets for `gate_up_proj`: twice the rank
    /// and alpha, as gate and up together).
    public var expertRanks: [String: Int] = [:]
    /// Alphas of expert targets that differ from `alpha` (PEFT's `alpha_pattern`); see `expertRanks`.
    public var expertAlphas: [String: Float] = [:]

    /// The rank of an expert target (`expertTargets`).
    public func rank(expertTarget target: String) -> Int { expertRanks[target] ?? rank }
    /// The scale of an expert target's term.
    public func scale(expertTarget target: String) -> Float {
        let r = Float(rank(expertTarget: target)), a = expertAlphas[target] ?? alpha
        return useRSLoRA ? a / r.squareRoot() : a / r
    }

    /// Finch's defaults (r 16, alpha 32, every projection) differ from PEFT's (r 8, alpha 8).
    public init(rank: Int = 16, alpha: Float = 32, dropout: Float = 0, targets: [String] = LoRAConfig.allProjections,
                useRSLoRA: Bool = false) {
        self.rank = rank; self.alpha = alpha; self.dropout = dropout; self.targets = targets; self.useRSLoRA = useRSLoRA
    }

    /// The factor on the LoRA term: alpha / rank, or alpha / sqrt(rank) with rsLoRA.
    public var scale: Float { useRSLoRA ? alpha / Float(rank).squareRoot() : alpha / Float(rank) }

    /// Whether a module path gets an adapter: its name equals a target or ends with "." + target;
    /// a joined module (`qkv_proj`) also when every projection it holds is a target (so the
    /// default, all seven, covers Phi-3's joined modules).
    public func targets(module name: String) -> Bool {
        if name.contains(".experts.") || name.hasSuffix(".experts") { return false }   // see `expertTargets`
        if targets.contains(where: { name == $0 || name.hasSuffix("." + $0) }) { return true }
        guard let joined = Self.joinedModules.first(where: { name == $0.name || name.hasSuffix("." + $0.name) }) else { return false }
        return joined.parts.allSatisfy { targets.contains($0) }
    }

    /// PEFT's parameter names for a module path such as `model.layers.0.self_attn.q_proj`.
    public static func parameterNames(module: String) -> (a: String, b: String) {
        ("base_model.model.\(module).lora_A.weight", "base_model.model.\(module).lora_B.weight")
    }
}

/// The trainable low-rank pair of one linear layer: y += scale * dropout(x) A^T B^T.
struct LoRAModule {
    let rank: Int
    let scale: Float
    let dropout: Float
    let a: UnsafeMutablePointer<Float>    // [rank, in]
    let b: UnsafeMutablePointer<Float>    // [out, rank]
    let da: UnsafeMutablePointer<Float>   // [rank, in]
    let db: UnsafeMutablePointer<Float>   // [out, rank]
}
