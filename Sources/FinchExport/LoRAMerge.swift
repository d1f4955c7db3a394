import Foundation
import FinchKernels
import FinchIO
import FinchTokenizers
import FinchModels

/// A model's weights with a LoRA adapter folded in, produced one tensor at a time so that an
/// export holds at most one dequantized tensor beside the (memory-mapped) source:
/// `W' = W + scale * B A`, in f32, with `scale = alpha / r` (or `alpha / sqrt(r)` with rsLoRA),
/// as PEFT's `merge_and_unload` computes it.
struct MergedWeights {
    /// The base model whose tensors are merged and written.
    public let files: ModelFiles
    /// The adapter's hyper-parameters (its scale); nil when no adapter was given.
    public let lora: LoRAConfig?
    /// HF module path (`model.layers.0.self_attn.q_proj`) to its A [r, in] and B [out, r].
    let pairs: [String: (a: TensorData, b: TensorData)]
    /// A mixture of experts' pairs, per layer and expert target (`LoRAConfig.expertTargets`), in
    /// PEFT's layout for 3D parameters: A [r * E, in], B [out, r * E] (expert e's column j at j * E + e).
    let expertPairs: [Int: [String: (a: TensorData, b: TensorData)]]

    /// Reads and checks the adapter: every pair complete, every adapted module present in the
    /// model, every shape fitting its weight (an adapter made for another model fails here).
    public init(files: ModelFiles, adapter: String?) throws {
        self.files = files
        guard let adapter else {
            lora = nil
            pairs = [:]
            expertPairs = [:]
            return
        }
        let config = try PEFTAdapter.config(directory: adapter)
        let path = (adapter as NSString).appendingPathComponent(PEFTAdapter.weightsFile)
        let tensors = try SafeTensors.read(path: path)
        var halves: [String: (a: TensorData?, b: TensorData?)] = [:]
        for (name, tensor) in tensors {
            // PEFT: base_model.model.<module>.lora_A.weight (some tools keep ".default").
            let plain = name.replacingOccurrences(of: ".default.weight", with: ".weight")
            guard plain.hasPrefix("base_model.model."), plain.hasSuffix(".lora_A.weight") || plain.hasSuffix(".lora_B.weight") else {
                throw LoadError.malformed(path: path, field: name, found: "a tensor that is not a LoRA A or B weight",
                                          expected: "only base_model.model.<module>.lora_A/lora_B.weight tensors (modules_to_save is not supported)")
            }
            let isA = plain.hasSuffix(".lora_A.weight")
            let module = String(plain.dropFirst("base_model.model.".count).dropLast(".lora_A.weight".count))
            var entry = halves[module] ?? (nil, nil)
            if isA { entry.a = tensor } else { entry.b = tensor }
            halves[module] = entry
        }
        var pairs: [String: (a: TensorData, b: TensorData)] = [:]
        var expertPairs: [Int: [String: (a: TensorData, b: TensorData)]] = [:]
        let experts = Dictionary(grouping: halves.keys.filter { Self.expertLayer(of: $0) != nil }) { Self.expertLayer(of: $0)! }
        for module in halves.keys.sorted() {
            let (a, b) = halves[module]!
            let names = LoRAConfig.parameterNames(module: module)
            guard let a else { throw ExportError.adapterIncomplete(adapter: adapter, tensor: names.b, missing: names.a) }
            guard let b else { throw ExportError.adapterIncomplete(adapter: adapter, tensor: names.a, missing: names.b) }
            if let l = Self.expertLayer(of: module) {
                // Which projection: gate_up's A reads the hidden state, down's the expert's width
                // (where both are adapted, PEFT nests gate_up's pair as `base_layer`).
                guard let moe = files.config.experts, moe.routes(layer: l) else {
                    throw ExportError.adapterModuleMissing(adapter: adapter, tensor: a.name, module: module)
                }
                let C = files.config.hiddenSize, I = moe.intermediateSize, E = moe.expertCount
                let both = experts[l]!.count == 2
                let target = both ? (module.hasSuffix(".base_layer") ? "experts.gate_up_proj" : "experts.down_proj")
                                  : (a.shape.last == C && b.shape.first == 2 * I ? "experts.gate_up_proj" : "experts.down_proj")
                let r = config.rank(expertTarget: target)
                let (inputs, out) = target == "experts.gate_up_proj" ? (C, 2 * I) : (I, C)
                guard a.shape == [r * E, inputs] else {
                    throw ExportError.adapterMismatch(adapter: adapter, tensor: a.name, found: a.shape, expected: [r * E, inputs])
                }
                guard b.shape == [out, r * E] else {
                    throw ExportError.adapterMismatch(adapter: adapter, tensor: b.name, found: b.shape, expected: [out, r * E])
                }
                expertPairs[l, default: [:]][target] = (a, b)
                continue
            }
            guard let weight = files.tensors[module + ".weight"], weight.shape.count == 2 else {
                throw ExportError.adapterModuleMissing(adapter: adapter, tensor: a.name, module: module)
            }
            let expectedA = [config.rank, weight.shape[1]], expectedB = [weight.shape[0], config.rank]
            guard a.shape == expectedA else {
                throw ExportError.adapterMismatch(adapter: adapter, tensor: a.name, found: a.shape, expected: expectedA)
            }
            guard b.shape == expectedB else {
                throw ExportError.adapterMismatch(adapter: adapter, tensor: b.name, found: b.shape, expected: expectedB)
            }
            pairs[module] = (a, b)
        }
        lora = config
        self.pairs = pairs
        self.expertPairs = expertPairs
    }

    /// The layer of a mixture of experts' adapted module (`model.layers.3.mlp.experts`, or its
    /// `.base_layer`), nil for another module.
    static func expertLayer(of module: String) -> Int? {
        let parts = module.split(separator: ".")
        guard parts.count >= 5, parts[0] == "model", parts[1] == "layers", let l = Int(parts[2]), parts[3] == "mlp", parts[4] == "experts",
              parts.count == 5 || (parts.count == 6 && parts[5] == "base_layer") else { return nil }
        return l
    }

    /// Modules with a LoRA update, the experts' included (for the export's summary).
    public var mergedModuleCount: Int { pairs.count + expertPairs.values.reduce(0) { $0 + $1.count } }

    /// Layer, projection (0 gate, 1 up, 2 down) and expert of an expert's HF weight name; nil for another.
    static func expert(of name: String) -> (layer: Int, projection: Int, expert: Int)? {
        let parts = name.split(separator: ".")
        guard parts.count == 8, parts[0] == "model", parts[1] == "layers", let l = Int(parts[2]),
              parts[3] == "mlp" || parts[3] == "block_sparse_moe", parts[4] == "experts", let e = Int(parts[5]), parts[7] == "weight",
              let projection = ["gate_proj", "up_proj", "down_proj"].firstIndex(of: String(parts[6]))
                ?? ["w1", "w3", "w2"].firstIndex(of: String(parts[6])) else { return nil }
        return (l, projection, e)
    }

    /// HF names of the tensors, sorted.
    public var names: [String] { files.tensors.keys.sorted() }

    /// Shape of the tensor named `name` (an HF name from `names`; traps for an unknown one).
    public func shape(_ name: String) -> [Int] { files.tensors[name]!.shape }

    /// The tensor as f32, dequantized, with its LoRA update added when it has one.
    public func values(_ name: String) -> [Float] {
        let tensor = files.tensors[name]!
        var w = dequantize(tensor)                                        // [out, in]
        if let lora, let (l, projection, e) = Self.expert(of: name), let pair = expertPairs[l]?[projection == 2 ? "experts.down_proj" : "experts.gate_up_proj"] {
            // Expert e's pair out of the stacks; gate takes the first rows of gate_up's update, up the rest.
            let target = projection == 2 ? "experts.down_proj" : "experts.gate_up_proj"
            let r = lora.rank(expertTarget: target), scale = lora.scale(expertTarget: target), E = files.config.experts!.expertCount
            let a = dequantize(pair.a), b = dequantize(pair.b)
            let out = tensor.shape[0], inputs = tensor.shape[1], firstRow = projection == 1 ? out : 0
            for o in 0..<out {
                for j in 0..<r {
                    let bj = scale * b[(firstRow + o) * r * E + j * E + e]
                    if bj == 0 { continue }
                    let aRow = (e * r + j) * inputs
                    for i in 0..<inputs { w[o * inputs + i] += bj * a[aRow + i] }
                }
            }
            return w
        }
        guard let lora, name.hasSuffix(".weight"), let pair = pairs[String(name.dropLast(".weight".count))] else { return w }
        let a = dequantize(pair.a), b = dequantize(pair.b)                // [r, in], [out, r]
        let out = tensor.shape[0], inputs = tensor.shape[1], r = lora.rank
        a.withUnsafeBufferPointer { a in
            b.withUnsafeBufferPointer { b in
                w.withUnsafeMutableBufferPointer { w in
                    // W += scale * B A
                    GEMM.sgemm(.none, .none, m: out, n: inputs, k: r, alpha: lora.scale, a: b.baseAddress!, lda: r,
                               b: a.baseAddress!, ldb: inputs, beta: 1, c: w.baseAddress!, ldc: inputs)
                }
            }
        }
        return w
    }
}
