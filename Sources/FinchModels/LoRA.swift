import Foundation
import FinchKernels
import FinchIO

/// LoRA hyper-parameters, named as PEFT's `LoraConfig`.
public struct LoRAConfig: Equatable, Sendable {
    public static let allProjections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    public var rank: Int
    public var alpha: Float
    public var dropout: Float
    /// Module names (the last component of a module path, as PEFT matches them).
    public var targets: [String]
    /// rsLoRA: scale by alpha / sqrt(rank) instead of alpha / rank.
    public var useRSLoRA: Bool

    public init(rank: Int = 16, alpha: Float = 32, dropout: Float = 0, targets: [String] = LoRAConfig.allProjections,
                useRSLoRA: Bool = false) {
        self.rank = rank; self.alpha = alpha; self.dropout = dropout; self.targets = targets; self.useRSLoRA = useRSLoRA
    }

    public var scale: Float { useRSLoRA ? alpha / Float(rank).squareRoot() : alpha / Float(rank) }

    public func targets(module name: String) -> Bool {
        targets.contains { name == $0 || name.hasSuffix("." + $0) }
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
