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

    /// Reads and checks the adapter: every pair complete, every adapted module present in the
    /// model, every shape fitting its weight (an adapter made for another model fails here).
    public init(files: ModelFiles, adapter: String?) throws {
        self.files = files
        guard let adapter else {
            lora = nil
            pairs = [:]
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
        for module in halves.keys.sorted() {
            let (a, b) = halves[module]!
            let names = LoRAConfig.parameterNames(module: module)
            guard let a else { throw ExportError.adapterIncomplete(adapter: adapter, tensor: names.b, missing: names.a) }
            guard let b else { throw ExportError.adapterIncomplete(adapter: adapter, tensor: names.a, missing: names.b) }
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
    }

    /// HF names of the tensors, sorted.
    public var names: [String] { files.tensors.keys.sorted() }

    /// Shape of the tensor named `name` (an HF name from `names`; traps for an unknown one).
    public func shape(_ name: String) -> [Int] { files.tensors[name]!.shape }

    /// The tensor as f32, dequantized, with its LoRA update added when it has one.
    public func values(_ name: String) -> [Float] {
        let tensor = files.tensors[name]!
        var w = dequantize(tensor)                                        // [out, in]
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
