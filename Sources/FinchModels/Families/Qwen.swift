extension ModelFamily {
    /// Qwen2 / Qwen2.5: a bias on q, k and v (not o).
    static let qwen2 = ModelFamily(modelType: "qwen2", hfArchitecture: "Qwen2ForCausalLM", ggufArchitecture: "qwen2",
                                   readHF: { config, _ in config.attentionBias = true; config.outputBias = false })

    /// Qwen3 (dense): an RMSNorm over each head of q and k before RoPE.
    static let qwen3 = ModelFamily(modelType: "qwen3", hfArchitecture: "Qwen3ForCausalLM", ggufArchitecture: "qwen3",
                                   readHF: { config, _ in config.qkNorm = true })
}
