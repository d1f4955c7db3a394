import Foundation
import FinchKernels
import FinchIO

/// What trains: nothing (inference), LoRA adapters, or every weight.
public enum FineTuning: Equatable, Sendable {
    case none
    case lora(LoRAConfig)
    case full
}

/// The seven projections of a decoder block, in the order its arrays of per-projection values
/// (linears, saved buffers) hold them.
enum Projection: Int, CaseIterable {
    case q, k, v, o, gate, up, down
    static let attentionInputs: [Projection] = [.q, .k, .v]
    static let mlpInputs: [Projection] = [.gate, .up]
}

extension Array {
    /// The value of `projection` in an array with one value per `Projection`.
    subscript(_ projection: Projection) -> Element { self[projection.rawValue] }
}

/// One decoder block: pre-norm attention then pre-norm gated MLP, each with a residual (and,
/// in Gemma, a norm on each branch's output before the residual add).
final class DecoderLayer {
    let inputNorm: UnsafeMutablePointer<Float>       // (C)
    let mlpNorm: UnsafeMutablePointer<Float>         // (C) the MLP's input norm
    let qNorm: UnsafeMutablePointer<Float>?          // (headDim), Qwen3, Gemma 3
    let kNorm: UnsafeMutablePointer<Float>?
    let attentionOutputNorm: UnsafeMutablePointer<Float>?  // (C) Gemma's post_attention_layernorm
    let mlpOutputNorm: UnsafeMutablePointer<Float>?        // (C) Gemma's post_feedforward_layernorm
    var inputNormGrad, mlpNormGrad, qNormGrad, kNormGrad: UnsafeMutablePointer<Float>?
    var attentionOutputNormGrad, mlpOutputNormGrad: UnsafeMutablePointer<Float>?
    /// One per `Projection`, in its order; q, k, v, o alone in a layer whose MLP routes (`experts`).
    let projections: [Linear]
    /// The routed MLP of a mixture-of-experts layer (then there is no gate, up, down).
    var experts: ExpertLayer?
    /// Every linear map of the layer, experts and router included.
    var allLinears: [Linear] { projections + (experts?.linears ?? []) }
    var q: Linear { projections[.q] }
    var k: Linear { projections[.k] }
    var v: Linear { projections[.v] }
    var o: Linear { projections[.o] }
    var gate: Linear { projections[.gate] }
    var up: Linear { projections[.up] }
    var down: Linear { projections[.down] }

    init(inputNorm: UnsafeMutablePointer<Float>, mlpNorm: UnsafeMutablePointer<Float>,
         qNorm: UnsafeMutablePointer<Float>?, kNorm: UnsafeMutablePointer<Float>?,
         attentionOutputNorm: UnsafeMutablePointer<Float>?, mlpOutputNorm: UnsafeMutablePointer<Float>?, projections: [Linear]) {
        self.inputNorm = inputNorm; self.mlpNorm = mlpNorm
        self.qNorm = qNorm; self.kNorm = kNorm
        self.attentionOutputNorm = attentionOutputNorm; self.mlpOutputNorm = mlpOutputNorm
        self.projections = projections
    }
}

/// The Llama-family decoder (Llama, Mistral, Qwen2, Qwen3, SmolLM, TinyLlama, and Gemma 2 / 3 through their config settings) with a
/// hand-written backward, as llm.c does it: each step of `forward` has its mirror in `backward`.
public final class Transformer {
    /// The shape the model was built with (from its `ModelFiles`).
    public let config: ModelConfig
    /// What this model trains; `.none` builds no gradients or parameter set.
    public let fineTuning: FineTuning
    /// The precision of the base model's products: bf16 holds the frozen weights in bf16 (half
    /// the memory) and rounds matmul inputs to bf16; LoRA weights, gradients, optimizer state,
    /// norms, softmax, attention and every loss stay fp32.
    public let precision: Precision
    /// The trainable parameters (LoRA pairs or all weights); nil in inference.
    public let parameters: ParameterSet?
    let embedding: WeightMatrix          // (V, C)
    package let head: WeightMatrix               // (V, C), the embedding itself when tied
    let finalNorm: UnsafeMutablePointer<Float>
    package var embeddingGrad, headGrad, finalNormGrad: UnsafeMutablePointer<Float>?
    let layers: [DecoderLayer]
    let rotary: RotaryEmbedding
    /// The sliding layers' own rotary embedding (Gemma 3's local base), nil where they share `rotary`.
    let slidingRotary: RotaryEmbedding?
    package var random: FinchRandom
    private var owned: [AnyObject] = []
    /// Buffers of the last shapes used, one set for training and one for inference, so that an
    /// inference pass (a reference model, an evaluation) between a forward and its backward is safe.
    private var cachedActivations: [Bool: Activations] = [:]
    /// The batch and targets of the last `forwardForTraining`, which `backward(logProbGradients:)`
    /// completes; with a frozen head, also -d log p(target) / d hidden of each position [n, C].
    private var pendingBackward: (batch: TokenBatch, targets: [Int32], negativeLogProbGradients: [Float]?)?

    /// With false, LoRA pairs are bypassed and the model is its frozen base (the reference of DPO).
    public var adaptersEnabled: Bool = true {
        didSet { for layer in layers { for p in layer.allLinears { p.loraEnabled = adaptersEnabled } } }
    }

    /// 1 GiB: the default `denseLimitBytes`, above which quantized weights stay quantized.
    public static let defaultDenseLimitBytes = 1 << 30

    /// Join gate and up (one GEMM for both) even where they are f32 used in place: tests set it
    /// to run the joined path on the f32 parity fixtures.
    nonisolated(unsafe) static var joinsInPlaceWeights = false

    static let projectionNames = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]

    /// HF names of a layer's norms around the MLP and on the branch outputs: Llama's MLP input
    /// norm is `post_attention_layernorm`; with branch output norms (Gemma) that name is the
    /// attention output's norm, and the MLP's input norm is `pre_feedforward_layernorm`.
    static func normNames(_ config: ModelConfig) -> (mlpInput: String, attentionOutput: String?, mlpOutput: String?) {
        config.branchOutputNorms ? ("pre_feedforward_layernorm", "post_attention_layernorm", "post_feedforward_layernorm")
                                 : ("post_attention_layernorm", nil, nil)
    }

    /// Builds the model from its stored tensors (HF names). LoRA A is initialised as PEFT does
    /// (uniform in ±1/sqrt(in)) and B to zero; `seed` fixes A.
    ///
    /// Quantized weights stay quantized when their f32 copy would exceed `denseLimitBytes`;
    /// below it they are dequantized once at load, which spares every matmul its dequantization
    /// (a 135M model costs 0.5 GB as f32; a 1B model stays 4-bit).
    public init(files: ModelFiles, fineTuning: FineTuning = .none, seed: UInt64 = 0,
                denseLimitBytes: Int = Transformer.defaultDenseLimitBytes, precision: Precision = .fp32) throws {
        let config = files.config
        self.config = config
        self.fineTuning = fineTuning
        self.precision = precision
        random = FinchRandom(seed: seed)
        rotary = RotaryEmbedding(headDim: config.rotaryDim, theta: config.ropeTheta, scaling: config.ropeScaling)
        slidingRotary = config.slidingRopeTheta.map { RotaryEmbedding(headDim: config.rotaryDim, theta: $0, scaling: .none) }

        let layout = Self.tensorLayout(config)
        let stored = try Self.storedTensors(files, layout, config: config)
        let parameters: ParameterSet?
        switch fineTuning {
        case .none: parameters = nil
        case let .lora(lora): parameters = ParameterSet(Self.loraLayout(config, lora))
        case .full: parameters = ParameterSet(layout)
        }
        self.parameters = parameters
        let denseBytes = layout.reduce(0) { $0 + $1.shape.reduce(precision == .bf16 ? 2 : 4, *) }
        let weights = WeightLoader(stored: stored, fineTuning: fineTuning, parameters: parameters, precision: precision,
                                   keepQuantized: denseBytes > denseLimitBytes)

        let (embedding, embeddingGrad) = weights.matrix("model.embed_tokens.weight")
        self.embedding = embedding
        self.embeddingGrad = embeddingGrad
        if config.tieWordEmbeddings {
            head = embedding
            headGrad = embeddingGrad
        } else {
            (head, headGrad) = weights.matrix("lm_head.weight")
        }
        (finalNorm, finalNormGrad) = weights.vector("model.norm.weight")
        var random = self.random
        layers = (0..<config.layerCount).map { l in Self.decoderLayer(l, config: config, weights: weights, random: &random) }
        self.random = random
        owned = weights.owned + [files as AnyObject]
        routerAuxLossCoef = config.experts.map { $0.outputRouterLogits ? $0.routerAuxLossCoef : 0 } ?? 0
        Self.releasePagesOfCopiedFiles(files, inUse: [embedding, head] + layers.flatMap { $0.allLinears.map(\.weight) })
    }

    /// Every tensor the model reads, with its shape (HF names).
    static func tensorLayout(_ config: ModelConfig) -> [(name: String, shape: [Int])] {
        let C = config.hiddenSize
        var layout: [(name: String, shape: [Int])] = [("model.embed_tokens.weight", [config.vocabSize, C])]
        for l in 0..<config.layerCount {
            let p = "model.layers.\(l)."
            layout.append((p + "input_layernorm.weight", [C]))
            let shapes = [[config.qDim, C], [config.kvDim, C], [config.kvDim, C], [C, config.qDim],
                          [config.intermediateSize, C], [config.intermediateSize, C], [C, config.intermediateSize]]
            let routed = config.experts.map { $0.routes(layer: l) } ?? false
            for (name, shape) in zip(Self.projectionNames, shapes) where !routed || !name.hasPrefix("mlp.") {
                layout.append((p + name + ".weight", shape))
                if config.attentionBias && (name.hasSuffix("q_proj") || name.hasSuffix("k_proj") || name.hasSuffix("v_proj"))
                    || config.outputBias && name.hasSuffix("o_proj") {
                    layout.append((p + name + ".bias", [shape[0]]))
                }
            }
            if let moe = config.experts, routed {
                let I = moe.intermediateSize
                layout.append((p + moe.routerModule + ".weight", [moe.expertCount, C]))
                for e in 0..<moe.expertCount {
                    for (module, shape) in zip(moe.expertModules(e), [[I, C], [I, C], [C, I]]) { layout.append((p + module + ".weight", shape)) }
                }
            }
            if config.qkNorm {
                layout.append((p + "self_attn.q_norm.weight", [config.qkNormSpansHeads ? config.qDim : config.headDim]))
                layout.append((p + "self_attn.k_norm.weight", [config.qkNormSpansHeads ? config.kvDim : config.headDim]))
            }
            let norms = Self.normNames(config)
            for name in [norms.attentionOutput, norms.mlpInput, norms.mlpOutput].compactMap({ $0 }) { layout.append((p + name + ".weight", [C])) }
        }
        layout.append(("model.norm.weight", [C]))
        if !config.tieWordEmbeddings { layout.append(("lm_head.weight", [config.vocabSize, C])) }
        return layout
    }

    /// The files' tensors of `layout`, each checked to be there with its shape. In a family that
    /// joins projections (`ModelConfig.fusedProjections`), q, k, v and gate, up are views of the
    /// rows of the joined tensors.
    static func storedTensors(_ files: ModelFiles, _ layout: [(name: String, shape: [Int])], config: ModelConfig) throws -> [String: TensorData] {
        let joined = config.fusedProjections ? Self.joinedRows(config) : [:]
        return try Dictionary(uniqueKeysWithValues: layout.map { name, shape in
            if let (module, first) = joined[Self.projectionSuffix(name) ?? ""], let layer = Self.layerPrefix(name) {
                let source = layer + module + ".weight"
                guard let t = files.tensors[source] else { throw LoadError.missingTensor(path: files.source, name: source) }
                let rows = module.hasSuffix("qkv_proj") ? config.qDim + 2 * config.kvDim : 2 * config.intermediateSize
                guard t.shape == [rows, shape[1]] else {
                    throw LoadError.shapeMismatch(path: files.source, name: source, found: t.shape, expected: [rows, shape[1]])
                }
                return (name, t.rowSlice(first, shape[0], name: name))
            }
            guard let t = files.tensors[name] else { throw LoadError.missingTensor(path: files.source, name: name) }
            guard t.shape == shape else { throw LoadError.shapeMismatch(path: files.source, name: name, found: t.shape, expected: shape) }
            return (name, t)
        })
    }

    /// For families that join projections: each joined projection's module and its first row there.
    static func joinedRows(_ config: ModelConfig) -> [String: (module: String, firstRow: Int)] {
        ["self_attn.q_proj": ("self_attn.qkv_proj", 0), "self_attn.k_proj": ("self_attn.qkv_proj", config.qDim),
         "self_attn.v_proj": ("self_attn.qkv_proj", config.qDim + config.kvDim),
         "mlp.gate_proj": ("mlp.gate_up_proj", 0), "mlp.up_proj": ("mlp.gate_up_proj", config.intermediateSize)]
    }

    /// "self_attn.q_proj" of "model.layers.3.self_attn.q_proj.weight"; nil for a name of no projection's weight.
    private static func projectionSuffix(_ name: String) -> String? {
        projectionNames.first { name.hasSuffix("." + $0 + ".weight") }
    }

    /// "model.layers.3." of a layer's tensor name.
    private static func layerPrefix(_ name: String) -> String? {
        guard let suffix = projectionSuffix(name) else { return nil }
        return String(name.dropLast(suffix.count + ".weight".count))
    }

    /// The modules LoRA pairs sit on in layer `l` (PEFT's module paths): each projection, or,
    /// in a family that joins them, the joined modules; with the projections (indices into
    /// `projectionNames`) whose rows each covers and where their rows start, and its shape [out, in].
    static func loraModules(_ config: ModelConfig, layer l: Int) -> [(module: String, shape: [Int], parts: [(projection: Int, firstRow: Int)])] {
        let p = "model.layers.\(l).", C = config.hiddenSize, I = config.intermediateSize
        let shapes = [[config.qDim, C], [config.kvDim, C], [config.kvDim, C], [C, config.qDim], [I, C], [I, C], [C, I]]
        guard config.fusedProjections else {
            let routed = config.experts.map { $0.routes(layer: l) } ?? false
            return projectionNames.indices.prefix(routed ? 4 : 7).map { (p + projectionNames[$0], shapes[$0], [($0, 0)]) }
        }
        return [(p + "self_attn.qkv_proj", [config.qDim + 2 * config.kvDim, C], [(0, 0), (1, config.qDim), (2, config.qDim + config.kvDim)]),
                (p + "self_attn.o_proj", shapes[3], [(3, 0)]),
                (p + "mlp.gate_up_proj", [2 * I, C], [(4, 0), (5, I)]),
                (p + "mlp.down_proj", shapes[6], [(6, 0)])]
    }

    /// The parameters of full fine-tuning (or their gradients) under the names and shapes of
    /// the model's own files: a family that joins projections (Phi-3) gets `qkv_proj` and
    /// `gate_up_proj` back.
    package func weightsForSaving(gradients: Bool = false) -> [(name: String, shape: [Int], values: [Float])] {
        guard let p = parameters else { return [] }
        let joined = config.fusedProjections ? Self.joinedRows(config) : [:]
        var out: [(name: String, shape: [Int], values: [Float])] = []
        for entry in p.entries {
            let values = p.array(entry.name, gradient: gradients)!
            guard let suffix = Self.projectionSuffix(entry.name), let (module, first) = joined[suffix],
                  let layer = Self.layerPrefix(entry.name) else {
                out.append((entry.name, entry.shape, values))
                continue
            }
            let name = layer + module + ".weight"
            if first == 0 {
                out.append((name, entry.shape, values))
            } else {
                // The next part of the joined tensor written just before.
                precondition(out.last?.name == name, "the parts of \(name) are not in order")
                out[out.count - 1].shape[0] += entry.shape[0]
                out[out.count - 1].values += values
            }
        }
        return out
    }

    /// The LoRA pairs of the targeted modules, PEFT's names and shapes.
    static func loraLayout(_ config: ModelConfig, _ lora: LoRAConfig) -> [(name: String, shape: [Int])] {
        (0..<config.layerCount).flatMap { l in
            loraModules(config, layer: l).filter { lora.targets(module: $0.module) }.flatMap { module, shape, _ -> [(name: String, shape: [Int])] in
                let names = LoRAConfig.parameterNames(module: module)
                return [(names.a, [lora.rank, shape[1]]), (names.b, [shape[0], lora.rank])]
            } + expertLoRALayout(config, lora, layer: l).flatMap { pair in
                let r = lora.rank(expertTarget: pair.target)
                return [(pair.names.a, [r * pair.experts, pair.shape[1]]), (pair.names.b, [pair.shape[0], r * pair.experts])]
            }
        }
    }

    /// The experts' LoRA pairs of layer `l` (`LoRAConfig.expertTargets`), in PEFT's names for
    /// `target_parameters`: with both targeted, PEFT nests its wrappers and gate_up_proj's pair is
    /// the inner one (`mlp.experts.base_layer.lora_A`), down_proj's the outer (`mlp.experts.lora_A`).
    /// Shapes [out, in] of one expert's projection.
    static func expertLoRALayout(_ config: ModelConfig, _ lora: LoRAConfig, layer l: Int)
        -> [(target: String, names: (a: String, b: String), shape: [Int], experts: Int)] {
        guard let moe = config.experts, moe.routes(layer: l) else { return [] }
        let targeted = LoRAConfig.expertTargets.filter { lora.targets.contains($0) }
        let module = "model.layers.\(l).\(MixtureOfExperts.expertsModule)"
        let I = moe.intermediateSize, C = config.hiddenSize
        return targeted.map { target in
            let nested = targeted.count == 2 && target == "experts.gate_up_proj"
            let names = LoRAConfig.parameterNames(module: nested ? module + ".base_layer" : module)
            return (target, names, target == "experts.gate_up_proj" ? [2 * I, C] : [C, I], moe.expertCount)
        }
    }

    /// Turns stored tensors into what the model computes with: in full fine-tuning, views of the
    /// parameters (with their gradients); else vectors as owned f32 copies and matrices as bf16
    /// or dense copies, or kept quantized when all the copies would pass the dense limit.
    final class WeightLoader {
        let stored: [String: TensorData], fineTuning: FineTuning, parameters: ParameterSet?
        let precision: Precision, keepQuantized: Bool
        private(set) var owned: [AnyObject] = []

        init(stored: [String: TensorData], fineTuning: FineTuning, parameters: ParameterSet?, precision: Precision, keepQuantized: Bool) {
            self.stored = stored; self.fineTuning = fineTuning; self.parameters = parameters
            self.precision = precision; self.keepQuantized = keepQuantized
        }

        /// A norm or bias as f32, and its gradient in full fine-tuning.
        func vector(_ name: String) -> (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>?) {
            let t = stored[name]!
            if fineTuning == .full, let p = parameters?.value(name) {
                dequantizeRow(t.dtype, t.bytes, p, count: t.elementCount)
                return (p, parameters!.grad(name))
            }
            let bytes = OwnedBytes(count: t.elementCount * 4)
            owned.append(bytes)
            let p = bytes.pointer.assumingMemoryBound(to: Float.self)
            dequantizeRow(t.dtype, t.bytes, p, count: t.elementCount)
            return (p, nil)
        }

        /// A weight matrix, and its gradient in full fine-tuning; `precision` overrides the model's.
        func matrix(_ name: String, precision wanted: Precision? = nil) -> (WeightMatrix, UnsafeMutablePointer<Float>?) {
            let t = stored[name]!, precision = wanted ?? self.precision
            if fineTuning == .full, let p = parameters?.value(name) {
                let m = WeightMatrix(t)
                m.dequantizeRows(0, m.rows, into: p)
                let trained = WeightMatrix(rows: t.rows, columns: t.columns, floats: p, owner: parameters)
                trained.precision = precision
                return (trained, parameters!.grad(name))
            }
            let m = WeightMatrix(t)
            m.precision = precision
            if keepQuantized && wanted == nil { return (m, nil) }
            return (precision == .bf16 ? m.bf16Copy() : m.denseCopy(), nil)
        }
    }

    /// Layer `l`: its norms, its seven projections (gate and up joined where they can run as one
    /// GEMM), and LoRA pairs initialised as PEFT does (A uniform in ±1/sqrt(in), B zero).
    static func decoderLayer(_ l: Int, config: ModelConfig, weights: WeightLoader, random: inout FinchRandom) -> DecoderLayer {
        let p = "model.layers.\(l).", stored = weights.stored, fineTuning = weights.fineTuning
        let routed = config.experts.map { $0.routes(layer: l) } ?? false
        let present = Self.projectionNames.prefix(routed ? 4 : 7)
        var matrices = present.map { weights.matrix(p + $0 + ".weight") }
        if !routed { Self.joinGateAndUp(&matrices, prefix: p, names: Self.projectionNames, weights: weights) }
        var projections: [Linear] = []
        for (name, (w, wGrad)) in zip(present, matrices) {
            let bias = stored[p + name + ".bias"] != nil ? weights.vector(p + name + ".bias") : nil
            let linear = Linear(name: p + name, weight: w, bias: bias?.0)
            linear.weightGrad = wGrad
            linear.biasGrad = bias?.1
            projections.append(linear)
        }
        // Each LoRA module's pair; a joined module's (Phi-3's qkv_proj) A is shared by the
        // projections it holds, each taking its own rows of B (the same sums PEFT computes).
        if case let .lora(lora) = fineTuning, let parameters = weights.parameters {
            for (module, shape, parts) in Self.loraModules(config, layer: l) where lora.targets(module: module) {
                let names = LoRAConfig.parameterNames(module: module)
                let a = parameters.value(names.a)!, b = parameters.value(names.b)!
                let da = parameters.grad(names.a)!, db = parameters.grad(names.b)!
                let bound = 1 / Float(shape[1]).squareRoot()
                for i in 0..<lora.rank * shape[1] { a[i] = (random.nextFloat() * 2 - 1) * bound }
                for (projection, firstRow) in parts {
                    projections[projection].lora = LoRAModule(rank: lora.rank, scale: lora.scale, dropout: lora.dropout, a: a,
                                                              b: b + firstRow * lora.rank, da: da, db: db + firstRow * lora.rank)
                }
            }
        }
        let names = Self.normNames(config)
        let inputNorm = weights.vector(p + "input_layernorm.weight")
        let mlpNorm = weights.vector(p + names.mlpInput + ".weight")
        let qNorm = config.qkNorm ? weights.vector(p + "self_attn.q_norm.weight") : nil
        let kNorm = config.qkNorm ? weights.vector(p + "self_attn.k_norm.weight") : nil
        let attentionOutputNorm = names.attentionOutput.map { weights.vector(p + $0 + ".weight") }
        let mlpOutputNorm = names.mlpOutput.map { weights.vector(p + $0 + ".weight") }
        let layer = DecoderLayer(inputNorm: inputNorm.0, mlpNorm: mlpNorm.0, qNorm: qNorm?.0, kNorm: kNorm?.0,
                                 attentionOutputNorm: attentionOutputNorm?.0, mlpOutputNorm: mlpOutputNorm?.0, projections: projections)
        layer.inputNormGrad = inputNorm.1
        layer.mlpNormGrad = mlpNorm.1
        layer.qNormGrad = qNorm?.1
        layer.kNormGrad = kNorm?.1
        layer.attentionOutputNormGrad = attentionOutputNorm?.1
        layer.mlpOutputNormGrad = mlpOutputNorm?.1
        if let moe = config.experts, routed { layer.experts = expertLayer(l, moe, config: config, weights: weights, random: &random) }
        return layer
    }

    /// gate and up read the same input: with their rows one after another in memory, forward and
    /// backward each run one GEMM for both (15% faster than two at SmolLM2's shapes). Done where
    /// the stored weights are not used in place anyway (quantized, f16 / bf16): their f32 copies
    /// go into one allocation, or, in full fine-tuning, the parameters lie in layout order already.
    /// f32 read in place from a file is left apart (a copy would hold it twice); the choice depends
    /// on the stored tensors alone, so a full fine-tuning policy and its reference model compute
    /// alike. `names` are the layer's projections in `Projection` order (gate at 4, up at 5).
    static func joinGateAndUp(_ matrices: inout [(WeightMatrix, UnsafeMutablePointer<Float>?)], prefix p: String, names: [String],
                              weights: WeightLoader) {
        let (gate, up) = (Projection.gate.rawValue, Projection.up.rawValue)
        let copiedAtLoad = Self.joinsInPlaceWeights || [gate, up].allSatisfy { i in
            let t = weights.stored[p + names[i] + ".weight"]!
            return t.dtype != .f32 || Int(bitPattern: t.bytes) % 4 != 0
        }
        if copiedAtLoad && weights.fineTuning == .full {
            let (g, u) = (matrices[gate].0, matrices[up].0)
            g.joinedWithNext = g.floats.map { $0 + g.rows * g.columns } == u.floats && g.columns == u.columns
        } else if (copiedAtLoad || weights.precision == .bf16) && !weights.keepQuantized {
            let joint = WeightMatrix.jointDenseCopies([matrices[gate].0, matrices[up].0], precision: weights.precision)
            matrices[gate].0 = joint[0]; matrices[up].0 = joint[1]
        }
    }

    /// Layer `l`'s router and experts: the router f32 (its choices must not hang on bf16
    /// rounding), each expert's gate and up joined as a dense layer's are, and the experts' LoRA
    /// pairs in PEFT's layout, initialised as PEFT does (A uniform in ±1/sqrt(in), B zero).
    static func expertLayer(_ l: Int, _ moe: MixtureOfExperts, config: ModelConfig, weights: WeightLoader,
                            random: inout FinchRandom) -> ExpertLayer {
        let p = "model.layers.\(l)."
        let (routerWeight, routerGrad) = weights.matrix(p + moe.routerModule + ".weight", precision: .fp32)
        let router = Linear(name: p + moe.routerModule, weight: routerWeight, bias: nil)
        router.weightGrad = routerGrad
        var pairs: [String: ExpertLoRA] = [:]
        if case let .lora(lora) = weights.fineTuning, let parameters = weights.parameters {
            for pair in expertLoRALayout(config, lora, layer: l) {
                let a = parameters.value(pair.names.a)!, b = parameters.value(pair.names.b)!
                let bound = 1 / Float(pair.shape[1]).squareRoot()
                let rank = lora.rank(expertTarget: pair.target)
                for i in 0..<rank * pair.experts * pair.shape[1] { a[i] = (random.nextFloat() * 2 - 1) * bound }
                pairs[pair.target] = ExpertLoRA(rank: rank, scale: lora.scale(expertTarget: pair.target), experts: pair.experts,
                                                inFeatures: pair.shape[1],
                                                outFeatures: pair.shape[0], a: a, b: b, da: parameters.grad(pair.names.a)!,
                                                db: parameters.grad(pair.names.b)!)
            }
        }
        let gateUpLoRA = pairs["experts.gate_up_proj"], downLoRA = pairs["experts.down_proj"]
        let experts: [[Linear]] = (0..<moe.expertCount).map { e in
            let modules = moe.expertModules(e)
            var matrices = modules.map { weights.matrix(p + $0 + ".weight") }
            // joinGateAndUp reads gate and up at Projection's indices 4 and 5.
            var padded = [(WeightMatrix, UnsafeMutablePointer<Float>?)](repeating: matrices[0], count: 4) + matrices
            joinGateAndUp(&padded, prefix: p, names: [String](repeating: "", count: 4) + modules, weights: weights)
            matrices = Array(padded[4...])
            let linears = zip(modules, matrices).map { module, matrix in
                let linear = Linear(name: p + module, weight: matrix.0, bias: nil)
                linear.weightGrad = matrix.1
                return linear
            }
            let I = moe.intermediateSize
            linears[0].lora = gateUpLoRA?.module(expert: e)
            linears[1].lora = gateUpLoRA?.module(expert: e, firstRow: I)
            linears[2].lora = downLoRA?.module(expert: e)
            return linears
        }
        return ExpertLayer(settings: moe, activation: config.hiddenActivation, router: router, experts: experts,
                           gateUpLoRA: gateUpLoRA, downLoRA: downLoRA)
    }

    /// Files whose every tensor was copied (bf16 or dense copies, vectors) need none of their
    /// pages resident: a 4-bit GGUF trained in bf16 would otherwise count twice in memory.
    static func releasePagesOfCopiedFiles(_ files: ModelFiles, inUse matrices: [WeightMatrix]) {
        let inUse = Set(matrices.compactMap { $0.owner.map(ObjectIdentifier.init) })
        var released = Set<ObjectIdentifier>()
        for t in files.tensors.values {
            guard let file = t.owner as? MappedFile, !inUse.contains(ObjectIdentifier(file)),
                  released.insert(ObjectIdentifier(file)).inserted else { continue }
            file.releaseResidentPages()
        }
    }

    var isTraining: Bool { fineTuning != .none }

    /// Decoding multiplies quantized weights by activations rounded to 8 bits per block of 32,
    /// with integer dot products (llama.cpp's arithmetic): faster per token on a quantized model,
    /// logits ~1e-2 relative from the exact path, so greedy answers can change (they do on
    /// SmolLM2-135M, exactly as llama.cpp's). Products of more than a few vectors (prefill,
    /// training) are not affected.
    public var int8Activations = false {
        didSet {
            for matrix in layers.flatMap({ $0.allLinears.map(\.weight) }) + [head] { matrix.int8Activations = int8Activations }
        }
    }

    /// bf16 training keeps each layer's q, k, v, attention output and gate/up for backward in
    /// bf16, as PyTorch's autocast does (about 40% less activation memory; see `CompressedLayer`).
    /// false keeps them f32. No effect in fp32.
    public var keepsActivationsInBF16 = true {
        didSet { cachedActivations[true] = nil }
    }

    /// Training keeps only each layer's input and recomputes the layer during backward: the
    /// activations of one layer instead of all of them, for one more decoder forward per step.
    public var gradientCheckpointing = false {
        didSet { cachedActivations[true] = nil }
    }

    package func activations(for batch: TokenBatch, training: Bool) -> Activations {
        if let a = cachedActivations[training], batch.tokenCount <= a.capacity {
            a.batch = batch.batch
            a.seq = batch.seq
            return a
        }
        cachedActivations[training] = nil  // free the old buffers before allocating new ones
        let widest = layers.max { $0.projections.count < $1.projections.count }!
        let a = Activations(config: config, layers: training ? layers.map(\.projections) : [widest.projections],
                            batch: batch.batch, seq: batch.seq, training: training, checkpointing: gradientCheckpointing,
                            bf16Saved: precision == .bf16 && keepsActivationsInBF16)
        cachedActivations[training] = a
        return a
    }

    /// Runs the decoder and returns the final normed hidden states (n, C), valid until the next call.
    /// With a `cache`, the batch is the next chunk of each row: its keys and values are stored
    /// at the cache's current length, attention runs over everything cached, and the cache grows.
    @discardableResult
    package func forward(_ batch: TokenBatch, acts: Activations, cache: KVCache? = nil) -> UnsafeMutablePointer<Float> {
        let pass = Pass(self, batch)
        if acts.training { routerTally = config.experts.map { RouterTally(experts: $0.expertCount) } }
        batch.ids.withUnsafeBufferPointer { embeddingForward(acts.stream[0], ids: $0.baseAddress!, count: pass.n, table: embedding) }
        if config.embeddingMultiplier != 1 { scaleInPlace(acts.stream[0], count: pass.n * config.hiddenSize, by: config.embeddingMultiplier) }
        for l in layers.indices {
            // Checkpointing: the layer's buffers are shared, and backward recomputes them from
            // its input with the dropout draws it had the first time.
            if acts.checkpointing { acts.layerRandom[l] = random }
            forwardLayer(l, pass, acts: acts, cache: cache)
        }
        rmsnormForward(acts.finalNormed, acts.finalRstd, acts.input(ofLayer: acts.training ? layers.count : 0), finalNorm,
                       rows: pass.n, dim: config.hiddenSize, eps: config.rmsNormEps, weightOffset: config.normWeightOffset)
        if let cache { cache.length += batch.seq }
        return acts.finalNormed
    }

    /// What every layer of one forward or backward pass shares: sizes and rope tables.
    struct Pass {
        let batch: TokenBatch
        let n: Int
        let config: ModelConfig
        private var fullShape: AttentionShape
        private let cos: [Float], sin: [Float]
        /// The sliding layers' own tables (Gemma 3's local RoPE base), where they have them.
        private let slidingTables: (cos: [Float], sin: [Float])?

        init(_ model: Transformer, _ batch: TokenBatch) {
            let c = model.config
            self.batch = batch
            config = c
            n = batch.tokenCount
            fullShape = AttentionShape(batch: batch.batch, seq: batch.seq, heads: c.headCount, kvHeads: c.kvHeadCount, headDim: c.headDim,
                                       scale: c.attentionScale, softcap: c.attentionLogitSoftcap ?? 0)
            fullShape.bf16Products = model.precision == .bf16
            (cos, sin) = batch.positions.withUnsafeBufferPointer { model.rotary.tables(positions: $0.baseAddress!, count: batch.tokenCount) }
            slidingTables = model.slidingRotary.map { rotary in
                batch.positions.withUnsafeBufferPointer { rotary.tables(positions: $0.baseAddress!, count: batch.tokenCount) }
            }
        }

        /// Layer `l`'s attention: the full shape, with the window on sliding layers.
        func shape(_ l: Int) -> AttentionShape {
            var shape = fullShape
            shape.window = config.window(ofLayer: l) ?? 0
            return shape
        }

        /// Layer `l`'s rope tables [n, headDim / 2].
        func rope(_ l: Int) -> (cos: [Float], sin: [Float]) {
            if let slidingTables, config.slidingLayers.contains(l) { return slidingTables }
            return (cos, sin)
        }
    }

    /// Layer `l` of the forward: reads the stream at its input, writes its activations and the
    /// stream at its output (in inference both are the one stream buffer).
    private func forwardLayer(_ l: Int, _ pass: Pass, acts: Activations, cache: KVCache?) {
        let c = config, n = pass.n, C = c.hiddenSize, batch = pass.batch, shape = pass.shape(l)
        let training = acts.training, offset = c.normWeightOffset
        let layer = layers[l], a = acts.layer(l)
        let xIn = acts.input(ofLayer: l)
        let xOut = acts.input(ofLayer: training ? l + 1 : 0)
        rmsnormForward(a.xn1, a.rstd1, xIn, layer.inputNorm, rows: n, dim: C, eps: c.rmsNormEps, weightOffset: offset)
        Linear.forward([layer.q, layer.k, layer.v], a.xn1, n: n, into: [a.qPre ?? a.q, a.kPre ?? a.k, a.v],
                       saved: Projection.attentionInputs.map { a.saved[$0] }, random: &random, training: training)
        if let qNorm = layer.qNorm, let kNorm = layer.kNorm, let qPre = a.qPre, let kPre = a.kPre {
            let q = c.qkNormShape(query: true, tokens: n), k = c.qkNormShape(query: false, tokens: n)
            rmsnormForward(a.q, a.qRstd, qPre, qNorm, rows: q.rows, dim: q.dim, eps: c.rmsNormEps, weightOffset: offset)
            rmsnormForward(a.k, a.kRstd, kPre, kNorm, rows: k.rows, dim: k.dim, eps: c.rmsNormEps, weightOffset: offset)
        }
        if !c.layersWithoutRope.contains(l) {
            let rope = pass.rope(l)
            ropeApply(a.q, cos: rope.cos, sin: rope.sin, tokens: n, heads: c.headCount, headDim: c.headDim, rotaryDim: c.rotaryDim)
            ropeApply(a.k, cos: rope.cos, sin: rope.sin, tokens: n, heads: c.kvHeadCount, headDim: c.headDim, rotaryDim: c.rotaryDim)
        }
        acts.keep(.qkv, layer: l, config: c)
        if let cache {
            cache.store(layer: l, k: a.k, v: a.v, count: batch.seq)
            cache.keyMask.withUnsafeBufferPointer { keyMask in
                attentionCachedForward(out: a.att, q: a.q, keys: cache.keys(layer: l, row: 0),
                                       values: cache.values(layer: l, row: 0),
                                       keyMask: keyMask.baseAddress!, capacity: cache.capacity, start: cache.length,
                                       queries: batch.seq, shape: shape)
            }
        } else {
            batch.mask.withOptionalPointer { mask in
                GEMM.timed("attention forward (whole kernel)", flops: 0) {
                    batch.withKeyVisibility { visibility in
                        attentionForward(out: a.att, lse: a.lse, q: a.q, k: a.k, v: a.v, keyMask: mask, visibility: visibility, shape: shape)
                    }
                }
            }
        }
        acts.keep(.attention, layer: l, config: c)
        // xMid = xIn + o(att)   (Gemma: xMid = xIn + norm(o(att)))
        if a.xMid != xIn { a.xMid.update(from: xIn, count: n * C) }
        if let norm = layer.attentionOutputNorm, let branch = a.attentionOutput, let normed = acts.branchNormed {
            layer.o.forward(a.att, n: n, into: branch, accumulate: false, saved: a.saved[.o], random: &random, training: training)
            rmsnormForward(normed, a.attentionOutputRstd, branch, norm, rows: n, dim: C, eps: c.rmsNormEps, weightOffset: offset)
            addInPlace(a.xMid, normed, count: n * C)
        } else {
            layer.o.forward(a.att, n: n, into: a.xMid, accumulate: true, saved: a.saved[.o], random: &random, training: training)
        }
        rmsnormForward(a.xn2, a.rstd2, a.xMid, layer.mlpNorm, rows: n, dim: C, eps: c.rmsNormEps, weightOffset: offset)
        if let experts = layer.experts {
            // xOut = xMid + moe(xn2)
            if xOut != a.xMid { xOut.update(from: a.xMid, count: n * C) }
            batch.mask.withOptionalPointer { mask in
                // Counted: a training forward's choices (not again in backward's recomputation under
                // checkpointing), and an evaluation's policy forwards; nothing else.
                if training && !recomputing {
                    experts.forward(a.xn2, n: n, into: xOut, mask: mask, keep: training, tally: &routerTally, random: &random, training: training)
                } else if !training && evaluationTally != nil && adaptersEnabled {
                    experts.forward(a.xn2, n: n, into: xOut, mask: mask, keep: training, tally: &evaluationTally, random: &random, training: training)
                } else {
                    var none: RouterTally?
                    experts.forward(a.xn2, n: n, into: xOut, mask: mask, keep: training, tally: &none, random: &random, training: training)
                }
            }
            return
        }
        Linear.forward([layer.gate, layer.up], a.xn2, n: n, into: [a.gate, a.up], ldy: 2 * c.intermediateSize,
                       saved: Projection.mlpInputs.map { a.saved[$0] }, random: &random, training: training)
        acts.keep(.gateUp, layer: l, config: c)
        gatedActivationForward(c.hiddenActivation, a.h, gate: a.gate, up: a.up, rows: n, width: c.intermediateSize, stride: 2 * c.intermediateSize)
        // xOut = xMid + down(h)   (Gemma: xOut = xMid + norm(down(h)))
        if xOut != a.xMid { xOut.update(from: a.xMid, count: n * C) }
        if let norm = layer.mlpOutputNorm, let branch = a.mlpOutput, let normed = acts.branchNormed {
            layer.down.forward(a.h, n: n, into: branch, accumulate: false, saved: a.saved[.down], random: &random, training: training)
            rmsnormForward(normed, a.mlpOutputRstd, branch, norm, rows: n, dim: C, eps: c.rmsNormEps, weightOffset: offset)
            addInPlace(xOut, normed, count: n * C)
        } else {
            layer.down.forward(a.h, n: n, into: xOut, accumulate: true, saved: a.saved[.down], random: &random, training: training)
        }
    }

    /// Runs the next chunk of tokens of each cached row and returns the logits of each row's
    /// last position [batch, V]. `mask` marks padding in the chunk (1 real, 0 pad), `positions` the rope positions.
    package func decode(_ chunk: TokenBatch, cache: KVCache) -> [Float] {
        precondition(chunk.batch == cache.batch && cache.length + chunk.seq <= cache.capacity, "the chunk does not fit the cache")
        for b in 0..<chunk.batch {
            for t in 0..<chunk.seq { cache.keyMask[b * cache.capacity + cache.length + t] = chunk.mask?[b * chunk.seq + t] ?? 1 }
        }
        let inference = TokenBatch(batch: chunk.batch, seq: chunk.seq, ids: chunk.ids, mask: nil, positions: chunk.positions)
        let acts = activations(for: inference, training: false)
        let hidden = forward(inference, acts: acts, cache: cache)
        var last = [Float](repeating: 0, count: chunk.batch * config.hiddenSize)
        for b in 0..<chunk.batch {
            for c in 0..<config.hiddenSize { last[b * config.hiddenSize + c] = hidden[((b + 1) * chunk.seq - 1) * config.hiddenSize + c] }
        }
        var logits = [Float](repeating: 0, count: chunk.batch * config.vocabSize)
        logits.withUnsafeMutableBufferPointer { out in
            last.withUnsafeBufferPointer { head.multiply($0.baseAddress!, n: chunk.batch, into: out.baseAddress!) }
            if let cap = config.finalLogitSoftcap { softcapInPlace(out.baseAddress!, count: out.count, cap: cap) }
        }
        return logits
    }

    /// Backpropagates dFinal (n, C), the gradient of the loss with respect to the final normed
    /// states, into the trainable parameters' gradients (accumulating).
    package func backward(_ batch: TokenBatch, acts: Activations, dFinal: UnsafeMutablePointer<Float>) {
        precondition(acts.training, "backward needs the activations of a training forward")
        let pass = Pass(self, batch)
        let c = config, n = pass.n, C = c.hiddenSize, offset = c.normWeightOffset
        let randomAfterForward = random
        defer { random = randomAfterForward }
        var dStream = acts.dStream!, dMid = acts.dMid!
        let dNormed = acts.dNormed!, scratch = acts.loraScratch!
        dStream.update(repeating: 0, count: n * C)
        rmsnormBackward(dStream, finalNormGrad, dFinal, acts.stream[layers.count], finalNorm, acts.finalRstd, rows: n, dim: C,
                        weightOffset: offset)
        let auxGradient = routerAuxGradient()
        recomputing = true
        defer { recomputing = false }
        batch.mask.withOptionalPointer { mask in
            for l in stride(from: layers.count - 1, through: 0, by: -1) {
                if acts.checkpointing {
                    random = acts.layerRandom[l]
                    forwardLayer(l, pass, acts: acts, cache: nil)
                }
                let layer = layers[l], a = acts.layer(l), xIn = acts.stream[l], shape = pass.shape(l), rope = pass.rope(l)
                if !acts.checkpointing && l != layers.count - 1 {
                    // xn1, xn2 and h share one buffer across layers: recompute this layer's
                    // (and refill q, k, v, att, gate/up from their bf16 copies where kept so).
                    acts.restore(layer: l, config: c)
                    rmsnormForward(a.xn1, a.rstd1, xIn, layer.inputNorm, rows: n, dim: C, eps: c.rmsNormEps, weightOffset: offset)
                    rmsnormForward(a.xn2, a.rstd2, a.xMid, layer.mlpNorm, rows: n, dim: C, eps: c.rmsNormEps, weightOffset: offset)
                    if layer.experts == nil {
                        gatedActivationForward(c.hiddenActivation, a.h, gate: a.gate, up: a.up, rows: n, width: c.intermediateSize,
                                               stride: 2 * c.intermediateSize)
                    }
                }
                // xOut = xMid + down(h): dMid = dOut, dh = dOut Wd
                // (Gemma: xOut = xMid + norm(down(h)): the norm's backward first)
                dMid.update(from: dStream, count: n * C)
                var dDown = dStream
                if let norm = layer.mlpOutputNorm, let branch = a.mlpOutput, let dBranch = acts.dBranch {
                    dBranch.update(repeating: 0, count: n * C)
                    rmsnormBackward(dBranch, layer.mlpOutputNormGrad, dStream, branch, norm, a.mlpOutputRstd!, rows: n, dim: C, weightOffset: offset)
                    dDown = dBranch
                }
                if let experts = layer.experts {
                    experts.backward(dDown, x: a.xn2, dx: dNormed, mask: mask, auxGradient: auxGradient)
                } else {
                    layer.down.backward(dDown, x: a.h, n: n, dx: acts.dh, accumulate: false, saved: a.saved[.down], scratch: scratch)
                    gatedActivationBackward(c.hiddenActivation, dgate: acts.dgate, dup: acts.dup, dh: acts.dh, gate: a.gate, up: a.up,
                                            rows: n, width: c.intermediateSize, stride: 2 * c.intermediateSize)
                    Linear.backward([layer.gate, layer.up], [acts.dgate, acts.dup], lddy: 2 * c.intermediateSize, x: a.xn2, n: n,
                                    dx: dNormed, accumulate: false, saved: Projection.mlpInputs.map { a.saved[$0] }, scratch: scratch)
                }
                rmsnormBackward(dMid, layer.mlpNormGrad, dNormed, a.xMid, layer.mlpNorm, a.rstd2, rows: n, dim: C, weightOffset: offset)
                // xMid = xIn + o(att)   (Gemma: xMid = xIn + norm(o(att)))
                var dO = dMid
                if let norm = layer.attentionOutputNorm, let branch = a.attentionOutput, let dBranch = acts.dBranch {
                    dBranch.update(repeating: 0, count: n * C)
                    rmsnormBackward(dBranch, layer.attentionOutputNormGrad, dMid, branch, norm, a.attentionOutputRstd!, rows: n, dim: C,
                                    weightOffset: offset)
                    dO = dBranch
                }
                layer.o.backward(dO, x: a.att, n: n, dx: acts.datt, accumulate: false, saved: a.saved[.o], scratch: scratch)
                GEMM.timed("attention backward (whole kernel)", flops: 0) {
                    batch.withKeyVisibility { visibility in
                        attentionBackward(dq: acts.dq, dk: acts.dk, dv: acts.dv, dout: acts.datt, q: a.q, k: a.k, v: a.v,
                                          out: a.att, lse: a.lse, keyMask: mask, visibility: visibility, shape: shape)
                    }
                }
                if !c.layersWithoutRope.contains(l) {
                    ropeApply(acts.dq, cos: rope.cos, sin: rope.sin, tokens: n, heads: c.headCount, headDim: c.headDim,
                              rotaryDim: c.rotaryDim, inverse: true)
                    ropeApply(acts.dk, cos: rope.cos, sin: rope.sin, tokens: n, heads: c.kvHeadCount, headDim: c.headDim,
                              rotaryDim: c.rotaryDim, inverse: true)
                }
                var dq = acts.dq!, dk = acts.dk!
                if let qNorm = layer.qNorm, let kNorm = layer.kNorm, let qPre = a.qPre, let kPre = a.kPre {
                    acts.dqPre.update(repeating: 0, count: n * c.qDim)
                    acts.dkPre.update(repeating: 0, count: n * c.kvDim)
                    let qShape = c.qkNormShape(query: true, tokens: n), kShape = c.qkNormShape(query: false, tokens: n)
                    rmsnormBackward(acts.dqPre, layer.qNormGrad, dq, qPre, qNorm, a.qRstd!, rows: qShape.rows, dim: qShape.dim,
                                    weightOffset: offset)
                    rmsnormBackward(acts.dkPre, layer.kNormGrad, dk, kPre, kNorm, a.kRstd!, rows: kShape.rows, dim: kShape.dim,
                                    weightOffset: offset)
                    dq = acts.dqPre; dk = acts.dkPre
                }
                layer.q.backward(dq, x: a.xn1, n: n, dx: dNormed, accumulate: false, saved: a.saved[.q], scratch: scratch)
                layer.k.backward(dk, x: a.xn1, n: n, dx: dNormed, accumulate: true, saved: a.saved[.k], scratch: scratch)
                layer.v.backward(acts.dv, x: a.xn1, n: n, dx: dNormed, accumulate: true, saved: a.saved[.v], scratch: scratch)
                // dIn = dMid + d(input norm)
                rmsnormBackward(dMid, layer.inputNormGrad, dNormed, xIn, layer.inputNorm, a.rstd1, rows: n, dim: C, weightOffset: offset)
                swap(&dStream, &dMid)
            }
        }
        if let embeddingGrad {
            // x0 = multiplier * E[ids]
            if c.embeddingMultiplier != 1 { scaleInPlace(dStream, count: n * C, by: c.embeddingMultiplier) }
            batch.ids.withUnsafeBufferPointer { embeddingBackward(embeddingGrad, ids: $0.baseAddress!, count: n, dout: dStream, dim: C) }
        }
    }

    // MARK: - Entry points

    /// Logits (n, V) of every position.
    func logits(_ batch: TokenBatch) -> [Float] {
        let acts = activations(for: batch, training: false)
        let hidden = forward(batch, acts: acts)
        var out = [Float](repeating: 0, count: batch.tokenCount * config.vocabSize)
        out.withUnsafeMutableBufferPointer {
            head.multiply(hidden, n: batch.tokenCount, into: $0.baseAddress!)
            if let cap = config.finalLogitSoftcap { softcapInPlace($0.baseAddress!, count: $0.count, cap: cap) }
        }
        return out
    }

    /// Sum of -log p(target) over positions whose target is not negative, and their count; no gradients.
    package func negativeLogLikelihood(_ batch: TokenBatch, targets: [Int32]) -> (sum: Double, count: Int) {
        let acts = activations(for: batch, training: false)
        let hidden = forward(batch, acts: acts)
        let r = targets.withUnsafeBufferPointer {
            crossEntropy(hidden: hidden, targets: $0.baseAddress!, rows: batch.tokenCount, head: head, softcap: logitSoftcap, logitScale: 1 / logitTemperature)
        }
        return (r.loss, r.count)
    }

    /// The per-position log-probabilities of `targets` (0 where a target is negative) and the
    /// other head statistics, from a training forward whose activations are kept
    /// for `backward(logProbGradients:)`. Objectives whose loss is not a plain token mean
    /// (ORPO, DPO) use this pair: forward, compute d loss / d log p per position, backward.
    ///
    /// A position's loss term depends on its hidden state only through log p(target), so with a
    /// frozen head (LoRA) the same pass over the head also computes d log p / d hidden for every
    /// position, and backward scales it instead of computing the logits a second time.
    package func forwardForTraining(_ batch: TokenBatch, targets: [Int32]) -> TokenStatistics {
        precondition(isTraining, "forwardForTraining needs a model built for LoRA or full fine-tuning")
        let hidden = forward(batch, acts: activations(for: batch, training: true))
        guard headGrad == nil else {
            pendingBackward = (batch, targets, nil)
            return headStatistics(hidden: hidden, batch: batch, targets: targets)
        }
        var gradients = [Float](repeating: 0, count: batch.tokenCount * config.hiddenSize)
        let stats = gradients.withUnsafeMutableBufferPointer { g in
            headStatistics(hidden: hidden, batch: batch, targets: targets,
                           backward: CrossEntropyBackward(uniformWeight: 1, dHidden: g.baseAddress!))
        }
        pendingBackward = (batch, targets, gradients)
        return stats
    }

    /// Per-position statistics of an inference forward (no gradients): the reference model's log-probs, evaluation.
    package func tokenStatistics(_ batch: TokenBatch, targets: [Int32]) -> TokenStatistics {
        headStatistics(hidden: forward(batch, acts: activations(for: batch, training: false)), batch: batch, targets: targets)
    }

    /// The head's per-position figures for final hidden states (n, C): no gradients.
    private func headStatistics(hidden: UnsafeMutablePointer<Float>, batch: TokenBatch, targets: [Int32],
                                backward: CrossEntropyBackward? = nil) -> TokenStatistics {
        var stats = TokenStatistics(count: batch.tokenCount)
        stats.withOutputs { outputs in
            targets.withUnsafeBufferPointer { t in
                _ = crossEntropy(hidden: hidden, targets: t.baseAddress!, rows: batch.tokenCount, head: head, outputs: outputs,
                                 backward: backward, softcap: logitSoftcap, logitScale: 1 / logitTemperature)
            }
        }
        stats.logitSums = logitSums(hidden: hidden, count: batch.tokenCount)
        return stats
    }

    // MARK: - Mixture of experts: the load-balancing loss

    /// The weight of the load-balancing loss in training (`MixtureOfExperts`): the config's
    /// `router_aux_loss_coef` where its `output_router_logits` is true (as transformers adds it),
    /// else 0; a trainer may set it. 0 for a dense model.
    public var routerAuxLossCoef: Float = 0

    /// The router's choices in the last training forward (nil for a dense model).
    private var routerTally: RouterTally?
    /// Set by a trainer accumulating micro-batches: the whole window's choices, which the
    /// load-balancing loss's gradient is taken over (exact accumulation). Nil: each backward
    /// takes its own forward's.
    package var routerWindow: RouterTally?
    /// Backward is recomputing a layer (gradient checkpointing): its choices are not counted again.
    private var recomputing = false
    /// The load-balancing loss's share of the backwards since the last `takeRouterAuxShare()`:
    /// summed over a window's micro-batches, the window's loss (before its coefficient).
    private var routerAuxShare = 0.0

    /// Set by an evaluation: the router's choices of its inference forwards with adapters on (the
    /// policy's, not a reference's), for the load-balancing loss over the evaluation set.
    package var evaluationTally: RouterTally?

    /// Whether training adds a load-balancing loss.
    package var trainsRouterBalance: Bool { config.experts != nil && routerAuxLossCoef > 0 }

    /// The router's choices in a training forward of `batch` (no head, no backward): what a
    /// trainer sums over a window before its first backward. Advances the dropout stream as
    /// the forward does.
    package func routerTally(of batch: TokenBatch) -> RouterTally? {
        forward(batch, acts: activations(for: batch, training: true))
        return routerTally
    }

    /// The load-balancing loss of the backwards since the last call, and resets it.
    package func takeRouterAuxShare() -> Double {
        defer { routerAuxShare = 0 }
        return routerAuxShare
    }

    /// d loss / d (router probability of e) at each real token of each routed layer, from the
    /// load-balancing loss over the window's (or this forward's) choices: coef * E * count_e / rows^2;
    /// adds this forward's share of the loss. Empty without one.
    private func routerAuxGradient() -> [Float] {
        guard trainsRouterBalance, let forward = routerTally, let tally = routerWindow ?? routerTally, tally.rows > 0 else { return [] }
        let experts = Double(tally.counts.count), rows2 = tally.rows * tally.rows
        routerAuxShare += experts * zip(tally.counts, forward.probabilities).reduce(0) { $0 + $1.0 * $1.1 } / rows2
        return tally.counts.map { Float(Double(routerAuxLossCoef) * experts * $0 / rows2) }
    }

    /// The final logit soft-cap for the cross-entropy kernel, 0 for none.
    package var logitSoftcap: Float { config.finalLogitSoftcap ?? 0 }

    /// The head's log-probabilities, entropies and their gradients come from logits / T: GRPO
    /// scores completions at the temperature it sampled them with, as TRL does. 1 elsewhere.
    package var logitTemperature: Float = 1

    /// The head's column sums [C]: sum_j logit_j = h . sum_j W_j, so the sum of a position's
    /// logits costs one dot product. Cached while the head is frozen.
    private var frozenHeadColumnSums: [Double]?

    func logitSums(hidden: UnsafePointer<Float>, count: Int) -> [Float] {
        let C = config.hiddenSize
        if let cap = config.finalLogitSoftcap {
            // Capped logits are not linear in h: sum them row by row, a chunk of rows at a time.
            let V = config.vocabSize, chunk = 64
            var sums = [Float](repeating: 0, count: count)
            let logits = UnsafeMutablePointer<Float>.allocate(capacity: chunk * V)
            defer { logits.deallocate() }
            var start = 0
            while start < count {
                let rows = min(chunk, count - start)
                head.multiply(hidden + start * C, n: rows, into: logits)
                softcapInPlace(logits, count: rows * V, cap: cap)
                for r in 0..<rows { var s = 0.0; for j in 0..<V { s += Double(logits[r * V + j]) }; sums[start + r] = Float(s) }
                start += rows
            }
            return sums
        }
        var sums: [Double]
        if let cached = frozenHeadColumnSums, headGrad == nil { sums = cached } else {
            sums = [Double](repeating: 0, count: C)
            let tile = 256
            let rows = UnsafeMutablePointer<Float>.allocate(capacity: tile * C)
            defer { rows.deallocate() }
            var start = 0
            while start < head.rows {
                let n = min(tile, head.rows - start)
                head.dequantizeRows(start, n, into: rows)
                for r in 0..<n { for c in 0..<C { sums[c] += Double(rows[r * C + c]) } }
                start += n
            }
            if headGrad == nil { frozenHeadColumnSums = sums }
        }
        return sums.withUnsafeBufferPointer { s in
            (0..<count).map { t in
                let row = hidden + t * C
                var dot = 0.0
                for c in 0..<C { dot += Double(row[c]) * s[c] }
                return Float(dot)
            }
        }
    }

    /// Completes the last `forwardForTraining`: given d loss / d log p(target) at each position,
    /// adds the gradients of every trainable parameter. The head's logits are recomputed in chunks.
    package func backward(logProbGradients: [Float]) {
        guard let (batch, targets, negativeLogProbGradients) = pendingBackward else { preconditionFailure("backward without forwardForTraining") }
        pendingBackward = nil
        let acts = activations(for: batch, training: true)
        let n = batch.tokenCount, C = config.hiddenSize
        // The CE kernel differentiates sum_t w_t * (-log p_t), so w_t = -dL/dlog p_t.
        let weights = logProbGradients.map { -$0 }
        let dFinal = UnsafeMutablePointer<Float>.allocate(capacity: n * C)
        defer { dFinal.deallocate() }
        if let g = negativeLogProbGradients {
            // dL/dh_t = dL/dlog p_t * d log p_t/dh_t = w_t * (-d log p_t/dh_t)
            parallelFor(n, grain: 16) { range in
                for t in range { for c in 0..<C { dFinal[t * C + c] = weights[t] * g[t * C + c] } }
            }
            backward(batch, acts: acts, dFinal: dFinal)
            return
        }
        dFinal.initialize(repeating: 0, count: n * C)
        let maskedTargets = zip(targets, weights).map { $1 == 0 ? Int32(-1) : $0 }   // no head work where nothing flows
        maskedTargets.withUnsafeBufferPointer { t in weights.withUnsafeBufferPointer { w in
            _ = crossEntropy(hidden: acts.finalNormed, targets: t.baseAddress!, rows: n, head: head,
                             backward: CrossEntropyBackward(rowWeights: w.baseAddress!, dHidden: dFinal, dHead: headGrad), softcap: logitSoftcap, logitScale: 1 / logitTemperature)
        } }
        backward(batch, acts: acts, dFinal: dFinal)
    }

    /// Forward and backward of the token cross-entropy: each scored position contributes
    /// `weight * -log p(target)` to the loss, and its gradient is added to `parameters.grads`.
    /// Returns the unweighted sum of -log p and the count of scored positions.
    @discardableResult
    package func crossEntropyStep(_ batch: TokenBatch, targets: [Int32], weight: Float,
                                 statistics: UnsafeMutablePointer<TokenStatistics>? = nil) -> (sum: Double, count: Int) {
        precondition(isTraining, "crossEntropyStep needs a model built for LoRA or full fine-tuning")
        let acts = activations(for: batch, training: true)
        let hidden = forward(batch, acts: acts)
        let n = batch.tokenCount
        let dFinal = acts.dNormed!   // free until backward starts
        dFinal.update(repeating: 0, count: n * config.hiddenSize)
        var stats = TokenStatistics(count: statistics == nil ? 0 : n)
        let r = stats.withOutputs { outputs in
            targets.withUnsafeBufferPointer {
                crossEntropy(hidden: hidden, targets: $0.baseAddress!, rows: n, head: head, outputs: statistics == nil ? CrossEntropyOutputs() : outputs,
                             backward: CrossEntropyBackward(uniformWeight: weight, dHidden: dFinal, dHead: headGrad), softcap: logitSoftcap, logitScale: 1 / logitTemperature)
            }
        }
        statistics?.pointee = stats
        // backward() reuses dNormed, so hand it a copy.
        let dCopy = UnsafeMutablePointer<Float>.allocate(capacity: n * config.hiddenSize)
        defer { dCopy.deallocate() }
        dCopy.update(from: dFinal, count: n * config.hiddenSize)
        backward(batch, acts: acts, dFinal: dCopy)
        return (r.loss, r.count)
    }
}

/// Per-position figures of the head at each target: log p(target), the sum of the logits,
/// the softmax entropy and whether the argmax is the target (0 where the target is negative).
public struct TokenStatistics: Sendable {
    /// log p(target) at each position.
    public var logProbs: [Float]
    /// The sum of all V logits at each position (DPO logs their mean as TRL's `logits/chosen`).
    public var logitSums: [Float]
    /// Entropy of the softmax over the vocabulary at each position, in nats.
    public var entropies: [Float]
    /// 1 where the argmax logit is the target, else 0.
    public var correct: [Float]

    /// Zeroed figures for `count` positions.
    public init(count: Int) {
        logProbs = [Float](repeating: 0, count: count)
        logitSums = logProbs; entropies = logProbs; correct = logProbs
    }

    mutating func withOutputs<R>(_ body: (CrossEntropyOutputs) -> R) -> R {
        logProbs.withUnsafeMutableBufferPointer { a in
            entropies.withUnsafeMutableBufferPointer { c in correct.withUnsafeMutableBufferPointer { d in
                body(CrossEntropyOutputs(logProbs: a.baseAddress, entropies: c.baseAddress, correct: d.baseAddress))
            } }
        }
    }
}

extension Optional {
    /// Calls `body` with a pointer to the array's elements, or nil.
    func withOptionalPointer<Element, R>(_ body: (UnsafePointer<Element>?) -> R) -> R where Wrapped == [Element] {
        switch self {
        case .none: return body(nil)
        case let .some(array): return array.withUnsafeBufferPointer { body($0.baseAddress) }
        }
    }
}
