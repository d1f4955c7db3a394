import FinchKernels
import FinchIO

extension ModelFamily {
    /// Phi-3 / Phi-3.5-mini / Phi-4-mini: Llama's block with q, k, v stored as one `qkv_proj`
    /// and gate, up as one `gate_up_proj` (gate first), `partial_rotary_factor` (Phi-4-mini
    /// rotates the first 3/4 of each head) and LongRoPE (`rope_scaling` type `longrope`, short
    /// and long factors); LoRA pairs sit on the joined modules, as PEFT names them
    /// (`qkv_proj`, `o_proj`, `gate_up_proj`, `down_proj`). A `sliding_window` (Phi-3-mini-4k:
    /// 2047) applies to every layer, as in transformers.
    ///
    /// GGUF `phi3` as llama.cpp's converter writes it: the joined tensors as `attn_qkv` and
    /// `ffn_up` (gate first), no q/k permutation, `rope.dimension_count` the rotated dimensions,
    /// LongRoPE as the tensors `rope_factors_long` / `rope_factors_short` with
    /// `rope.scaling.original_context_length` and `rope.scaling.attn_factor`, and
    /// `attention.sliding_window` (0: none).
    static let phi3 = ModelFamily(modelType: "phi3", hfArchitecture: "Phi3ForCausalLM", ggufArchitecture: "phi3",
                                  traits: { config in config.fusedProjections = true },
                                  readHF: { config, fields in
        config.attentionBias = false; config.outputBias = false
        if let window = try fields.optionalInt("sliding_window") {
            config.slidingWindow = window
            config.slidingLayers = Set(0..<config.layerCount)
        }
    },
                                  writeHF: { config, json in
        if let window = config.slidingWindow, !config.slidingLayers.isEmpty { json["sliding_window"] = window }
    },
                                  readGGUF: { config, file in
        if let window = try file.optionalInt("phi3.attention.sliding_window"), window > 0 {
            config.slidingWindow = window
            config.slidingLayers = Set(0..<config.layerCount)
        }
        let long = file.tensors["rope_factors_long.weight"], short = file.tensors["rope_factors_short.weight"]
        guard long != nil || short != nil else { return }
        guard let long, let short else {
            throw LoadError.malformed(path: file.path, field: long == nil ? "rope_factors_long.weight" : "rope_factors_short.weight",
                                      found: "nothing", expected: "both LongRoPE factor tensors")
        }
        config.ropeScaling = .longrope(shortFactors: dequantize(short), longFactors: dequantize(long),
                                       originalMaxPositions: try file.requiredInt("phi3.rope.scaling.original_context_length"),
                                       attentionFactor: try file.optionalFloat("phi3.rope.scaling.attn_factor") ?? 1)
    },
                                  writeGGUF: { config in
        var keys: [(key: String, value: GGUFValue)] = [
            ("phi3.attention.sliding_window", .uint32(UInt32(config.slidingLayers.isEmpty ? 0 : config.slidingWindow ?? 0)))]
        if case let .longrope(_, _, original, factor) = config.ropeScaling {
            keys.append(("phi3.rope.scaling.original_context_length", .uint32(UInt32(original))))
            keys.append(("phi3.rope.scaling.attn_factor", .float32(factor)))
        }
        return keys
    },
                                  ggufLayerNames: [(gguf: "attn_qkv", hf: "self_attn.qkv_proj"), (gguf: "ffn_up", hf: "mlp.gate_up_proj")])
}
