import Foundation
import FinchKernels
import FinchIO

/// The shape of a Llama-family decoder, read from an HF `config.json` or derived from GGUF metadata.
public struct ModelConfig: Equatable, Sendable {
    /// The `model_type`s of `ModelFamily.all`.
    public static var supportedModelTypes: [String] { ModelFamily.all.map(\.modelType) }

    /// HF `model_type` (`llama`, `qwen2`, ...); picks the `family`.
    public var modelType: String
    /// Width C of the residual stream (HF `hidden_size`).
    public var hiddenSize: Int
    /// Width of the SwiGLU MLP's gate and up outputs (HF `intermediate_size`).
    public var intermediateSize: Int
    /// Decoder blocks (HF `num_hidden_layers`).
    public var layerCount: Int
    /// Query heads (HF `num_attention_heads`).
    public var headCount: Int
    /// Key/value heads, a divisor of `headCount` (HF `num_key_value_heads`; equal to it without GQA).
    public var kvHeadCount: Int
    /// Width of one head (HF `head_dim`; hiddenSize / headCount when absent).
    public var headDim: Int
    /// Rows of the embedding and of the output head (HF `vocab_size`).
    public var vocabSize: Int
    /// Epsilon of every RMSNorm (HF `rms_norm_eps`; 1e-6 when a config.json omits it, 1e-5 in `init`).
    public var rmsNormEps: Float
    /// RoPE base frequency (HF `rope_theta`, default 10000).
    public var ropeTheta: Float
    /// RoPE context extension (HF `rope_scaling`): none, linear or llama3.
    public var ropeScaling: RopeScaling
    /// The output head reuses the embedding matrix (HF `tie_word_embeddings`).
    public var tieWordEmbeddings: Bool
    /// Longest context the model was trained for (default 2048); generation refuses prompt + new tokens beyond it.
    public var maxPositionEmbeddings: Int
    /// q, k and v projections carry a bias (Qwen2, or Llama with `attention_bias`).
    public var attentionBias: Bool
    /// o_proj carries a bias too (Llama's `attention_bias` puts one on all four).
    public var outputBias: Bool
    /// RMSNorm over each head of q and k before RoPE (Qwen3).
    public var qkNorm: Bool
    /// With `qkNorm`: one RMSNorm over all of q's heads at once and one over k's (OLMoE: weights
    /// [heads * headDim]), rather than one per head.
    public var qkNormSpansHeads = false
    /// The routed MLPs of a mixture-of-experts model (Qwen3-MoE, Mixtral, OLMoE); nil for a dense model.
    public var experts: MixtureOfExperts?
    /// HF `bos_token_id`, nil when the config has none (a GGUF export prefers the tokenizer's `bos_token`).
    public var bosTokenId: Int?
    /// HF `eos_token_id`, one or several; generation stops at any of them. Empty when absent.
    public var eosTokenIds: [Int]
    /// Layers whose attention takes no rotary embedding (SmolLM3's `no_rope_layers` zeros).
    public var layersWithoutRope: Set<Int> = []
    /// The dimensions of each q and k head that RoPE rotates, from the start (HF
    /// `partial_rotary_factor` times head_dim, truncated as transformers does; Phi-4-mini: 3/4).
    public var rotaryDim: Int
    /// The stored model joins q, k, v into `self_attn.qkv_proj` and gate, up into
    /// `mlp.gate_up_proj` (Phi-3): Finch computes with views of their rows, and a LoRA pair
    /// covers the joined module, as PEFT's does.
    public var fusedProjections = false

    // What Gemma does differently. Families set these (Families/); the defaults are Llama's,
    // and the decoder skips each step whose setting is off.
    /// Added to every RMSNorm weight (q/k norms too) before it multiplies: 1 where the stored
    /// weights are zero-centred, `x̂ * (1 + w)` (Gemma), else 0. GGUF stores `offset + w`.
    public var normWeightOffset: Float = 0
    /// The embeddings are multiplied by this after the lookup (Gemma: sqrt(hidden_size) in f32;
    /// the tied head is not).
    public var embeddingMultiplier: Float = 1
    /// The gated MLP's activation: SwiGLU, or GeGLU with tanh GELU (Gemma).
    public var hiddenActivation: MLPActivation = .silu
    /// RMSNorms on the attention and MLP outputs before each residual add (Gemma's
    /// `post_attention_layernorm` and `post_feedforward_layernorm`; the MLP's input norm is then
    /// `pre_feedforward_layernorm`). Off: the MLP's input norm is `post_attention_layernorm`.
    public var branchOutputNorms = false
    /// HF `query_pre_attn_scalar`: scores are scaled by its inverse square root; nil: by head_dim's.
    public var queryPreAttentionScalar: Double?
    /// Attention scores become c * tanh(score / c) before the softmax (Gemma 2's `attn_logit_softcapping`).
    public var attentionLogitSoftcap: Float?
    /// Logits become c * tanh(logit / c) (Gemma's `final_logit_softcapping`).
    public var finalLogitSoftcap: Float?
    /// Keys a query of a sliding layer sees, itself included (HF `sliding_window`): i - j < window.
    public var slidingWindow: Int?
    /// The layers with sliding-window attention (HF `layer_types` "sliding_attention").
    public var slidingLayers: Set<Int> = []
    /// RoPE base of the sliding layers, which then take no rope scaling (Gemma 3's local base,
    /// `rope_local_base_freq`); nil: the sliding layers use `ropeTheta` and `ropeScaling` as all others.
    public var slidingRopeTheta: Float?

    /// The multiplier of q . k.
    public var attentionScale: Float {
        queryPreAttentionScalar.map { Float(pow($0, -0.5)) } ?? 1 / Float(headDim).squareRoot()
    }

    /// Rows and width of the q (or k) norm over `tokens` tokens: a row per head, or one per token
    /// where the norm spans the heads (`qkNormSpansHeads`).
    func qkNormShape(query: Bool, tokens: Int) -> (rows: Int, dim: Int) {
        let heads = query ? headCount : kvHeadCount
        return qkNormSpansHeads ? (tokens, heads * headDim) : (tokens * heads, headDim)
    }

    /// The window of layer `l`'s attention, nil where it sees every earlier key.
    public func window(ofLayer l: Int) -> Int? { slidingLayers.contains(l) ? slidingWindow : nil }

    /// A shape given field by field (tests, random models); `headDim` nil means hiddenSize / headCount. Not validated.
    public init(modelType: String, hiddenSize: Int, intermediateSize: Int, layerCount: Int,
                headCount: Int, kvHeadCount: Int, headDim: Int? = nil, vocabSize: Int,
                rmsNormEps: Float = 1e-5, ropeTheta: Float = 10000, ropeScaling: RopeScaling = .none,
                tieWordEmbeddings: Bool = false, maxPositionEmbeddings: Int = 2048,
                attentionBias: Bool = false, outputBias: Bool = false, qkNorm: Bool = false,
                bosTokenId: Int? = nil, eosTokenIds: [Int] = []) {
        self.modelType = modelType
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.layerCount = layerCount
        self.headCount = headCount
        self.kvHeadCount = kvHeadCount
        self.headDim = headDim ?? hiddenSize / headCount
        self.rotaryDim = self.headDim
        self.vocabSize = vocabSize
        self.rmsNormEps = rmsNormEps
        self.ropeTheta = ropeTheta
        self.ropeScaling = ropeScaling
        self.tieWordEmbeddings = tieWordEmbeddings
        self.maxPositionEmbeddings = maxPositionEmbeddings
        self.attentionBias = attentionBias
        self.outputBias = outputBias
        self.qkNorm = qkNorm
        self.bosTokenId = bosTokenId
        self.eosTokenIds = eosTokenIds
    }

    /// The family of `modelType` (Llama's for a type no family names: the shape alone was given).
    public var family: ModelFamily { ModelFamily.named(modelType) ?? .llama }

    /// Width of the query projection's output (headCount * headDim).
    public var qDim: Int { headCount * headDim }
    /// Width of the key and value projections' outputs (kvHeadCount * headDim).
    public var kvDim: Int { kvHeadCount * headDim }

    /// Reads an HF `config.json`.
    public static func load(path: String) throws -> ModelConfig {
        guard let data = FileManager.default.contents(atPath: path) else { throw LoadError.fileNotFound(path: path) }
        let object: Any
        do { object = try JSONSerialization.jsonObject(with: data) } catch {
            throw LoadError.malformed(path: path, field: "JSON", found: "invalid JSON (\(error.localizedDescription))", expected: "a JSON object")
        }
        guard let json = object as? [String: Any] else {
            throw LoadError.malformed(path: path, field: "top level", found: "\(type(of: object))", expected: "a JSON object")
        }
        return try ModelConfig(json: json, path: path)
    }

    /// Parses the fields of an HF config dictionary; `path` names the source in errors.
    public init(json: [String: Any], path: String) throws {
        let fields = ConfigFields(json: json, path: path)
        guard let modelType = json["model_type"] as? String else {
            throw LoadError.malformed(path: path, field: "model_type", found: "\(json["model_type"] ?? "nothing")", expected: "a string")
        }
        guard let family = ModelFamily.named(modelType) else {
            throw LoadError.unsupported(path: path, what: "model_type", found: modelType, supported: Self.supportedModelTypes)
        }
        func size(_ key: String) throws -> Int {
            let value = try fields.int(key)
            guard value > 0 else { throw LoadError.malformed(path: path, field: key, found: "\(value)", expected: "a positive integer") }
            return value
        }
        let hidden = try size("hidden_size")
        let heads = try size("num_attention_heads")
        let kvHeads = try fields.optionalInt("num_key_value_heads") ?? heads
        guard hidden > 0, heads > 0, kvHeads > 0, heads % kvHeads == 0 else {
            throw LoadError.malformed(path: path, field: "num_attention_heads / num_key_value_heads",
                                      found: "\(heads) / \(kvHeads)", expected: "positive, heads a multiple of KV heads")
        }

        // transformers 5 writes `rope_parameters` (holding rope_theta); 4.x wrote rope_theta + rope_scaling.
        let ropeParameters = json["rope_parameters"] as? [String: Any]
        var theta = try fields.float("rope_theta", 10000)
        if let t = ropeParameters?["rope_theta"] as? NSNumber { theta = t.floatValue }
        let scalingJSON = (json["rope_scaling"] as? [String: Any]) ?? ropeParameters
        let scaling = try Self.parseRopeScaling(scalingJSON, config: fields, path: path)

        let eos: [Int]
        if let list = json["eos_token_id"] as? [NSNumber] { eos = list.map(\.intValue) }
        else if let one = json["eos_token_id"] as? NSNumber { eos = [one.intValue] }
        else { eos = [] }

        // What every family shares; `attention_bias` puts a bias on q, k, v and o unless the family says otherwise.
        self.init(modelType: modelType,
                  hiddenSize: hidden,
                  intermediateSize: try size("intermediate_size"),
                  layerCount: try size("num_hidden_layers"),
                  headCount: heads,
                  kvHeadCount: kvHeads,
                  headDim: try fields.optionalInt("head_dim"),
                  vocabSize: try size("vocab_size"),
                  rmsNormEps: try fields.float("rms_norm_eps", 1e-6),
                  ropeTheta: theta,
                  ropeScaling: scaling,
                  tieWordEmbeddings: fields.bool("tie_word_embeddings", false),
                  maxPositionEmbeddings: try fields.optionalInt("max_position_embeddings") ?? 2048,
                  attentionBias: fields.bool("attention_bias", false),
                  outputBias: fields.bool("attention_bias", false),
                  qkNorm: false,
                  bosTokenId: try fields.optionalInt("bos_token_id"),
                  eosTokenIds: eos)
        let partial = try (ropeParameters?["partial_rotary_factor"] as? NSNumber)?.floatValue ?? fields.float("partial_rotary_factor", 1)
        guard partial > 0 && partial <= 1 else {
            throw LoadError.malformed(path: path, field: "partial_rotary_factor", found: "\(partial)", expected: "a number in (0, 1]")
        }
        rotaryDim = Int(Float(headDim) * partial)
        family.traits(&self)
        try family.readHF(&self, fields)
        if fields.bool("mlp_bias", false) {
            throw LoadError.unsupported(path: path, what: "mlp_bias", found: "true", supported: ["false"])
        }
        // Errors name the file's own key: Mixtral's (and transformers 5's Qwen3-MoE's) expert count is num_local_experts.
        try validate(path: path, names: json["num_experts"] == nil && json["num_local_experts"] != nil ? ["num_experts": "num_local_experts"] : [:])
    }

    /// Sizes within what a model of this family can have and consistent with each other, so that
    /// nothing allocated from them overflows or exhausts memory, and numbers that are finite and
    /// positive. `names` maps the HF keys to the file's own (a GGUF's metadata keys) for the error.
    func validate(path: String, names: [String: String] = [:]) throws {
        func fail(_ key: String, _ found: Any, _ expected: String) -> LoadError {
            .malformed(path: path, field: names[key] ?? key, found: "\(found)", expected: expected)
        }
        let sizes: [(String, Int, ClosedRange<Int>)] = [
            ("hidden_size", hiddenSize, 1...65536), ("intermediate_size", intermediateSize, 1...(1 << 20)),
            ("num_hidden_layers", layerCount, 1...1024), ("num_attention_heads", headCount, 1...1024),
            ("num_key_value_heads", kvHeadCount, 1...headCount), ("head_dim", headDim, 2...4096),
            ("vocab_size", vocabSize, 1...(1 << 24)), ("max_position_embeddings", maxPositionEmbeddings, 1...(1 << 24)),
        ]
        for (key, value, range) in sizes where !range.contains(value) {
            throw fail(key, value, "an integer in \(range.lowerBound)...\(range.upperBound)")
        }
        if headCount % kvHeadCount != 0 { throw fail("num_key_value_heads", kvHeadCount, "a divisor of the \(headCount) attention heads") }
        if headDim % 2 != 0 { throw fail("head_dim", headDim, "an even number (rotary embeddings pair dimensions)") }
        if rotaryDim % 2 != 0 || !(2...headDim).contains(rotaryDim) {
            throw fail("partial_rotary_factor", "\(rotaryDim) rotated dimensions", "an even number from 2 to head_dim \(headDim)")
        }
        if case let .longrope(short, long, original, factor) = ropeScaling {
            for (key, list) in [("short_factor", short), ("long_factor", long)] where list.count != rotaryDim / 2 || !list.allSatisfy({ $0.isFinite && $0 > 0 }) {
                throw fail("rope_scaling.\(key)", "\(list.count) values", "\(rotaryDim / 2) positive numbers (one per rotated frequency)")
            }
            if original < 1 { throw fail("original_max_position_embeddings", original, "a positive integer") }
            if !(factor.isFinite && factor > 0) { throw fail("rope_scaling.attention_factor", factor, "a positive finite number") }
        }
        if !(rmsNormEps.isFinite && rmsNormEps > 0 && rmsNormEps < 1) { throw fail("rms_norm_eps", rmsNormEps, "a number in (0, 1)") }
        if !(ropeTheta.isFinite && ropeTheta > 0) { throw fail("rope_theta", ropeTheta, "a positive finite number") }
        if let bos = bosTokenId, !(0..<vocabSize).contains(bos) { throw fail("bos_token_id", bos, "a token id below vocab_size \(vocabSize)") }
        if let eos = eosTokenIds.first(where: { !(0..<vocabSize).contains($0) }) {
            throw fail("eos_token_id", eos, "token ids below vocab_size \(vocabSize)")
        }
        if let window = slidingWindow, window < 1 { throw fail("sliding_window", window, "a positive integer") }
        if !slidingLayers.isEmpty && slidingWindow == nil { throw fail("sliding_window", "nothing", "a window for the sliding layers") }
        if let l = slidingLayers.first(where: { !(0..<layerCount).contains($0) }) { throw fail("layer_types", l, "layers below \(layerCount)") }
        for (key, value) in [("attn_logit_softcapping", attentionLogitSoftcap), ("final_logit_softcapping", finalLogitSoftcap),
                             ("rope_local_base_freq", slidingRopeTheta)] {
            if let value, !(value.isFinite && value > 0) { throw fail(key, value, "a positive finite number or null") }
        }
        if let q = queryPreAttentionScalar, !(q.isFinite && q > 0) { throw fail("query_pre_attn_scalar", q, "a positive finite number") }
        if !(embeddingMultiplier.isFinite && embeddingMultiplier > 0) { throw fail("hidden_size", hiddenSize, "an embedding scale that is finite") }
        if let moe = experts { try moe.validate(layerCount: layerCount, fail: fail) }
    }

    /// The scaling of `json` (`rope_scaling`, or transformers 5's `rope_parameters`); `config`
    /// gives the top-level keys LongRoPE also reads (`original_max_position_embeddings`,
    /// `max_position_embeddings`).
    static func parseRopeScaling(_ json: [String: Any]?, config: ConfigFields, path: String) throws -> RopeScaling {
        guard let json else { return .none }
        let kind = (json["rope_type"] as? String) ?? (json["type"] as? String) ?? "default"
        func number(_ key: String) throws -> Float {
            guard let n = json[key] as? NSNumber else {
                throw LoadError.malformed(path: path, field: "rope_scaling.\(key)", found: "\(json[key] ?? "nothing")", expected: "a number")
            }
            return n.floatValue
        }
        func numbers(_ key: String) throws -> [Float] {
            guard let list = json[key] as? [NSNumber] else {
                throw LoadError.malformed(path: path, field: "rope_scaling.\(key)", found: "\(json[key] ?? "nothing")", expected: "a list of numbers")
            }
            return list.map(\.floatValue)
        }
        switch kind {
        case "longrope", "su":
            // transformers: the top-level original_max_position_embeddings wins (Phi-3 writes it
            // there); the attention factor defaults to sqrt(1 + ln(factor) / ln(original)) with
            // factor = max_position_embeddings / original unless given.
            let maxPositions = try config.optionalInt("max_position_embeddings") ?? 2048
            let original = try config.optionalInt("original_max_position_embeddings")
                ?? (json["original_max_position_embeddings"] as? NSNumber)?.intValue ?? maxPositions
            guard original > 0 else {
                throw LoadError.malformed(path: path, field: "original_max_position_embeddings", found: "\(original)", expected: "a positive integer")
            }
            let factor = (json["factor"] as? NSNumber)?.doubleValue ?? Double(maxPositions) / Double(original)
            let attention = (json["attention_factor"] as? NSNumber)?.floatValue
                ?? (factor <= 1 ? 1 : Float((1 + log(factor) / log(Double(original))).squareRoot()))
            return .longrope(shortFactors: try numbers("short_factor"), longFactors: try numbers("long_factor"),
                             originalMaxPositions: original, attentionFactor: attention)
        case "default": return .none
        case "linear": return .linear(factor: try number("factor"))
        case "llama3":
            return .llama3(factor: try number("factor"), lowFreqFactor: try number("low_freq_factor"),
                           highFreqFactor: try number("high_freq_factor"),
                           originalMaxPositions: Int(try number("original_max_position_embeddings")))
        default:
            throw LoadError.unsupported(path: path, what: "rope_scaling type", found: kind, supported: ["default", "linear", "llama3", "longrope"])
        }
    }
}

extension ModelConfig {
    /// An HF `config.json` for this shape, as transformers writes it for the model type.
    public func huggingFaceJSON() -> [String: Any] {
        var json: [String: Any] = [
            "model_type": modelType, "hidden_size": hiddenSize, "intermediate_size": intermediateSize,
            "num_hidden_layers": layerCount, "num_attention_heads": headCount, "num_key_value_heads": kvHeadCount,
            "head_dim": headDim, "vocab_size": vocabSize, "rms_norm_eps": rmsNormEps, "rope_theta": ropeTheta,
            "tie_word_embeddings": tieWordEmbeddings, "max_position_embeddings": maxPositionEmbeddings,
            "hidden_act": "silu", "torch_dtype": "float32",
            "architectures": [family.hfArchitecture],
        ]
        family.writeHF(self, &json)
        if let bos = bosTokenId { json["bos_token_id"] = bos }
        if eosTokenIds.count == 1 { json["eos_token_id"] = eosTokenIds[0] } else if !eosTokenIds.isEmpty { json["eos_token_id"] = eosTokenIds }
        switch ropeScaling {
        case .none: break
        case let .linear(factor): json["rope_scaling"] = ["rope_type": "linear", "factor": factor]
        case let .llama3(factor, low, high, original):
            json["rope_scaling"] = ["rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                                    "original_max_position_embeddings": original]
        case let .longrope(short, long, original, factor):
            json["rope_scaling"] = ["rope_type": "longrope", "short_factor": short, "long_factor": long, "attention_factor": factor]
            json["original_max_position_embeddings"] = original
        }
        if rotaryDim != headDim { json["partial_rotary_factor"] = Double(rotaryDim) / Double(headDim) }
        return json
    }
}
