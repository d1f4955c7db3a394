import Foundation
import FinchKernels
import FinchIO

extension ModelConfig {
    /// The shape of SmolLM2-135M (Llama architecture), used by benchmarks.
    public static let smolLM2_135M = ModelConfig(
        modelType: "llama", hiddenSize: 576, intermediateSize: 1536, layerCount: 30, headCount: 9, kvHeadCount: 3,
        vocabSize: 49152, rmsNormEps: 1e-5, ropeTheta: 100000, tieWordEmbeddings: true, maxPositionEmbeddings: 8192)

    /// The shape of Llama-3.2-1B.
    public static let llama32_1B = ModelConfig(
        modelType: "llama", hiddenSize: 2048, intermediateSize: 8192, layerCount: 16, headCount: 32, kvHeadCount: 8,
        vocabSize: 128256, rmsNormEps: 1e-5, ropeTheta: 500000,
        ropeScaling: .llama3(factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192),
        tieWordEmbeddings: true, maxPositionEmbeddings: 131072)
}

extension ModelConfig {
    /// A mixture of experts of SmolLM2-135M's attention and its FLOPs per token: Qwen3-MoE's
    /// layout (q/k norms), 8 experts of width 768 in every layer, 2 chosen per token (the MLP work
    /// of SmolLM2's 1536-wide dense MLP), about 370M parameters.
    public static let moeSmolLM2Shape: ModelConfig = {
        var c = ModelConfig(modelType: "qwen3_moe", hiddenSize: 576, intermediateSize: 1536, layerCount: 30, headCount: 9, kvHeadCount: 3,
                            headDim: 64, vocabSize: 49152, rmsNormEps: 1e-5, ropeTheta: 100000, tieWordEmbeddings: true,
                            maxPositionEmbeddings: 8192, qkNorm: true)
        c.experts = MixtureOfExperts(expertCount: 8, topK: 2, intermediateSize: 768, normalizesTopK: true, routerAuxLossCoef: 0.001,
                                     outputRouterLogits: true, denseLayers: [], naming: .qwen)
        return c
    }()
}

extension ModelFiles {
    /// A model of `config`'s shape with random f32 weights (normal, std 0.02; norms 1), for benchmarks and tests.
    /// With `quantization` q4_0 or q4_1, every matrix (projections, embedding, head) is stored in
    /// that 4-bit block format instead: random nibbles with scales giving about the same spread.
    public static func random(config: ModelConfig, seed: UInt64 = 0, quantization: DType = .f32) -> ModelFiles {
        precondition([.f32, .q4_0, .q4_1].contains(quantization), "random models are f32, q4_0 or q4_1")
        var rng = FinchRandom(seed: seed)
        var tensors: [String: TensorData] = [:]
        func add(_ name: String, _ shape: [Int], fill: Float? = nil) {
            let count = shape.reduce(1, *)
            if quantization != .f32 && shape.count == 2 && fill == nil {
                let blocks = count / 32, blockBytes = quantization.blockBytes
                let bytes = OwnedBytes(count: blocks * blockBytes)
                let p = bytes.pointer.assumingMemoryBound(to: UInt8.self)
                // Nibbles uniform in 0...15 have std 4.6: d = 0.02 / 4.6 keeps std 0.02 (q4_1: m = -8d centres them).
                let d = Float16(0.02 / 4.6).bitPattern, m = Float16(-8 * 0.02 / 4.6).bitPattern
                for b in 0..<blocks {
                    var block = p + b * blockBytes
                    block[0] = UInt8(d & 0xFF); block[1] = UInt8(d >> 8); block += 2
                    if quantization == .q4_1 { block[0] = UInt8(m & 0xFF); block[1] = UInt8(m >> 8); block += 2 }
                    for j in 0..<16 { block[j] = UInt8(truncatingIfNeeded: rng.next()) }
                }
                tensors[name] = TensorData(name: name, dtype: quantization, shape: shape, bytes: UnsafeRawPointer(p),
                                           byteCount: blocks * blockBytes, owner: bytes)
                return
            }
            let bytes = OwnedBytes(count: count * 4)
            let p = bytes.pointer.assumingMemoryBound(to: Float.self)
            for i in 0..<count { p[i] = fill ?? rng.nextGaussian() * 0.02 }
            tensors[name] = TensorData(name: name, dtype: .f32, shape: shape, bytes: UnsafeRawPointer(p), byteCount: count * 4, owner: bytes)
        }
        let c = config
        let unit = 1 - c.normWeightOffset   // every norm multiplies by 1 (Gemma stores w of 1 + w)
        // Every tensor of the layout (experts and routers too), matrices drawn in layout order.
        for (name, shape) in Transformer.tensorLayout(c) {
            if name.hasSuffix("norm.weight") { add(name, shape, fill: unit) }
            else if name.hasSuffix(".bias") { add(name, shape, fill: 0) }
            else { add(name, shape) }
        }
        return ModelFiles(config: config, tensors: tensors, source: "random \(config.modelType) model" + (quantization == .f32 ? "" : " (\(quantization.rawValue))"))
    }
}
