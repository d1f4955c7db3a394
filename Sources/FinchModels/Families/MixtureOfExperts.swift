import Foundation
import FinchIO

/// The routed MLPs of a mixture-of-experts model, as transformers computes them (Qwen3-MoE,
/// Mixtral, OLMoE): a router (a linear map to one logit per expert), a softmax over all experts in
/// f32, the `topK` largest probabilities (divided by their sum when `normalizesTopK`), and the
/// sum of the chosen experts' gated MLPs weighted by them. Layers in `denseLayers` keep the
/// ordinary MLP (`intermediate_size` wide).
///
/// The load-balancing loss (Switch Transformer's, transformers' `load_balancing_loss_func`):
/// over every routed layer and real token of the batch, with f_e the share of top-k choices
/// that went to expert e and P_e the mean router probability of e,
/// `aux = expertCount * sum_e f_e * P_e`, and the training loss adds `routerAuxLossCoef * aux`
/// where transformers would (`output_router_logits` true in config.json, or a coefficient given).
public struct MixtureOfExperts: Equatable, Sendable {
    /// How the checkpoint names a layer's router and experts.
    public enum Naming: String, Sendable {
        /// `mlp.gate`, `mlp.experts.<e>.{gate,up,down}_proj` (Qwen3-MoE, OLMoE).
        case qwen
        /// `block_sparse_moe.gate`, `block_sparse_moe.experts.<e>.{w1,w3,w2}` (Mixtral).
        case mixtral
    }

    /// Experts per routed layer (`num_experts`, Mixtral's `num_local_experts`).
    public var expertCount: Int
    /// Experts each token is sent to (`num_experts_per_tok`).
    public var topK: Int
    /// Width of each expert's gated MLP (`moe_intermediate_size`; Mixtral and OLMoE: `intermediate_size`).
    public var intermediateSize: Int
    /// The chosen probabilities are divided by their sum (`norm_topk_prob`; always in Mixtral).
    public var normalizesTopK: Bool
    /// Weight of the load-balancing loss in the training loss (`router_aux_loss_coef`).
    public var routerAuxLossCoef: Float
    /// transformers adds the load-balancing loss to the loss only with `output_router_logits`.
    public var outputRouterLogits: Bool
    /// Layers with the ordinary dense MLP (Qwen3-MoE's `mlp_only_layers` and `decoder_sparse_step`).
    public var denseLayers: Set<Int>
    /// The checkpoint's tensor names.
    public var naming: Naming

    /// Whether layer `l` routes (else its MLP is dense).
    public func routes(layer l: Int) -> Bool { !denseLayers.contains(l) }

    /// The router's module path within a layer (`model.layers.<l>.` + this).
    package var routerModule: String { naming == .qwen ? "mlp.gate" : "block_sparse_moe.gate" }

    /// Expert `e`'s gate, up and down module paths within a layer.
    package func expertModules(_ e: Int) -> [String] {
        switch naming {
        case .qwen: return ["gate_proj", "up_proj", "down_proj"].map { "mlp.experts.\(e).\($0)" }
        case .mixtral: return ["w1", "w3", "w2"].map { "block_sparse_moe.experts.\(e).\($0)" }
        }
    }

    /// PEFT's module path of a layer's experts (its `target_parameters` adapt `<this>.gate_up_proj`
    /// and `<this>.down_proj`), within a layer.
    static let expertsModule = "mlp.experts"

    func validate(layerCount: Int, fail: (String, Any, String) -> Error) throws {
        if !(1...4096).contains(expertCount) { throw fail("num_experts", expertCount, "an integer in 1...4096") }
        if !(1...expertCount).contains(topK) { throw fail("num_experts_per_tok", topK, "an integer in 1...\(expertCount) (the experts)") }
        if !(1...(1 << 20)).contains(intermediateSize) { throw fail("moe_intermediate_size", intermediateSize, "an integer in 1...1048576") }
        if !(routerAuxLossCoef.isFinite && routerAuxLossCoef >= 0) { throw fail("router_aux_loss_coef", routerAuxLossCoef, "a finite number >= 0") }
        if let l = denseLayers.first(where: { !(0..<layerCount).contains($0) }) { throw fail("mlp_only_layers", l, "layers below \(layerCount)") }
    }

    /// The keys of config.json every family writes.
    func writeHF(_ json: inout [String: Any], expertsKey: String) {
        json[expertsKey] = expertCount
        json["num_experts_per_tok"] = topK
        json["router_aux_loss_coef"] = routerAuxLossCoef
        json["output_router_logits"] = outputRouterLogits
    }
}

extension ConfigFields {
    /// `router_aux_loss_coef`, `output_router_logits` and `num_experts_per_tok`, read alike by every
    /// family; a missing key takes the default of the family's transformers config class.
    func mixtureOfExperts(experts: Int, intermediate: Int, normalizes: Bool, defaultTopK: Int, defaultCoef: Float, dense: Set<Int> = [],
                          naming: MixtureOfExperts.Naming) throws -> MixtureOfExperts {
        MixtureOfExperts(expertCount: experts, topK: try optionalInt("num_experts_per_tok") ?? defaultTopK, intermediateSize: intermediate,
                         normalizesTopK: normalizes, routerAuxLossCoef: try float("router_aux_loss_coef", defaultCoef),
                         outputRouterLogits: bool("output_router_logits", false), denseLayers: dense, naming: naming)
    }
}

extension MixtureOfExperts {
    /// The experts of a GGUF of llama.cpp's `arch` (`qwen3moe`, `olmoe`): `expert_count`,
    /// `expert_used_count`, `expert_feed_forward_length` (else `feed_forward_length`); a layer
    /// without `ffn_gate_inp` is dense. llama.cpp renormalises the chosen probabilities in
    /// `qwen3moe` and not in `olmoe` (`expert_weights_norm` where written).
    static func readGGUF(_ config: inout ModelConfig, _ file: GGUFFile, arch: String, normalizes: Bool, defaultCoef: Float,
                         naming: Naming = .qwen) throws {
        let experts = try file.requiredInt("\(arch).expert_count")
        config.experts = MixtureOfExperts(
            expertCount: experts, topK: try file.requiredInt("\(arch).expert_used_count"),
            intermediateSize: try file.optionalInt("\(arch).expert_feed_forward_length") ?? config.intermediateSize,
            normalizesTopK: file.metadata["\(arch).expert_weights_norm"]?.bool ?? normalizes, routerAuxLossCoef: defaultCoef,
            outputRouterLogits: false,
            denseLayers: Set((0..<config.layerCount).filter { file.tensors["blk.\($0).ffn_gate_inp.weight"] == nil }), naming: naming)
        try config.experts!.validate(layerCount: config.layerCount) { key, found, expected in
            LoadError.malformed(path: file.path, field: "\(arch).\(key == "num_experts" ? "expert_count" : key == "num_experts_per_tok" ? "expert_used_count" : key)",
                                found: "\(found)", expected: expected)
        }
    }

    /// The `<arch>.expert_*` keys of a GGUF written for llama.cpp.
    func ggufKeys(arch: String) -> [(key: String, value: GGUFValue)] {
        [("\(arch).expert_count", .uint32(UInt32(expertCount))), ("\(arch).expert_used_count", .uint32(UInt32(topK))),
         ("\(arch).expert_feed_forward_length", .uint32(UInt32(intermediateSize)))]
    }

    /// llama.cpp's name of a layer's router, and the HF one.
    static let ggufLayerNames: [(gguf: String, hf: String)] = [(gguf: "ffn_gate_inp", hf: "mlp.gate")]
    /// The stacked expert tensors `blk.<l>.<name>.weight` [E, rows, columns], in the order of
    /// `expertModules` (gate, up, down).
    package static let ggufStacks = ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"]
}

extension ModelFamily {
    /// Qwen3-MoE: Qwen3's attention (q/k norms per head), routed MLPs of `moe_intermediate_size`,
    /// `norm_topk_prob`; `mlp_only_layers` and `decoder_sparse_step` make some layers dense.
    static let qwen3MoE = ModelFamily(modelType: "qwen3_moe", hfArchitecture: "Qwen3MoeForCausalLM", ggufArchitecture: "qwen3moe",
                                      traits: { config in config.qkNorm = true }, readHF: { config, fields in
        // transformers 5 writes `num_local_experts` for Qwen3-MoE too.
        let experts = try fields.optionalInt("num_experts") ?? fields.optionalInt("num_local_experts") ?? 128
        guard experts > 0 else { return }
        let step = try fields.optionalInt("decoder_sparse_step") ?? 1
        guard step > 0 else { throw LoadError.malformed(path: fields.path, field: "decoder_sparse_step", found: "\(step)", expected: "a positive integer") }
        let listed = fields.json["mlp_only_layers"].map { $0 as? [NSNumber] }
        guard let only = listed ?? [] else {
            throw LoadError.malformed(path: fields.path, field: "mlp_only_layers", found: "\(fields.json["mlp_only_layers"]!)", expected: "a list of layer numbers")
        }
        let dense = Set(only.map(\.intValue)).union((0..<config.layerCount).filter { ($0 + 1) % step != 0 })
        config.experts = try fields.mixtureOfExperts(experts: experts, intermediate: try fields.optionalInt("moe_intermediate_size") ?? 768,
                                                     normalizes: fields.bool("norm_topk_prob", false), defaultTopK: 8, defaultCoef: 0.001,
                                                     dense: dense, naming: .qwen)
    }, writeHF: { config, json in
        guard let moe = config.experts else { json["num_experts"] = 0; return }
        moe.writeHF(&json, expertsKey: "num_experts")
        json["moe_intermediate_size"] = moe.intermediateSize
        json["norm_topk_prob"] = moe.normalizesTopK
        json["mlp_only_layers"] = moe.denseLayers.sorted()
        json["decoder_sparse_step"] = 1
    }, readGGUF: { config, file in
        try MixtureOfExperts.readGGUF(&config, file, arch: "qwen3moe", normalizes: true, defaultCoef: 0.001)
    }, writeGGUF: { config in config.experts?.ggufKeys(arch: "qwen3moe") ?? [] },
       ggufLayerNames: MixtureOfExperts.ggufLayerNames)

    /// Mixtral: Mistral's attention, every layer routed (`num_local_experts`, experts
    /// `intermediate_size` wide), the top-k probabilities always renormalised.
    /// llama.cpp writes Mixtral as `llama` with its experts stacked (`llama.expert_count` set):
    /// such a file reads as Mixtral.
    static let mixtral = ModelFamily(modelType: "mixtral", hfArchitecture: "MixtralForCausalLM", ggufArchitecture: "llama",
                                     readHF: { config, fields in
        if fields.json["sliding_window"].map({ !($0 is NSNull) }) == true {
            throw LoadError.unsupported(path: fields.path, what: "sliding_window", found: "\(fields.json["sliding_window"]!)", supported: ["null"])
        }
        if try fields.float("router_jitter_noise", 0) != 0 {
            throw LoadError.unsupported(path: fields.path, what: "router_jitter_noise", found: "\(fields.json["router_jitter_noise"]!)", supported: ["0"])
        }
        config.experts = try fields.mixtureOfExperts(experts: try fields.optionalInt("num_local_experts") ?? 8, intermediate: config.intermediateSize,
                                                     normalizes: true, defaultTopK: 2, defaultCoef: 0.001, naming: .mixtral)
    }, writeHF: { config, json in
        config.experts?.writeHF(&json, expertsKey: "num_local_experts")
        json["sliding_window"] = NSNull()
    }, readGGUF: { config, file in
        try MixtureOfExperts.readGGUF(&config, file, arch: "llama", normalizes: true, defaultCoef: 0.001, naming: .mixtral)
    }, writeGGUF: { config in config.experts?.ggufKeys(arch: "llama") ?? [] },
       ggufLayerNames: [(gguf: "ffn_gate_inp", hf: "block_sparse_moe.gate")], ggufPermutesQueryKey: true)

    /// OLMoE: q and k each normed over all heads at once, every layer routed, `norm_topk_prob`
    /// (off in the released models). `clip_qkv` is not supported.
    static let olmoe = ModelFamily(modelType: "olmoe", hfArchitecture: "OlmoeForCausalLM", ggufArchitecture: "olmoe",
                                   traits: { config in config.qkNorm = true; config.qkNormSpansHeads = true }, readHF: { config, fields in
        if let clip = fields.json["clip_qkv"], !(clip is NSNull) {
            throw LoadError.unsupported(path: fields.path, what: "clip_qkv", found: "\(clip)", supported: ["null"])
        }
        config.experts = try fields.mixtureOfExperts(experts: try fields.optionalInt("num_local_experts") ?? fields.optionalInt("num_experts") ?? 64,
                                                     intermediate: config.intermediateSize,
                                                     normalizes: fields.bool("norm_topk_prob", false), defaultTopK: 8, defaultCoef: 0.01, naming: .qwen)
    }, writeHF: { config, json in
        guard let moe = config.experts else { return }
        moe.writeHF(&json, expertsKey: "num_experts")
        json["norm_topk_prob"] = moe.normalizesTopK
        json["clip_qkv"] = NSNull()
    }, readGGUF: { config, file in
        try MixtureOfExperts.readGGUF(&config, file, arch: "olmoe", normalizes: false, defaultCoef: 0.01)
    }, writeGGUF: { config in config.experts?.ggufKeys(arch: "olmoe") ?? [] },
       ggufLayerNames: MixtureOfExperts.ggufLayerNames)
}
