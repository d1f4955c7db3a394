import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import FinchKernels
import FinchIO
import FinchTokenizers
import FinchModels

/// What an export wrote.
public struct ExportSummary: Sendable {
    /// The folder (hf) or file (gguf) written, as given in `ExportOptions.output`.
    public var output: String
    /// Files written, relative to the output folder (hf) or the file itself (gguf).
    public var files: [String]
    /// Tensors written (for gguf, extra ones such as rope factors included).
    public var tensorCount: Int
    /// Bytes of tensor data written, headers and tokenizer files excluded.
    public var bytes: Int
    /// LoRA modules merged into their weights (for gguf-lora: the modules of the adapter written).
    public var mergedModules: Int
    /// GGUF: the type of every tensor, by role ("attn_v.weight Q6_K x12, Q4_K x18; ..."); nil for hf.
    public var tensorTypes: String? = nil
    /// With `--imatrix`: tensors whose blocks were fit under the importance matrix, of those
    /// quantized to a type that uses one (all but Q8_0); nil without one.
    public var importanceWeighted: (weighted: Int, quantized: Int)? = nil
}

/// Which tensors of a quantized GGUF export an importance matrix weights, looked up by GGUF name
/// as llama-quantize looks them up: a tensor without an entry is quantized without one (the
/// token embedding, which llama-imatrix does not see); an entry of the wrong size is an error.
struct ImportanceWeighting {
    /// Per GGUF tensor name, one weight per column (for a stack of experts, each expert's in turn).
    let weights: [String: [Float]]
    /// Tensors quantized to a type that uses importance.
    let quantizedCount: Int

    init(_ matrix: ImportanceMatrix, tensors: [GGUFWriter.Tensor]) throws {
        var weights: [String: [Float]] = [:], quantized = 0
        for tensor in tensors where tensor.dtype.isQuantized && tensor.dtype != .q8_0 {
            quantized += 1
            guard let values = matrix.entries[tensor.name] else { continue }
            let columns = tensor.shape.last!, experts = tensor.shape.count == 3 ? tensor.shape[0] : 1
            guard values.count == columns * experts else {
                // llama-quantize skips the token embedding's entry (an output it is tied to) and refuses any other.
                if tensor.name == "token_embd.weight" { continue }
                throw LoadError.malformed(path: matrix.path, field: tensor.name, found: "\(values.count) values",
                                          expected: "\(columns * experts), the tensor's \(columns) columns" + (experts > 1 ? " times \(experts) experts" : "")
                                              + " (an importance matrix of this model)")
            }
            weights[tensor.name] = values
        }
        if weights.isEmpty && quantized > 0 {
            let sample = matrix.entries.keys.sorted().prefix(3).joined(separator: ", ")
            throw LoadError.malformed(path: matrix.path, field: "entries", found: "none naming a tensor of this model (\(sample), ...)",
                                      expected: "GGUF tensor names such as \(tensors.first { $0.dtype.isQuantized }?.name ?? "blk.0.attn_q.weight")")
        }
        self.weights = weights
        quantizedCount = quantized
    }
}

/// `finch export`: merges an optional LoRA adapter into a model and writes it as an HF folder
/// or a GGUF file. Nothing appears under the output name until it is complete.
public enum Exporter {
    /// Runs the export. Throws `ExportError` (bad dtype, existing output, mismatched adapter,
    /// unsupported model) or a load/save error; `output` appears only once it is complete.
    public static func export(_ options: ExportOptions) throws -> ExportSummary {
        guard ExportDType.supported(by: options.format).contains(options.dtype) else {
            throw ExportError.dtypeNotSupported(dtype: options.dtype, format: options.format)
        }
        let output = options.output
        if FileManager.default.fileExists(atPath: output) && !options.overwrite { throw ExportError.outputExists(path: output) }
        try checkWritableParent(of: output)
        if options.format == .ggufLoRA && options.adapter == nil { throw ExportError.adapterRequired(format: options.format) }
        if options.format != .gguf && (options.pure || options.outputTensorType != nil || options.tokenEmbeddingType != nil) {
            throw ExportError.unsupported(format: options.format, what: "--pure, --output-tensor-type or --token-embedding-type", found: options.format.rawValue,
                                          supported: ["gguf"])
        }
        if options.imatrix != nil && (options.format != .gguf || !options.dtype.dtype.isQuantized || options.dtype == .q8_0) {
            throw ExportError.unsupported(format: options.format, what: "--imatrix with --dtype", found: options.dtype.rawValue,
                                          supported: ["gguf with a quantized type other than q8_0 (q4_k_m, q5_k_m, q6_k, q4_0, ...)"])
        }
        let importance = try options.imatrix.map { try ImportanceMatrix.read(path: $0) }
        let files = try ModelFiles.open(options.model, allowNonFinite: options.allowNonFinite)
        let merged = try MergedWeights(files: files, adapter: options.adapter)
        switch options.format {
        case .hf: return try HFFolderWriter.write(merged, options: options)
        case .gguf: return try GGUFExport.write(merged, options: options, importance: importance)
        case .ggufLoRA: return try GGUFExport.writeAdapter(merged, options: options)
        }
    }

    /// Fails early, naming the path and the OS's reason, when the output's folder cannot take a new entry.
    static func checkWritableParent(of path: String) throws {
        let parent = (path as NSString).deletingLastPathComponent
        let folder = parent.isEmpty ? "." : parent
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder, isDirectory: &isDirectory) else {
            throw SaveError.unwritable(path: path, reason: "the folder \(folder) does not exist")
        }
        guard isDirectory.boolValue else { throw SaveError.unwritable(path: path, reason: "\(folder) is not a folder") }
        guard access(folder, W_OK | X_OK) == 0 else {
            throw SaveError.unwritable(path: path, reason: String(cString: strerror(errno)))
        }
    }

    /// Builds a folder at a temporary sibling of `path` and renames it into place once `body`
    /// has filled it; on failure the sibling is removed. An existing `path` is replaced only
    /// after the new folder is complete.
    static func writeFolderAtomically(_ path: String, _ body: (String) throws -> Void) throws {
        let parent = (path as NSString).deletingLastPathComponent
        let base = (path as NSString).lastPathComponent
        let prefix = (parent.isEmpty ? "" : parent + "/") + ".\(base).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        guard mkdir(prefix, 0o755) == 0 else { throw SaveError.unwritable(path: path, reason: String(cString: strerror(errno))) }
        var done = false
        defer { if !done { try? FileManager.default.removeItem(atPath: prefix) } }
        try body(prefix)
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) {
            // rename(2) cannot replace a non-empty folder: move the old one aside first.
            let old = prefix + ".old"
            guard rename(path, old) == 0 else { throw SaveError.unwritable(path: path, reason: String(cString: strerror(errno))) }
            guard rename(prefix, path) == 0 else {
                let reason = String(cString: strerror(errno))
                _ = rename(old, path)
                throw SaveError.unwritable(path: path, reason: reason)
            }
            try? FileManager.default.removeItem(atPath: old)
        } else {
            guard rename(prefix, path) == 0 else { throw SaveError.unwritable(path: path, reason: String(cString: strerror(errno))) }
        }
        done = true
    }

    /// JSON text as transformers writes its config files (indented, keys sorted).
    static func jsonText(_ object: Any) throws -> Data {
        var data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        data.append(0x0A)
        return data
    }
}

/// Writes a Hugging Face folder: config.json, generation_config.json, model.safetensors (or
/// shards of at most `maxShardBytes` with model.safetensors.index.json) and the tokenizer.
enum HFFolderWriter {
    static let tokenizerFiles = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"]

    static func write(_ merged: MergedWeights, options: ExportOptions) throws -> ExportSummary {
        let files = merged.files
        let dtype = options.dtype.dtype
        let torchDType = ["F32": "float32", "F16": "float16", "BF16": "bfloat16"][dtype.rawValue]!
        // Tied models keep no lm_head; names Finch's model does not use are not exported.
        var names = merged.names.filter { $0.hasPrefix("model.") || $0 == "lm_head.weight" }
        if files.config.tieWordEmbeddings { names.removeAll { $0 == "lm_head.weight" } }

        // Shards: names in order, a new shard when the next tensor would pass the limit.
        var shards: [[String]] = [[]]
        var shardBytes = 0, totalBytes = 0
        for name in names {
            let bytes = merged.shape(name).reduce(1, *) * dtype.blockBytes
            if shardBytes > 0 && shardBytes + bytes > options.maxShardBytes { shards.append([]); shardBytes = 0 }
            shards[shards.count - 1].append(name)
            shardBytes += bytes
            totalBytes += bytes
        }
        let shardFiles = shards.count == 1 ? ["model.safetensors"]
            : (1...shards.count).map { String(format: "model-%05d-of-%05d.safetensors", $0, shards.count) }

        var written: [String] = []
        try Exporter.writeFolderAtomically(options.output) { folder in
            func path(_ name: String) -> String { (folder as NSString).appendingPathComponent(name) }
            func writeJSON(_ object: Any, _ name: String) throws {
                try Exporter.jsonText(object).write(to: URL(fileURLWithPath: path(name)))
                written.append(name)
            }

            for (shard, file) in zip(shards, shardFiles) {
                try SafeTensors.write(path: path(file), layout: shard.map { (name: $0, shape: merged.shape($0)) }, dtype: dtype,
                                      metadata: ["format": "pt"]) { merged.values($0) }
                written.append(file)
            }
            if shards.count > 1 {
                var weightMap: [String: String] = [:]
                for (shard, file) in zip(shards, shardFiles) { for name in shard { weightMap[name] = file } }
                try writeJSON(["metadata": ["total_size": totalBytes], "weight_map": weightMap], "model.safetensors.index.json")
            }

            // config.json: the source's own when it has one (keeping fields Finch does not read).
            var config = files.config.huggingFaceJSON()
            var generation: [String: Any] = [:]
            if files.gguf == nil {
                let source = (files.source as NSString).appendingPathComponent("config.json")
                if let data = FileManager.default.contents(atPath: source),
                   let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] { config = json }
                let generationPath = (files.source as NSString).appendingPathComponent("generation_config.json")
                if let data = FileManager.default.contents(atPath: generationPath),
                   let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] { generation = json }
            }
            config["torch_dtype"] = torchDType
            config["dtype"] = torchDType
            try writeJSON(config, "config.json")
            if generation.isEmpty {
                generation["_from_model_config"] = true
                if let bos = files.config.bosTokenId { generation["bos_token_id"] = bos }
                if files.config.eosTokenIds.count == 1 { generation["eos_token_id"] = files.config.eosTokenIds[0] }
                else if !files.config.eosTokenIds.isEmpty { generation["eos_token_id"] = files.config.eosTokenIds }
            }
            try writeJSON(generation, "generation_config.json")

            // The tokenizer: copied from an HF source, built from a GGUF's vocabulary.
            if let gguf = files.gguf {
                if gguf.metadata["tokenizer.ggml.model"] != nil {
                    let (tokenizerJSON, tokenizerConfig) = try TokenizerConversion.huggingFaceFiles(from: gguf, modelMaxLength: files.config.maxPositionEmbeddings)
                    try Data(tokenizerJSON.utf8).write(to: URL(fileURLWithPath: path("tokenizer.json")))
                    written.append("tokenizer.json")
                    try writeJSON(tokenizerConfig, "tokenizer_config.json")
                }
            } else {
                for name in tokenizerFiles {
                    let source = (files.source as NSString).appendingPathComponent(name)
                    guard FileManager.default.fileExists(atPath: source) else { continue }
                    try FileManager.default.copyItem(atPath: source, toPath: path(name))
                    written.append(name)
                }
            }
        }
        return ExportSummary(output: options.output, files: written, tensorCount: names.count, bytes: totalBytes,
                             mergedModules: merged.mergedModuleCount)
    }
}

/// Writes one GGUF file in llama.cpp's layout: llama.cpp tensor names, q/k rows permuted for
/// its RoPE, 1-D tensors (norms, biases) as F32, the metadata of the source GGUF (or built from
/// an HF folder's config and tokenizer).
enum GGUFExport {

    /// llama.cpp's architecture name for the model, or `ExportError.unsupported`.
    static func architecture(_ config: ModelConfig, format: ExportFormat) throws -> String {
        guard let arch = config.family.ggufArchitecture else {
            throw ExportError.unsupported(format: format, what: "model_type", found: config.modelType,
                                          supported: ModelFamily.all.filter { $0.ggufArchitecture != nil }.map(\.modelType))
        }
        return arch
    }

    /// GGUF names whose rows llama.cpp permutes for its RoPE (q and k of Llama and the families
    /// its converter builds on Llama), with their head counts.
    static func permutedRows(_ config: ModelConfig, arch: String) -> [String: Int] {
        guard config.family.ggufPermutesQueryKey else { return [:] }
        return Dictionary(uniqueKeysWithValues: (0..<config.layerCount).flatMap { l in
            ["weight", "bias"].flatMap { s in [("blk.\(l).attn_q.\(s)", config.headCount), ("blk.\(l).attn_k.\(s)", config.kvHeadCount)] }
        })
    }

    /// The adapter as llama.cpp's LoRA GGUF (what its convert_lora_to_gguf.py writes): general.type
    /// `adapter`, adapter.type `lora`, adapter.lora.alpha, and per adapted weight `<name>.lora_a`
    /// [r, in] and `<name>.lora_b` [out, r] (B's rows permuted as the base's q/k rows are).
    /// llama.cpp scales by alpha / r; for rsLoRA (alpha / sqrt(r)) the alpha written is alpha * sqrt(r).
    static func writeAdapter(_ merged: MergedWeights, options: ExportOptions) throws -> ExportSummary {
        let config = merged.files.config, lora = merged.lora!
        let arch = try architecture(config, format: .ggufLoRA)
        if !merged.expertPairs.isEmpty {
            throw ExportError.unsupported(format: .ggufLoRA, what: "LoRA on a mixture of experts' experts (target_parameters)", found: "present",
                                          supported: ["adapters on attention and dense projections (export --format gguf with the adapter merges experts too)"])
        }
        let permute = permutedRows(config, arch: arch)
        let type = options.dtype.dtype
        var entries: [(tensor: GGUFWriter.Tensor, values: () -> [Float])] = []
        let modules = merged.pairs.keys.compactMap { module in GGUFFile.ggufName(module + ".weight", family: config.family).map { (module, $0) } }
        let layer = { (name: String) -> Int in name.hasPrefix("blk.") ? Int(name.dropFirst(4).prefix { $0.isNumber }) ?? 0 : -1 }
        for (module, name) in modules.sorted(by: { (layer($0.1), $0.1) < (layer($1.1), $1.1) }) {
            let pair = merged.pairs[module]!
            for (suffix, tensor) in [("lora_a", pair.a), ("lora_b", pair.b)] {
                let stored = tensor.shape.last! % type.blockSize == 0 ? type : .f32
                entries.append((GGUFWriter.Tensor(name: "\(name).\(suffix)", shape: tensor.shape, dtype: stored), {
                    let values = dequantize(tensor)
                    guard suffix == "lora_b", let heads = permute[name] else { return values }
                    return permuteRowsForLlamaCpp(values, shape: tensor.shape, heads: heads)
                }))
            }
        }
        guard !entries.isEmpty else {
            throw ExportError.unsupported(format: .ggufLoRA, what: "adapted modules", found: merged.pairs.keys.sorted().joined(separator: ", "),
                                          supported: ["the projections of the decoder layers"])
        }
        let metadata: [(key: String, value: GGUFValue)] = [
            ("general.architecture", .string(arch)),
            ("general.type", .string("adapter")),
            ("general.name", .string((options.adapter! as NSString).lastPathComponent)),
            ("general.file_type", .uint32(options.dtype.ggufFileType)),
            ("general.quantization_version", .uint32(2)),
            ("adapter.type", .string("lora")),
            ("adapter.lora.alpha", .float32(lora.scale * Float(lora.rank))),
        ]
        let tensors = entries.map(\.tensor)
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: tensors.map(\.byteCount).max() ?? 1, alignment: 64)
        defer { scratch.deallocate() }
        try GGUFWriter.write(path: options.output, metadata: metadata, tensors: tensors) { index, sink in
            let bytes = encodeRows(entries[index].values(), as: tensors[index].dtype, into: scratch)
            try sink(UnsafeRawBufferPointer(start: scratch, count: bytes))
        }
        return ExportSummary(output: options.output, files: [(options.output as NSString).lastPathComponent], tensorCount: tensors.count,
                             bytes: tensors.map(\.byteCount).reduce(0, +), mergedModules: merged.pairs.count,
                             tensorTypes: GGUFTensorTypes.summary(tensors.map { ($0.name, $0.dtype) }))
    }

    static func write(_ merged: MergedWeights, options: ExportOptions, importance: ImportanceMatrix? = nil) throws -> ExportSummary {
        let files = merged.files, config = files.config
        let arch = try architecture(config, format: .gguf)
        // Rope scaling that llama.cpp takes as tensors, first, as convert_hf_to_gguf writes them:
        // Llama 3's per-frequency factors (it has no metadata key for them), LongRoPE's long and
        // short factors.
        var ropeTensors: [(name: String, values: [Float])] = []
        switch config.ropeScaling {
        case .llama3:
            ropeTensors = [("rope_freqs.weight", config.ropeScaling.frequencyFactors(headDim: config.rotaryDim, theta: config.ropeTheta))]
        case let .longrope(short, long, _, _):
            ropeTensors = [("rope_factors_long.weight", long), ("rope_factors_short.weight", short)]
        default: break
        }

        // Tensor order: the source GGUF's when there is one.
        let family = config.family
        try checkExperts(config, arch: arch)
        var hfNames = merged.names.filter { GGUFFile.ggufName($0, family: family) != nil || expertStack(of: $0, config) != nil }
        if config.tieWordEmbeddings { hfNames.removeAll { $0 == "lm_head.weight" } }
        if let gguf = files.gguf {
            // A stack keeps its own name as its key; an expert's matrix takes its stack's place.
            var order: [String: Int] = [:]
            for (i, name) in gguf.tensorNames.enumerated() {
                let isStack = MixtureOfExperts.ggufStacks.contains { name.contains(".\($0).") }
                let key = isStack ? name : GGUFFile.hfName(name, family: family) ?? name
                if order[key] == nil { order[key] = i }
            }
            func place(_ hf: String) -> Int {
                if let (l, gguf, _) = expertStack(of: hf, config) { return order["blk.\(l).\(gguf).weight"] ?? Int.max }
                return order[hf] ?? Int.max
            }
            hfNames.sort { (place($0), $0) < (place($1), $1) }
        }
        // Else as convert_hf_to_gguf meets them in a one-file checkpoint: HF names sorted (already).
        // A layer's experts go out as llama.cpp's stacks [E, rows, columns], in place of the first expert.
        var sources: [(gguf: String, shape: [Int], hf: [String])] = []
        var stacked: [String: Int] = [:]
        for name in hfNames {
            guard let (l, gguf, e) = expertStack(of: name, config) else {
                sources.append((GGUFFile.ggufName(name, family: family)!, merged.shape(name), [name]))
                continue
            }
            let key = "blk.\(l).\(gguf).weight"
            if stacked[key] == nil {
                stacked[key] = sources.count
                sources.append((key, [config.experts!.expertCount] + merged.shape(name), []))
            }
            var hf = sources[stacked[key]!].hf
            while hf.count <= e { hf.append("") }
            hf[e] = name
            sources[stacked[key]!].hf = hf
        }
        let extra = ropeTensors.map { GGUFWriter.Tensor(name: $0.name, shape: [$0.values.count], dtype: .f32) }
        var types = GGUFTensorTypes(fileType: options.dtype, layerCount: config.layerCount,
                                    groupSize: config.headCount / max(1, config.kvHeadCount), tiedEmbeddings: config.tieWordEmbeddings,
                                    expertCount: config.experts?.expertCount ?? 1, hasImportance: importance != nil)
        types.pure = options.pure
        types.outputType = options.outputTensorType
        types.embeddingType = options.tokenEmbeddingType
        let tensors = extra + sources.map { source -> GGUFWriter.Tensor in
            GGUFWriter.Tensor(name: source.gguf, shape: source.shape, dtype: types.type(of: source.gguf, shape: source.shape))
        }
        for tensor in tensors where tensor.shape.last! % tensor.dtype.blockSize != 0 {
            // Only a type the user named can land here (llama.cpp's choices fall back).
            let flag = tensor.name == "output.weight" ? "--output-tensor-type" : "--token-embedding-type"
            throw ExportError.unsupported(format: .gguf, what: "\(flag) for \(tensor.name)", found: "\(tensor.dtype.rawValue) (blocks of \(tensor.dtype.blockSize))",
                                          supported: ["a type whose blocks divide its \(tensor.shape.last!) columns (F32, F16, BF16, or blocks of 32 such as Q8_0 where they fit)"])
        }

        var metadata: [(key: String, value: GGUFValue)]
        if let gguf = files.gguf {
            metadata = gguf.metadataKeys.map { (key: $0, value: gguf.metadata[$0]!) }
        } else {
            metadata = try architectureMetadata(config, arch: arch, name: (files.source as NSString).lastPathComponent)
            // A folder without tokenizer.json (a bare conversion) gives a GGUF without tokenizer, as its source.
            if FileManager.default.fileExists(atPath: (files.source as NSString).appendingPathComponent("tokenizer.json")) {
                metadata += try TokenizerConversion.ggufMetadata(folder: files.source, config: config)
            }
        }
        func set(_ key: String, _ value: GGUFValue) {
            if let i = metadata.firstIndex(where: { $0.key == key }) { metadata[i].value = value } else { metadata.append((key, value)) }
        }
        set("general.file_type", .uint32(options.dtype.ggufFileType))
        set("general.quantization_version", .uint32(2))
        let weighting = try importance.map { try ImportanceWeighting($0, tensors: tensors) }
        if let importance {
            // What llama-quantize records of its --imatrix.
            set("quantize.imatrix.file", .string(importance.path))
            if let dataset = importance.datasets.first { set("quantize.imatrix.dataset", .string(dataset)) }
            set("quantize.imatrix.entries_count", .uint32(UInt32(importance.entries.count)))
            if importance.chunkCount > 0 { set("quantize.imatrix.chunks_count", .uint32(UInt32(importance.chunkCount))) }
        }

        let permute = permutedRows(config, arch: arch)
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: tensors.map(\.byteCount).max() ?? 1, alignment: 64)
        defer { scratch.deallocate() }
        try GGUFWriter.write(path: options.output, metadata: metadata, tensors: tensors) { index, sink in
            let tensor = tensors[index]
            var values = index < extra.count ? ropeTensors[index].values : sources[index - extra.count].hf.flatMap { merged.values($0) }
            // llama.cpp stores a norm as the multiplier it applies (Gemma's 1 + w).
            if config.normWeightOffset != 0 && index >= extra.count && sources[index - extra.count].hf[0].hasSuffix("norm.weight") {
                values = values.map { $0 + config.normWeightOffset }
            }
            if let heads = permute[tensor.name] { values = permuteRowsForLlamaCpp(values, shape: tensor.shape, heads: heads) }
            let bytes = encodeRows(values, as: tensor.dtype, into: scratch, shape: tensor.shape, importance: weighting?.weights[tensor.name])
            try sink(UnsafeRawBufferPointer(start: scratch, count: bytes))
        }
        return ExportSummary(output: options.output, files: [(options.output as NSString).lastPathComponent], tensorCount: tensors.count,
                             bytes: tensors.map(\.byteCount).reduce(0, +), mergedModules: merged.mergedModuleCount,
                             tensorTypes: GGUFTensorTypes.summary(tensors.map { ($0.name, $0.dtype) }),
                             importanceWeighted: weighting.map { (weighted: $0.weights.count, quantized: $0.quantizedCount) })
    }

    /// Layer, llama.cpp stack name and expert of an expert's HF tensor
    /// (`model.layers.3.mlp.experts.5.gate_proj.weight`: 3, `ffn_gate_exps`, 5); nil for another.
    static func expertStack(of name: String, _ config: ModelConfig) -> (layer: Int, gguf: String, expert: Int)? {
        let parts = name.split(separator: ".")
        guard let moe = config.experts, parts.count == 8, parts[0] == "model", parts[1] == "layers", let l = Int(parts[2]),
              let e = Int(parts[5]), e < moe.expertCount,
              let projection = moe.expertModules(e).firstIndex(where: { "model.layers.\(l).\($0).weight" == name }) else { return nil }
        return (l, MixtureOfExperts.ggufStacks[projection], e)
    }

    /// What llama.cpp computes for the architecture: every layer routed, the chosen
    /// probabilities renormalised in `qwen3moe` and not in `olmoe`.
    static func checkExperts(_ config: ModelConfig, arch: String) throws {
        guard let moe = config.experts else { return }
        if !moe.denseLayers.isEmpty {
            throw ExportError.unsupported(format: .gguf, what: "dense layers in a mixture of experts (mlp_only_layers)",
                                          found: moe.denseLayers.sorted().map(String.init).joined(separator: ", "), supported: ["none (llama.cpp routes every layer)"])
        }
        if arch == "olmoe" && config.kvHeadCount != config.headCount {
            throw ExportError.unsupported(format: .gguf, what: "num_key_value_heads for olmoe", found: "\(config.kvHeadCount)",
                                          supported: ["\(config.headCount), the attention heads (llama.cpp's olmoe has k norms as wide as q's)"])
        }
        let renormalises = arch != "olmoe"
        if moe.normalizesTopK != renormalises {
            throw ExportError.unsupported(format: .gguf, what: "norm_topk_prob for \(arch)", found: "\(moe.normalizesTopK)",
                                          supported: ["\(renormalises) (what llama.cpp computes for \(arch))"])
        }
    }

    /// Encodes `values` (a tensor of row-major `shape`) as `type` into `destination`, rows in
    /// parallel where the type quantizes in blocks (the K types search for scales: seconds per
    /// large matrix on one core), each row under `importance` when given: one weight per column,
    /// or for a stack of experts [E, rows, columns] each expert's in turn. Returns the bytes.
    static func encodeRows(_ values: [Float], as type: DType, into destination: UnsafeMutableRawPointer, shape: [Int],
                           importance: [Float]?) -> Int {
        guard let importance else { return encodeRows(values, as: type, into: destination) }
        let columns = shape.last!, rows = values.count / columns, rowBytes = columns / type.blockSize * type.blockBytes
        let rowsPerExpert = rows / (importance.count / columns)
        values.withUnsafeBufferPointer { source in
            importance.withUnsafeBufferPointer { weights in
                parallelFor(rows) { range in
                    for row in range {
                        FinchKernels.encodeRows(source.baseAddress! + row * columns, as: type, into: destination + row * rowBytes, rows: 1,
                                                columns: columns, importance: weights.baseAddress! + row / rowsPerExpert * columns)
                    }
                }
            }
        }
        return rows * rowBytes
    }

    /// Encodes `values` as `type` into `destination`, rows in parallel where the type quantizes in
    /// blocks (the K types search for scales: seconds per large matrix on one core); returns the bytes.
    static func encodeRows(_ values: [Float], as type: DType, into destination: UnsafeMutableRawPointer) -> Int {
        let block = type.blockSize, chunkValues = 64 * 256
        guard type.isQuantized, values.count > chunkValues, values.count % block == 0 else {
            return values.withUnsafeBufferPointer { encodeRow($0.baseAddress!, as: type, into: destination, count: $0.count) }
        }
        let chunks = (values.count + chunkValues - 1) / chunkValues
        values.withUnsafeBufferPointer { source in
            parallelFor(chunks) { range in
                for chunk in range {
                    let start = chunk * chunkValues, count = min(chunkValues, values.count - start)
                    encodeRow(source.baseAddress! + start, as: type, into: destination + start / block * type.blockBytes, count: count)
                }
            }
        }
        return values.count / block * type.blockBytes
    }

    /// convert_hf_to_gguf's `w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2)`: GGUF row
    /// `h*hd + 2*j + i` is HF row `h*hd + i*hd/2 + j` (the inverse of `GGUFFile.hfTensors`).
    static func permuteRowsForLlamaCpp(_ values: [Float], shape: [Int], heads: Int) -> [Float] {
        let rows = shape[0], columns = shape.count == 1 ? 1 : shape[1]
        let headRows = rows / heads, half = headRows / 2
        var result = values
        values.withUnsafeBufferPointer { src in
            result.withUnsafeMutableBufferPointer { dst in
                for row in 0..<rows {
                    let head = row / headRows, within = row % headRows
                    let source = head * headRows + (within % 2) * half + within / 2
                    (dst.baseAddress! + row * columns).update(from: src.baseAddress! + source * columns, count: columns)
                }
            }
        }
        return result
    }

    /// The `general.*` and `<arch>.*` keys llama.cpp's convert_hf_to_gguf writes for a Llama-family config.
    static func architectureMetadata(_ config: ModelConfig, arch: String, name: String) throws -> [(key: String, value: GGUFValue)] {
        var m: [(key: String, value: GGUFValue)] = [
            ("general.architecture", .string(arch)),
            ("general.name", .string(name)),
            ("\(arch).context_length", .uint32(UInt32(config.maxPositionEmbeddings))),
            ("\(arch).embedding_length", .uint32(UInt32(config.hiddenSize))),
            ("\(arch).block_count", .uint32(UInt32(config.layerCount))),
            ("\(arch).feed_forward_length", .uint32(UInt32(config.intermediateSize))),
            ("\(arch).attention.head_count", .uint32(UInt32(config.headCount))),
            ("\(arch).attention.head_count_kv", .uint32(UInt32(config.kvHeadCount))),
            ("\(arch).rope.freq_base", .float32(config.ropeTheta)),
            ("\(arch).attention.layer_norm_rms_epsilon", .float32(config.rmsNormEps)),
            ("\(arch).rope.dimension_count", .uint32(UInt32(config.rotaryDim))),
            ("\(arch).vocab_size", .uint32(UInt32(config.vocabSize))),
        ]
        // convert_hf_to_gguf writes them whenever config.json names head_dim, which Qwen3's always
        // does (transformers' GGUF reader assumes Qwen3's default of 128 without them).
        if config.headDim * config.headCount != config.hiddenSize || arch == "qwen3" {
            m.append(("\(arch).attention.key_length", .uint32(UInt32(config.headDim))))
            m.append(("\(arch).attention.value_length", .uint32(UInt32(config.headDim))))
        }
        if case let .linear(factor) = config.ropeScaling {
            m.append(("\(arch).rope.scaling.type", .string("linear")))
            m.append(("\(arch).rope.scaling.factor", .float32(factor)))
        }
        // The family's own keys (Gemma's softcaps, window, ...), replacing shared ones of the same name.
        for (key, value) in config.family.writeGGUF(config) {
            if let i = m.firstIndex(where: { $0.key == key }) { m[i].value = value } else { m.append((key, value)) }
        }
        return m
    }
}
