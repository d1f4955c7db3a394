extension ModelFamily {
    /// Llama 2 / 3.x, SmolLM2, TinyLlama: `attention_bias` puts a bias on q, k, v and o.
    static let llama = ModelFamily(modelType: "llama", hfArchitecture: "LlamaForCausalLM", ggufArchitecture: "llama",
                                   writeHF: { config, json in json["attention_bias"] = config.attentionBias },
                                   ggufPermutesQueryKey: true)

    /// Mistral: Llama's layout (llama.cpp writes it as `llama`).
    static let mistral = ModelFamily(modelType: "mistral", hfArchitecture: "MistralForCausalLM", ggufArchitecture: "llama",
                                     writeHF: { config, json in json["attention_bias"] = config.attentionBias },
                                   ggufPermutesQueryKey: true)
}
