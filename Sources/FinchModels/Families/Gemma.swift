import Foundation
import FinchKernels
import FinchIO

// Gemma 2 and Gemma 3 (text): what transformers computes (reference/GEMMA_SEMANTICS.md), as
// settings of `ModelConfig` that the decoder reads: zero-centred norms (x̂ * (1 + w)), embeddings
// times sqrt(hidden), norms on the attention and MLP outputs too, GeGLU with tanh GELU,
// `query_pre_attn_scalar`, soft-capped scores and logits, and sliding-window layers.
extension ModelFamily {
    /// Gemma 2: attention and final logit soft-capping; even layers sliding by default.
    static let gemma2 = ModelFamily(
        modelType: "gemma2", hfArchitecture: "Gemma2ForCausalLM", ggufArchitecture: "gemma2",
        traits: Gemma.traits,
        readHF: { config, fields in
            try Gemma.readHF(&config, fields, pattern: 2)
            // A key that is missing takes the class default; an explicit null turns the cap off.
            config.attentionLogitSoftcap = try fields.nullableFloat("attn_logit_softcapping", absent: 50)
            config.finalLogitSoftcap = try fields.nullableFloat("final_logit_softcapping", absent: 30)
        },
        writeHF: { config, json in
            Gemma.writeHF(config, &json)
            json["attn_logit_softcapping"] = config.attentionLogitSoftcap.map { $0 as Any } ?? NSNull()
        },
        readGGUF: { config, gguf in
            try Gemma.readGGUF(&config, gguf, arch: "gemma2", pattern: 2)
            // llama.cpp's defaults when the keys are missing; 0 writes "none".
            config.attentionLogitSoftcap = try gguf.gemmaFloat("gemma2.attn_logit_softcapping", absent: 50)
            config.finalLogitSoftcap = try gguf.gemmaFloat("gemma2.final_logit_softcapping", absent: 30)
        },
        writeGGUF: { config in
            Gemma.ggufMetadata(config, arch: "gemma2") + [
                ("gemma2.attn_logit_softcapping", .float32(config.attentionLogitSoftcap ?? 0)),
                ("gemma2.final_logit_softcapping", .float32(config.finalLogitSoftcap ?? 0)),
            ]
        },
        ggufLayerNames: Gemma.ggufLayerNames)

    /// Gemma 3 text (`gemma3_text`: 270M, 1B; llama.cpp's `gemma3`): q/k norms, a local RoPE base
    /// for the sliding layers and the global one (with its scaling) for the others, one full layer
    /// in `sliding_window_pattern` (6). transformers ignores `attn_logit_softcapping` here.
    static let gemma3 = ModelFamily(
        modelType: "gemma3_text", hfArchitecture: "Gemma3ForCausalLM", ggufArchitecture: "gemma3",
        traits: { config in Gemma.traits(&config); config.qkNorm = true },
        readHF: { config, fields in
            let pattern = try fields.optionalInt("sliding_window_pattern") ?? 6
            guard pattern > 0 else {
                throw LoadError.malformed(path: fields.path, field: "sliding_window_pattern", found: "\(pattern)", expected: "a positive integer")
            }
            try Gemma.readHF(&config, fields, pattern: pattern)
            config.finalLogitSoftcap = try fields.nullableFloat("final_logit_softcapping", absent: nil)
            // transformers 5 nests one rope dict per layer type; 4.x wrote rope_theta (global),
            // rope_local_base_freq and rope_scaling (global layers only).
            let nested = fields.json["rope_parameters"] as? [String: Any]
            let full = nested?["full_attention"] as? [String: Any], local = nested?["sliding_attention"] as? [String: Any]
            config.ropeTheta = (full?["rope_theta"] as? NSNumber)?.floatValue ?? (fields.json["rope_theta"] as? NSNumber)?.floatValue ?? 1e6
            if let full { config.ropeScaling = try ModelConfig.parseRopeScaling(full, config: fields, path: fields.path) }
            config.slidingRopeTheta = try (local?["rope_theta"] as? NSNumber)?.floatValue ?? fields.float("rope_local_base_freq", 10000)
            if let local, try ModelConfig.parseRopeScaling(local, config: fields, path: fields.path) != .none {
                throw LoadError.unsupported(path: fields.path, what: "rope_parameters.sliding_attention.rope_type",
                                            found: "\(local["rope_type"] ?? "?")", supported: ["default"])
            }
        },
        writeHF: { config, json in
            Gemma.writeHF(config, &json)
            json["rope_local_base_freq"] = config.slidingRopeTheta ?? config.ropeTheta
        },
        readGGUF: { config, gguf in
            try Gemma.readGGUF(&config, gguf, arch: "gemma3", pattern: 6)
            config.finalLogitSoftcap = try gguf.gemmaFloat("gemma3.final_logit_softcapping", absent: nil)
            config.slidingRopeTheta = try gguf.gemmaFloat("gemma3.rope.freq_base_swa", absent: 10000)
        },
        writeGGUF: { config in
            var keys = Gemma.ggufMetadata(config, arch: "gemma3")
            keys.append(("gemma3.rope.freq_base_swa", .float32(config.slidingRopeTheta ?? config.ropeTheta)))
            if let cap = config.finalLogitSoftcap { keys.append(("gemma3.final_logit_softcapping", .float32(cap))) }
            return keys
        },
        ggufLayerNames: Gemma.ggufLayerNames)
}

/// What Gemma 2 and Gemma 3 share.
enum Gemma {
    static let activationName = "gelu_pytorch_tanh"

    @Sendable static func traits(_ config: inout ModelConfig) {
        config.normWeightOffset = 1
        config.embeddingMultiplier = Float(Double(config.hiddenSize).squareRoot())
        config.hiddenActivation = .geluTanh
        config.branchOutputNorms = true
    }

    /// llama.cpp's names of the four norms of a layer: `ffn_norm` is the MLP's input norm
    /// (Llama's `post_attention_layernorm`), Gemma's `post_attention_layernorm` is `post_attention_norm`.
    static let ggufLayerNames: [(gguf: String, hf: String)] = [
        ("post_attention_norm", "post_attention_layernorm"), ("ffn_norm", "pre_feedforward_layernorm"),
        ("post_ffw_norm", "post_feedforward_layernorm"),
    ]

    /// Layer i slides unless (i + 1) is a multiple of `pattern` (transformers' default layer_types).
    static func slidingLayers(count: Int, pattern: Int) -> Set<Int> { Set((0..<count).filter { ($0 + 1) % pattern != 0 }) }

    /// The keys Gemma 2 and 3 read alike, with transformers' defaults.
    static func readHF(_ config: inout ModelConfig, _ fields: ConfigFields, pattern: Int) throws {
        let json = fields.json, path = fields.path
        if json["head_dim"] == nil || json["head_dim"] is NSNull { config.headDim = 256 }
        config.tieWordEmbeddings = fields.bool("tie_word_embeddings", true)
        let activation = (json["hidden_activation"] as? String) ?? activationName
        guard activation == activationName else {
            throw LoadError.unsupported(path: path, what: "hidden_activation", found: activation, supported: [activationName])
        }
        config.queryPreAttentionScalar = (json["query_pre_attn_scalar"] as? NSNumber)?.doubleValue ?? 256
        config.slidingWindow = try fields.optionalInt("sliding_window") ?? 4096
        if let types = json["layer_types"], !(types is NSNull) {
            guard let names = types as? [String], names.count == config.layerCount,
                  names.allSatisfy({ $0 == "sliding_attention" || $0 == "full_attention" }) else {
                throw LoadError.malformed(path: path, field: "layer_types", found: "\(types)",
                                          expected: "\(config.layerCount) values, each \"sliding_attention\" or \"full_attention\"")
            }
            config.slidingLayers = Set(names.indices.filter { names[$0] == "sliding_attention" })
        } else {
            config.slidingLayers = slidingLayers(count: config.layerCount, pattern: pattern)
        }
        if fields.bool("use_bidirectional_attention", false) {
            throw LoadError.unsupported(path: path, what: "use_bidirectional_attention", found: "true", supported: ["false", "null"])
        }
    }

    static func writeHF(_ config: ModelConfig, _ json: inout [String: Any]) {
        json.removeValue(forKey: "hidden_act")
        json["hidden_activation"] = activationName
        let q = config.queryPreAttentionScalar ?? Double(config.headDim)
        json["query_pre_attn_scalar"] = q == q.rounded() ? Int(q) as Any : q as Any
        json["sliding_window"] = config.slidingWindow ?? 4096
        json["layer_types"] = (0..<config.layerCount).map { config.slidingLayers.contains($0) ? "sliding_attention" : "full_attention" }
        json["final_logit_softcapping"] = config.finalLogitSoftcap.map { $0 as Any } ?? NSNull()
        json["attention_bias"] = false
    }

    /// What both read from GGUF: the window, which layers slide, the attention scale.
    static func readGGUF(_ config: inout ModelConfig, _ gguf: GGUFFile, arch: String, pattern: Int) throws {
        let layers = config.layerCount
        config.slidingWindow = try gguf.optionalInt("\(arch).attention.sliding_window") ?? 4096
        let patternKey = "\(arch).attention.sliding_window_pattern"
        switch gguf.metadata[patternKey] {
        case nil:
            config.slidingLayers = slidingLayers(count: layers, pattern: pattern)
        case let .array(items)?:
            // One flag per layer, true where it slides (llama.cpp's swa_layers).
            let flags = items.compactMap(\.bool)
            guard flags.count == layers, items.count == layers else {
                throw LoadError.malformed(path: gguf.path, field: patternKey, found: "\(items.count) values", expected: "\(layers) booleans, one per layer")
            }
            config.slidingLayers = Set(flags.indices.filter { flags[$0] })
        case let value?:
            // A period n: layer i slides when i % n < n - 1 (llama.cpp's set_swa_pattern).
            guard let n = value.int, n > 0 else {
                throw LoadError.malformed(path: gguf.path, field: patternKey, found: "\(value)", expected: "a positive period or one boolean per layer")
            }
            config.slidingLayers = Set((0..<layers).filter { $0 % n < n - 1 })
        }
        if let scale = try gguf.gemmaFloat("\(arch).attention.scale", absent: nil) {
            // query_pre_attn_scalar is an integer in every released model: 1 / scale^2, rounded when that is what it is.
            let q = 1 / (Double(scale) * Double(scale))
            config.queryPreAttentionScalar = abs(q - q.rounded()) < 1e-3 * q ? q.rounded() : q
        } else {
            // llama.cpp: 1 / sqrt(hidden / heads) for the 27B models (46 resp. 62 layers), else 1 / sqrt(head_dim).
            let is27B = (arch == "gemma2" && layers == 46) || (arch == "gemma3" && layers == 62)
            config.queryPreAttentionScalar = Double(is27B ? config.hiddenSize / config.headCount : config.headDim)
        }
    }

    /// What both write to GGUF, as llama.cpp's converter does, plus the layer pattern and the
    /// attention scale (llama.cpp hard-codes both per model size; Finch reads them back).
    static func ggufMetadata(_ config: ModelConfig, arch: String) -> [(key: String, value: GGUFValue)] {
        [
            ("\(arch).attention.key_length", .uint32(UInt32(config.headDim))),
            ("\(arch).attention.value_length", .uint32(UInt32(config.headDim))),
            ("\(arch).attention.sliding_window", .uint32(UInt32(config.slidingWindow ?? 4096))),
            ("\(arch).attention.sliding_window_pattern", .array((0..<config.layerCount).map { .bool(config.slidingLayers.contains($0)) })),
            ("\(arch).attention.scale", .float32(config.attentionScale)),
        ]
    }
}

extension GGUFFile {
    /// A positive number, nil where it is 0 ("none"), `absent` where the key is missing.
    func gemmaFloat(_ key: String, absent: Float?) throws -> Float? {
        guard let v = try optionalFloat(key) else { return absent }
        return v == 0 ? nil : v
    }
}
