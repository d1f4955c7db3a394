import Foundation

/// The valid inputs every case starts from: a tiny Llama model (HF folder and GGUF) with a real
/// BPE tokenizer and chat template, training data in each format, and a YAML config. The model's
/// weights are written here (seeded, f32); the rest is copied from the committed seed folder.
struct Seeds {
    let root: URL
    var model: URL { root.appendingPathComponent("model") }
    var gguf: URL { root.appendingPathComponent("model.gguf") }
    var ggufQ8: URL { root.appendingPathComponent("model-q8_0.gguf") }
    /// The seed model's importance matrix, as `finch imatrix` writes it (GGUF) and in llama-imatrix's legacy layout.
    var imatrix: URL { root.appendingPathComponent("imatrix.gguf") }
    var imatrixLegacy: URL { root.appendingPathComponent("imatrix.dat") }
    func file(_ name: String) -> URL { root.appendingPathComponent(name) }

    static let modelFiles = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]
    static let dataFiles = ["messages.jsonl", "prefs.jsonl", "completions.csv", "text.json"]

    /// Writes the seed set under `root` from the committed files in `source`; GGUF copies are made
    /// by `finch export`, so they are files Finch itself writes.
    static func make(at root: URL, from source: URL, finch: URL) throws -> Seeds {
        let fm = FileManager.default
        try? fm.removeItem(at: root)
        let seeds = Seeds(root: root)
        try fm.createDirectory(at: seeds.model, withIntermediateDirectories: true)
        for name in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
            try fm.copyItem(at: source.appendingPathComponent(name), to: seeds.model.appendingPathComponent(name))
        }
        for name in dataFiles + ["train.yaml", "eval.txt"] {
            try fm.copyItem(at: source.appendingPathComponent(name), to: root.appendingPathComponent(name))
        }
        try writeModel(to: seeds.model)
        for (dtype, url) in [("f32", seeds.gguf), ("q8_0", seeds.ggufQ8)] {
            let r = Runner.run(finch, ["export", "--model", seeds.model.path, "--format", "gguf", "--dtype", dtype, "--output", url.path],
                               timeout: 120, memoryGiB: 8)
            guard r.outcome == .accepted else { throw SeedError(message: "finch export of the seed GGUF failed: \(r.stderr)") }
        }
        let r = Runner.run(finch, ["imatrix", "--model", seeds.model.path, "--data", seeds.file("eval.txt").path, "--chunk-size", "8",
                                   "--output", seeds.imatrix.path], timeout: 120, memoryGiB: 8)
        guard r.outcome == .accepted else { throw SeedError(message: "finch imatrix of the seed model failed: \(r.stderr)") }
        try Data(legacyImatrix()).write(to: seeds.imatrixLegacy)
        return seeds
    }

    /// llama-imatrix's legacy .dat for the seed model's projections: entry count; per entry the
    /// name, calls, value count and values; then chunk count and dataset name.
    static func legacyImatrix() -> [UInt8] {
        var bytes: [UInt8] = []
        func int32(_ v: Int) { withUnsafeBytes(of: Int32(v).littleEndian) { bytes += $0 } }
        let entries = (0..<2).flatMap { l in
            ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up"].map { ("blk.\(l).\($0).weight", 16) } + [("blk.\(l).ffn_down.weight", 32)]
        }
        int32(entries.count)
        for (i, (name, width)) in entries.enumerated() {
            int32(name.utf8.count); bytes += Array(name.utf8)
            int32(3); int32(width)
            for j in 0..<width { withUnsafeBytes(of: Float(1 + (i * 7 + j) % 5).bitPattern.littleEndian) { bytes += $0 } }
        }
        int32(3); int32(8); bytes += Array("eval.txt".utf8)
        return bytes
    }

    struct SeedError: Error, CustomStringConvertible { let message: String; var description: String { message } }

    /// A 2-layer Llama (hidden 16, 2 heads of 8, 1 KV head, MLP 32) over the seed tokenizer's 900 ids.
    static func writeModel(to folder: URL) throws {
        let (vocab, hidden, inter, layers, heads, kvHeads, headDim) = (900, 16, 32, 2, 2, 1, 8)
        let config: [String: Any] = [
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden, "intermediate_size": inter,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kvHeads, "head_dim": headDim,
            "vocab_size": vocab, "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32", "hidden_act": "silu",
        ]
        try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
            .write(to: folder.appendingPathComponent("config.json"))
        var tensors: [(String, [Int], Bool)] = [("model.embed_tokens.weight", [vocab, hidden], false)]
        for l in 0..<layers {
            let p = "model.layers.\(l)."
            tensors += [(p + "input_layernorm.weight", [hidden], true),
                        (p + "self_attn.q_proj.weight", [heads * headDim, hidden], false),
                        (p + "self_attn.k_proj.weight", [kvHeads * headDim, hidden], false),
                        (p + "self_attn.v_proj.weight", [kvHeads * headDim, hidden], false),
                        (p + "self_attn.o_proj.weight", [hidden, heads * headDim], false),
                        (p + "mlp.gate_proj.weight", [inter, hidden], false),
                        (p + "mlp.up_proj.weight", [inter, hidden], false),
                        (p + "mlp.down_proj.weight", [hidden, inter], false),
                        (p + "post_attention_layernorm.weight", [hidden], true)]
        }
        tensors.append(("model.norm.weight", [hidden], true))
        var rng = SplitMix(seed: 42)
        var header: [String: Any] = ["__metadata__": ["format": "pt"]]
        var body: [UInt8] = []
        for (name, shape, isNorm) in tensors {
            let count = shape.reduce(1, *)
            header[name] = ["dtype": "F32", "shape": shape, "data_offsets": [body.count, body.count + 4 * count]]
            for _ in 0..<count {
                let bits = (isNorm ? Float(1) : 0.02 * rng.gaussian()).bitPattern
                for b in 0..<4 { body.append(UInt8(truncatingIfNeeded: bits >> (8 * UInt32(b)))) }
            }
        }
        var json = Array(try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys]))
        while json.count % 8 != 0 { json.append(0x20) }
        var file: [UInt8] = (0..<8).map { UInt8(truncatingIfNeeded: UInt64(json.count) >> (8 * UInt64($0))) }
        file += json + body
        try Data(file).write(to: folder.appendingPathComponent("model.safetensors"))
    }
}
