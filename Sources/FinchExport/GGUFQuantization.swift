import FinchKernels

/// The element type of each tensor of a quantized GGUF export, chosen as llama.cpp's quantizer
/// (llama-quant.cpp) chooses it for a file type: the base type of the type's name, a higher one
/// for the tensors a mixture (`_S`, `_M`, `_L`) protects, and a block-32 type where a row's
/// length is not a multiple of the 256-value K blocks. Vectors (norms, biases) stay F32.
struct GGUFTensorTypes {
    let fileType: ExportDType
    let layerCount: Int
    /// Query heads per KV head (llama.cpp's n_gqa).
    let groupSize: Int
    let tiedEmbeddings: Bool
    /// Experts per routed layer (llama.cpp's n_expert; 1 for a dense model). llama.cpp treats
    /// 8-expert models apart (Mixtral's count): attn_k and attn_v at Q8_0, attn_output at Q5_K
    /// in the low-bit mixtures.
    let expertCount: Int
    /// An importance matrix is given (llama.cpp's has_imatrix): Q4_0 and Q5_0 files then keep the
    /// first eighth of the layers' ffn_down in Q4_1 / Q5_1.
    let hasImportance: Bool
    /// llama-quantize's `--pure`: every matrix in the base type (rows that do not fit it fall back).
    var pure = false
    /// llama-quantize's `--output-tensor-type` and `--token-embedding-type`: those tensors in this
    /// type, as given (a tied embedding follows the output's unless its own is given).
    var outputType: DType? = nil, embeddingType: DType? = nil

    init(fileType: ExportDType, layerCount: Int, groupSize: Int, tiedEmbeddings: Bool, expertCount: Int = 1, hasImportance: Bool = false) {
        self.fileType = fileType; self.layerCount = layerCount; self.groupSize = groupSize; self.tiedEmbeddings = tiedEmbeddings
        self.expertCount = expertCount; self.hasImportance = hasImportance
    }

    /// llama.cpp's use_more_bits: the first and last eighth of the layers and every third between.
    static func usesMoreBits(_ layer: Int, of layers: Int) -> Bool {
        layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2
    }

    /// The layer of `blk.N.…`. llama.cpp counts attn_v and ffn_down tensors as it meets them, in
    /// its loader's order, which sorts tensors by layer number: the count is the layer.
    static func layer(of name: String) -> Int {
        guard name.hasPrefix("blk.") else { return 0 }
        return Int(name.dropFirst(4).prefix { $0.isNumber }) ?? 0
    }

    /// The type of GGUF tensor `name` of row-major `shape`.
    func type(of name: String, shape: [Int]) -> DType {
        let base = fileType.dtype
        // Norms, 1-D tensors and a mixture of experts' router stay f32, as llama.cpp writes and quantizes them.
        guard shape.count >= 2, name.hasSuffix("weight"), !name.contains("_norm.weight"), !name.contains("ffn_gate_inp") else { return .f32 }
        // The user's types for these two come first and as given (llama.cpp checks them before anything else).
        if let embeddingType, name == "token_embd.weight" { return embeddingType }
        if let outputType, name == "output.weight" { return outputType }
        guard base.isQuantized else { return base }
        let columns = shape.last!
        if pure { return Self.fallback(base, columns: columns) }
        var type = base
        if let outputType, tiedEmbeddings && name == "token_embd.weight" {
            type = outputType
        } else if name == "output.weight" || (tiedEmbeddings && name == "token_embd.weight") {
            type = columns % base.blockSize != 0 ? .q8_0 : base == .q8_0 ? .q8_0 : .q6_K
        } else if Self.isAttentionV(name) {
            let layer = Self.layer(of: name)
            switch fileType {
            case .q2_k: type = groupSize >= 4 ? .q4_K : .q3_K
            case .q3_k_m: type = layer < 2 ? .q5_K : .q4_K
            case .q3_k_l: type = .q5_K
            case .iq4_nl, .iq4_xs: if groupSize >= 4 { type = .q5_K }
            case .q4_k_m, .q5_k_m: if Self.usesMoreBits(layer, of: layerCount) { type = .q6_K }
            case .q4_k_s: if layer < 4 { type = .q5_K }
            default: break
            }
        } else if name.contains("ffn_down") {
            let layer = Self.layer(of: name)
            switch fileType {
            case .q2_k: type = .q3_K
            case .q3_k_m: type = layer < layerCount / 16 ? .q5_K : .q4_K
            case .q3_k_l: type = .q5_K
            case .q4_k_m, .q5_k_m: if Self.usesMoreBits(layer, of: layerCount) { type = .q6_K }
            case .q4_k_s: if layer < layerCount / 8 { type = .q5_K }
            case .iq4_nl, .iq4_xs: if !hasImportance && layer < layerCount / 8 { type = .q5_K }
            case .q4_0, .q5_0: if hasImportance && layer < layerCount / 8 { type = fileType == .q4_0 ? .q4_1 : .q5_1 }
            default: break
            }
        } else if name.contains("attn_output.weight") {
            if expertCount == 8 {
                if [.q2_k, .q3_k_s, .q3_k_m, .q4_k_s, .q4_k_m, .iq4_nl, .iq4_xs].contains(fileType) { type = .q5_K }
            } else {
                switch fileType {
                case .q2_k: type = .q3_K
                case .q3_k_m: type = .q4_K
                case .q3_k_l: type = .q5_K
                default: break
                }
            }
        }
        // llama.cpp's bump for 8-expert models: attn_v (after its mixture's rule) and attn_k at Q8_0.
        if expertCount == 8 && (Self.isAttentionV(name) || name.contains("attn_k.weight")) { type = .q8_0 }
        return Self.fallback(type, columns: columns)
    }

    /// llama.cpp's attn_v category, which holds a joined q, k, v (Phi-3's attn_qkv) too.
    static func isAttentionV(_ name: String) -> Bool { name.contains("attn_v.weight") || name.contains("attn_qkv.weight") }

    /// llama.cpp's tensor_type_fallback: a K type for rows that do not split into 256-value blocks
    /// becomes a block-32 type of at least its precision; F16 where even 32 does not divide.
    static func fallback(_ type: DType, columns: Int) -> DType {
        guard columns % type.blockSize != 0 else { return type }
        let replacement: DType = switch type {
        case .q2_K, .q3_K: .q4_0
        case .q4_K: .q5_0
        case .q5_K: .q5_1
        case .q6_K: .q8_0
        case .iq4_XS: .iq4_NL
        default: .f16
        }
        return columns % replacement.blockSize == 0 ? replacement : .f16
    }

    /// One line naming the type of every tensor: by role (the name without `blk.N.`), the types
    /// with their counts, e.g. "attn_v.weight Q6_K x12, Q4_K x18".
    static func summary(_ tensors: [(name: String, type: DType)]) -> String {
        var roles: [String] = []
        var counts: [String: [(DType, Int)]] = [:]
        for (name, type) in tensors {
            var role = name
            if role.hasPrefix("blk."), let dot = role.dropFirst(4).firstIndex(of: ".") { role = String(role[role.index(after: dot)...]) }
            if counts[role] == nil { roles.append(role) }
            var list = counts[role, default: []]
            if let i = list.firstIndex(where: { $0.0 == type }) { list[i].1 += 1 } else { list.append((type, 1)) }
            counts[role] = list
        }
        return roles.map { role in
            "\(role) " + counts[role]!.map { $0.1 == 1 ? $0.0.rawValue : "\($0.0.rawValue) x\($0.1)" }.joined(separator: ", ")
        }.joined(separator: "; ")
    }
}
