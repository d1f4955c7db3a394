import Foundation
import FinchKernels
import FinchIO

// The model-level reading of a GGUF file: the decoder's shape from llama.cpp's metadata, and
// the tensors under their Hugging Face names. It lives with the models (the IO layer below
// only parses the container).
extension GGUFFile {
    // MARK: - Metadata values

    /// The non-negative integer at `key`, nil where the key is absent; another value is a
    /// `LoadError` naming the key.
    func optionalInt(_ key: String) throws -> Int? {
        guard let value = metadata[key] else { return nil }
        guard let v = value.int, v >= 0 else {
            throw LoadError.malformed(path: path, field: key, found: "\(value)", expected: "a non-negative integer")
        }
        return v
    }

    /// The non-negative integer at `key`, which must be there.
    func requiredInt(_ key: String) throws -> Int {
        guard let v = try optionalInt(key) else {
            throw LoadError.malformed(path: path, field: key, found: "nothing", expected: "an integer")
        }
        return v
    }

    /// The number at `key`, nil where the key is absent.
    func optionalFloat(_ key: String) throws -> Float? {
        guard let value = metadata[key] else { return nil }
        guard let v = value.float else {
            throw LoadError.malformed(path: path, field: key, found: "\(value)", expected: "a number")
        }
        return v
    }

    /// The number at `key`, which must be there.
    func requiredFloat(_ key: String) throws -> Float {
        guard let v = try optionalFloat(key) else {
            throw LoadError.malformed(path: path, field: key, found: "nothing", expected: "a number")
        }
        return v
    }

    // MARK: - Model configuration

    /// The decoder's shape, from the `<arch>.*` metadata (as llama.cpp's llama-model.cpp reads it).
    public func modelConfig() throws -> ModelConfig {
        guard let archValue = metadata["general.architecture"] else {
            throw LoadError.malformed(path: path, field: "general.architecture", found: "nothing", expected: "a string such as \"llama\"")
        }
        guard let arch = archValue.string else {
            throw LoadError.malformed(path: path, field: "general.architecture", found: archValue.typeName, expected: "a string")
        }
        guard var family = ModelFamily.reading(ggufArchitecture: arch) else {
            throw LoadError.unsupported(path: path, what: "architecture (general.architecture)", found: arch, supported: ModelFamily.ggufArchitectures)
        }
        // llama.cpp writes Mixtral as `llama` with experts.
        if arch == "llama", try optionalInt("llama.expert_count").map({ $0 > 0 }) == true { family = .mixtral }
        let hidden = try requiredInt("\(arch).embedding_length")
        let heads = try requiredInt("\(arch).attention.head_count")
        let kvHeads = try optionalInt("\(arch).attention.head_count_kv") ?? heads
        guard hidden > 0, heads > 0, kvHeads > 0, heads % kvHeads == 0 else {
            throw LoadError.malformed(path: path, field: "\(arch).attention.head_count / head_count_kv", found: "\(heads) / \(kvHeads)",
                                      expected: "positive, head_count a multiple of head_count_kv")
        }
        let headDim = try optionalInt("\(arch).attention.key_length") ?? hidden / heads
        // Partial rotary (Phi-4-mini): the dimensions of each head that rotate, from its start.
        let rotary = try optionalInt("\(arch).rope.dimension_count") ?? headDim

        let vocab: Int
        if let v = try optionalInt("\(arch).vocab_size") { vocab = v }
        else if let tokens = metadata["tokenizer.ggml.tokens"]?.array { vocab = tokens.count }
        else if let embed = tensors["token_embd.weight"] { vocab = embed.shape[0] }
        else {
            throw LoadError.malformed(path: path, field: "\(arch).vocab_size", found: "nothing (and no tokenizer.ggml.tokens or token_embd.weight)",
                                      expected: "the vocabulary size")
        }

        var scaling = RopeScaling.none
        if let typeValue = metadata["\(arch).rope.scaling.type"] {
            guard let type = typeValue.string else {
                throw LoadError.malformed(path: path, field: "\(arch).rope.scaling.type", found: typeValue.typeName, expected: "a string")
            }
            switch type {
            case "none": scaling = .none
            case "linear": scaling = .linear(factor: try requiredFloat("\(arch).rope.scaling.factor"))
            case "llama3":
                scaling = .llama3(factor: try requiredFloat("\(arch).rope.scaling.factor"),
                                  lowFreqFactor: try requiredFloat("\(arch).rope.scaling.low_freq_factor"),
                                  highFreqFactor: try requiredFloat("\(arch).rope.scaling.high_freq_factor"),
                                  originalMaxPositions: try requiredInt("\(arch).rope.scaling.original_context_length"))
            default:
                throw LoadError.unsupported(path: path, what: "\(arch).rope.scaling.type", found: type, supported: ["none", "linear", "llama3"])
            }
        }
        if let freqs = tensors["rope_freqs.weight"] {
            scaling = try ropeScaling(fromFactors: freqs, declared: metadata["\(arch).rope.scaling.type"] == nil ? nil : scaling,
                                      headDim: headDim, theta: try optionalFloat("\(arch).rope.freq_base") ?? 10000)
        }

        let bos = try optionalInt("tokenizer.ggml.bos_token_id")
        let eos = try optionalInt("tokenizer.ggml.eos_token_id")
        var config = ModelConfig(modelType: family.modelType,
                           hiddenSize: hidden,
                           intermediateSize: try requiredInt("\(arch).feed_forward_length"),
                           layerCount: try requiredInt("\(arch).block_count"),
                           headCount: heads,
                           kvHeadCount: kvHeads,
                           headDim: headDim,
                           vocabSize: vocab,
                           rmsNormEps: try requiredFloat("\(arch).attention.layer_norm_rms_epsilon"),
                           ropeTheta: try optionalFloat("\(arch).rope.freq_base") ?? 10000,
                           ropeScaling: scaling,
                           tieWordEmbeddings: tensors["output.weight"] == nil,
                           maxPositionEmbeddings: try optionalInt("\(arch).context_length") ?? 2048,
                           attentionBias: family.modelType == "qwen2" || tensors["blk.0.attn_q.bias"] != nil,
                           outputBias: tensors["blk.0.attn_output.bias"] != nil,
                           qkNorm: tensors["blk.0.attn_q_norm.weight"] != nil,
                           bosTokenId: bos,
                           eosTokenIds: eos.map { [$0] } ?? [])
        config.rotaryDim = rotary
        family.traits(&config)
        try family.readGGUF(&config, self)
        try config.validate(path: path, names: [
            "hidden_size": "\(arch).embedding_length", "intermediate_size": "\(arch).feed_forward_length",
            "num_hidden_layers": "\(arch).block_count", "num_attention_heads": "\(arch).attention.head_count",
            "num_key_value_heads": "\(arch).attention.head_count_kv", "head_dim": "\(arch).attention.key_length",
            "vocab_size": "tokenizer.ggml.tokens", "rms_norm_eps": "\(arch).attention.layer_norm_rms_epsilon",
            "rope_theta": "\(arch).rope.freq_base", "max_position_embeddings": "\(arch).context_length",
            "partial_rotary_factor": "\(arch).rope.dimension_count",
            "bos_token_id": "tokenizer.ggml.bos_token_id", "eos_token_id": "tokenizer.ggml.eos_token_id"])
        return config
    }

    /// Llama 3 rope scaling from llama.cpp's `rope_freqs.weight` (one divisor per rotary
    /// frequency, written without the parameters): checked against the metadata's scaling when
    /// it declares one, else the parameters are recovered from the factors themselves.
    func ropeScaling(fromFactors tensor: TensorData, declared: RopeScaling?, headDim: Int, theta: Float) throws -> RopeScaling {
        guard tensor.shape == [headDim / 2] else {
            throw LoadError.shapeMismatch(path: path, name: "rope_freqs.weight", found: tensor.shape, expected: [headDim / 2])
        }
        let factors = dequantize(tensor)
        if let declared {
            let expected = declared.frequencyFactors(headDim: headDim, theta: theta)
            if let i = factors.indices.first(where: { abs(factors[$0] - expected[$0]) > 1e-5 * expected[$0] }) {
                throw LoadError.malformed(path: path, field: "rope_freqs.weight[\(i)]", found: "\(factors[i])",
                                          expected: "\(expected[i]), the factor of the rope scaling the metadata declares (\(declared))")
            }
            return declared
        }
        guard let scaling = RopeScaling.llama3(fromFactors: factors, headDim: headDim, theta: theta) else {
            throw LoadError.malformed(path: path, field: "rope_freqs.weight", found: factors.prefix(8).map { "\($0)" }.joined(separator: ", "),
                                      expected: "per-frequency factors of Llama 3 rope scaling (1 up to the factor, rising with wavelength)")
        }
        return scaling
    }

    // MARK: - Hugging Face view

    /// The tensors under their Hugging Face names, with the rows of Llama's q and k
    /// projections put back in HF order (llama.cpp's convert permutes them for its RoPE
    /// layout), and norms as HF stores them (llama.cpp stores Gemma's `1 + w`). Permuted
    /// tensors are copied, still quantized, into `OwnedBytes`; the rest
    /// point into the mapping. Names without an HF counterpart are kept as they are.
    public func hfTensors() throws -> [String: TensorData] {
        let config = try modelConfig()
        var result: [String: TensorData] = [:]
        result.reserveCapacity(tensors.count)
        for name in tensorNames {
            guard var tensor = tensors[name] else { continue }
            if let experts = try expertSlices(tensor, name: name, config: config) {
                for slice in experts {
                    guard result.updateValue(slice, forKey: slice.name) == nil else {
                        throw LoadError.malformed(path: path, field: "tensor '\(name)'", found: "a second tensor named '\(slice.name)' in HF terms", expected: "unique names")
                    }
                }
                continue
            }
            let hfName = Self.hfName(name, family: config.family) ?? name
            if config.normWeightOffset != 0 && hfName.hasSuffix("norm.weight") {
                tensor = Self.shifted(tensor, by: -config.normWeightOffset)
            }
            if config.family.ggufPermutesQueryKey {
                if name.hasSuffix(".attn_q.weight") || name.hasSuffix(".attn_q.bias") {
                    tensor = try unpermuteRows(tensor, heads: config.headCount)
                } else if name.hasSuffix(".attn_k.weight") || name.hasSuffix(".attn_k.bias") {
                    tensor = try unpermuteRows(tensor, heads: config.kvHeadCount)
                }
            }
            tensor.name = hfName
            guard result.updateValue(tensor, forKey: hfName) == nil else {
                throw LoadError.malformed(path: path, field: "tensor '\(name)'", found: "a second tensor named '\(hfName)' in HF terms", expected: "unique names")
            }
        }
        return result
    }

    /// A stack of a layer's experts (`blk.<l>.ffn_gate_exps.weight` [E, rows, columns]) as each
    /// expert's own matrix under its HF name (views of its rows, still quantized); nil for another tensor.
    func expertSlices(_ tensor: TensorData, name: String, config: ModelConfig) throws -> [TensorData]? {
        let parts = name.split(separator: ".")
        guard parts.count == 4, parts[0] == "blk", let l = Int(parts[1]), parts[3] == "weight",
              let projection = MixtureOfExperts.ggufStacks.firstIndex(of: String(parts[2])) else { return nil }
        if config.experts.map({ !$0.routes(layer: l) }) ?? true {
            throw LoadError.malformed(path: path, field: "tensor '\(name)'", found: "experts stacked in layer \(l), which has no router",
                                      expected: "blk.\(l).ffn_gate_inp.weight beside them (or no expert tensors in a dense layer)")
        }
        guard let moe = config.experts, tensor.shape.count == 3, tensor.shape[0] == moe.expertCount else {
            throw LoadError.shapeMismatch(path: path, name: name, found: tensor.shape,
                                          expected: [config.experts?.expertCount ?? 0] + Array(tensor.shape.suffix(2)))
        }
        var matrix = tensor
        matrix.shape = [tensor.shape[0] * tensor.shape[1], tensor.shape[2]]
        let rows = tensor.shape[1]
        return (0..<moe.expertCount).map { e in matrix.rowSlice(e * rows, rows, name: "model.layers.\(l).\(moe.expertModules(e)[projection]).weight") }
    }

    /// Whole-model tensors and the per-layer modules: llama.cpp's name and Hugging Face's.
    static let globalNames: [(gguf: String, hf: String)] = [
        ("token_embd.weight", "model.embed_tokens.weight"), ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
    ]
    static let layerModuleNames: [(gguf: String, hf: String)] = [
        ("attn_norm", "input_layernorm"), ("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"), ("attn_q_norm", "self_attn.q_norm"),
        ("attn_k_norm", "self_attn.k_norm"), ("ffn_norm", "post_attention_layernorm"), ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj"),
    ]

    /// The Hugging Face name of a llama.cpp tensor name in a model of `family` (Llama's names by default), or nil if it has none.
    public static func hfName(_ name: String, family: ModelFamily? = nil) -> String? {
        let names = (family?.ggufLayerNames ?? []) + layerModuleNames
        if let global = globalNames.first(where: { $0.gguf == name }) { return global.hf }
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0] == "blk", let layer = Int(parts[1]), layer >= 0 else { return nil }
        let suffix = parts[3]
        guard suffix == "weight" || suffix == "bias",
              let module = names.first(where: { $0.gguf == parts[2] })?.hf else { return nil }
        return "model.layers.\(layer).\(module).\(suffix)"
    }

    /// The llama.cpp name of a Hugging Face tensor name in a model of `family` (the inverse of `hfName`), or nil.
    public static func ggufName(_ hfName: String, family: ModelFamily? = nil) -> String? {
        let names = (family?.ggufLayerNames ?? []) + layerModuleNames
        if let global = globalNames.first(where: { $0.hf == hfName }) { return global.gguf }
        let parts = hfName.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count >= 5, parts[0] == "model", parts[1] == "layers", let layer = Int(parts[2]), layer >= 0 else { return nil }
        let module = parts[3..<(parts.count - 1)].joined(separator: ".")
        let suffix = parts.last!
        guard suffix == "weight" || suffix == "bias",
              let short = names.first(where: { $0.hf == module })?.gguf else { return nil }
        return "blk.\(layer).\(short).\(suffix)"
    }

    /// `tensor + delta`, elementwise, as an f32 copy (a norm: one row of plain floats).
    static func shifted(_ tensor: TensorData, by delta: Float) -> TensorData {
        let values = dequantize(tensor)
        let storage = OwnedBytes(count: values.count * 4)
        let p = storage.pointer.assumingMemoryBound(to: Float.self)
        for i in values.indices { p[i] = values[i] + delta }
        return TensorData(name: tensor.name, dtype: .f32, shape: tensor.shape, bytes: UnsafeRawPointer(storage.pointer),
                          byteCount: values.count * 4, owner: storage)
    }

    /// Undoes convert_hf_to_gguf's `w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2)`:
    /// HF row `h*hd + i*hd/2 + j` is GGUF row `h*hd + 2*j + i`. Whole rows move, so quantized
    /// rows are copied as bytes.
    private func unpermuteRows(_ tensor: TensorData, heads: Int) throws -> TensorData {
        let rows = tensor.shape[0]
        let rowBytes: Int
        if tensor.shape.count == 1 {
            guard !tensor.dtype.isQuantized else {
                throw LoadError.unsupported(path: path, what: "dtype of 1-D tensor '\(tensor.name)'", found: tensor.dtype.rawValue, supported: ["F32", "F16", "BF16"])
            }
            rowBytes = tensor.dtype.blockBytes
        } else {
            guard tensor.shape.count == 2 else {
                throw LoadError.malformed(path: path, field: "shape of tensor '\(tensor.name)'", found: "\(tensor.shape)", expected: "[rows, columns]")
            }
            rowBytes = tensor.dtype.rowBytes(columns: tensor.shape[1])
        }
        guard heads > 0, rows % (2 * heads) == 0 else {
            throw LoadError.shapeMismatch(path: path, name: tensor.name, found: tensor.shape, expected: [heads * 2 * max(1, rows / max(1, 2 * heads))] + tensor.shape.dropFirst())
        }
        let headRows = rows / heads
        let half = headRows / 2
        let storage = OwnedBytes(count: tensor.byteCount)
        for row in 0..<rows {
            let head = row / headRows, within = row % headRows
            let source = head * headRows + 2 * (within % half) + within / half
            (storage.pointer + row * rowBytes).copyMemory(from: tensor.bytes + source * rowBytes, byteCount: rowBytes)
        }
        var result = tensor
        result.bytes = UnsafeRawPointer(storage.pointer)
        result.owner = storage
        return result
    }
}
