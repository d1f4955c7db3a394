extension ModelFamily {
    /// Phi-3 / Phi-3.5-mini / Phi-4-mini: Llama's block with q, k, v stored as one `qkv_proj`
    /// and gate, up as one `gate_up_proj` (gate first), `partial_rotary_factor` (Phi-4-mini
    /// rotates the first 3/4 of each head) and LongRoPE (`rope_scaling` type `longrope`, short
    /// and long factors); LoRA pairs sit on the joined modules, as PEFT names them
    /// (`qkv_proj`, `o_proj`, `gate_up_proj`, `down_proj`). A `sliding_window` (Phi-3-mini-4k:
    /// 2047) applies to every layer, as in transformers. Not read or written as GGUF yet.
    static let phi3 = ModelFamily(modelType: "phi3", hfArchitecture: "Phi3ForCausalLM", ggufArchitecture: nil,
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
    })
}
