import Foundation
import FinchKernels
import FinchIO
import FinchTokenizers
import FinchModels
import FinchGeneration
import FinchDistributed

/// Everything `finch train` can be told, from flags and a YAML file alike (flags win). Keys are
/// snake_case in YAML and kebab-case as flags: `lora_r` / `--lora-r`.
public struct TrainConfig: Sendable, Codable, Equatable {
    /// The objective, as TRL names it: a name of `ObjectiveRegistry.methods` (sft, orpo, dpo, simpo, cpo).
    public var method = "sft"
    /// Base model: an HF folder (config.json, safetensors, tokenizer) or a .gguf file. Required.
    public var model = ""
    /// Training data file (.jsonl, .json or .csv). Required.
    public var data = ""
    /// Held-out data in the same format; nil means no evaluation.
    public var evalData: String?
    /// The run folder: adapter or weights, metrics.jsonl, run.json, checkpoints. Required.
    public var output = ""
    /// Dataset format: detected from the fields unless given (text, prompt_completion, messages, preference).
    public var format: String?
    /// Tokens per sequence: longer ones are cut; a row left with no label to learn is dropped.
    public var maxLength = 1024
    /// TRL's `beta` of ORPO, DPO, CPO, SimPO and KTO, and of GRPO's KL term (ignored by SFT);
    /// GRPO's default is TRL's 0 unless it is given.
    public var beta = 0.1
    /// `loss_type`: DPO's sigmoid (the default), ipo, hinge or robust (`PreferenceLoss.DPOKind`);
    /// KTO's kto (what the default means for KTO) or apo_zero_unpaired.
    public var lossType = "sigmoid"
    /// A row the data format cannot read is left out and counted instead of stopping the run.
    public var skipBadRows = false
    /// The share of the training rows held out for evaluation (0: none; not with `evalData`).
    public var validationSplit = 0.0
    /// Fields read under other names, "name=source" (`--field prompt=question`), for every trainer.
    public var fieldMapping: [String] = []
    /// A JSON file of tool schemas rendered (the chat template's `tools`) with every conversation
    /// whose row has no `tools` field.
    public var tools: String?
    /// The revision (branch, tag or commit) of a `model` given as a Hugging Face repo id; nil: main.
    public var revision: String?
    /// KTO's weight on the loss of desirable examples (TRL's `desirable_weight`).
    public var desirableWeight = 1.0
    /// KTO's weight on the loss of undesirable examples (TRL's `undesirable_weight`).
    public var undesirableWeight = 1.0
    /// GRPO: completions sampled per prompt (TRL's `num_generations`).
    public var numGenerations = 8
    /// GRPO: most tokens per completion (TRL's `max_completion_length`).
    public var maxCompletionLength = 512
    /// GRPO: the sampling temperature, at which log-probabilities are taken too.
    public var temperature = 1.0
    /// GRPO: nucleus sampling (1 keeps every token).
    public var topP = 1.0
    /// GRPO: top-k sampling (0 keeps every token).
    public var topK = 0
    /// GRPO: the ratio is clipped below at 1 - epsilon.
    public var epsilon = 0.2
    /// GRPO: the ratio is clipped above at 1 + epsilon_high (nil: epsilon).
    public var epsilonHigh: Double?
    /// GRPO: optimizer steps on each batch of completions (TRL's `num_iterations`).
    public var numIterations = 1
    /// GRPO: what advantages are divided by (TRL's `scale_rewards`: group, batch or none).
    public var scaleRewards = GRPOObjective.RewardScaling.group.rawValue
    /// GRPO: completions cut at the max length take no part in the loss.
    public var maskTruncatedCompletions = false
    /// GRPO: the KL term is multiplied by the importance ratio (TRL's `use_bias_correction_kl`).
    public var useBiasCorrectionKL = true
    /// GRPO: built-in reward functions, `name[:argument]` (`BuiltInRewards`).
    public var rewardFunctions: [String] = []
    /// GRPO: shell commands that score completions (`CommandReward`).
    public var rewardCommands: [String] = []
    /// GRPO: one weight per reward, the functions first, then the commands (empty: all 1).
    public var rewardWeights: [Double] = []
    /// GRPO: seconds a reward command may take per batch.
    public var rewardTimeout = 60.0
    /// TRL's `label_smoothing` for DPO (robust only), CPO and SimPO; 0 turns it off.
    public var labelSmoothing = 0.0
    /// SimPO's target reward margin gamma (TRL's `simpo_gamma`).
    public var simpoGamma = 0.5
    /// Weight of the chosen rows' NLL term in CPO and SimPO (TRL's `cpo_alpha`).
    public var cpoAlpha = 1.0
    /// LoRA rank (`--lora-r`); see `LoRAConfig.rank`.
    public var loraR = 16
    /// LoRA alpha; the LoRA term is scaled by alpha / r (alpha / sqrt(r) with rsLoRA).
    public var loraAlpha: Float = 32
    /// Dropout on the LoRA branch's input while training, in [0, 1).
    public var loraDropout: Float = 0
    /// Projections that get adapters, among `LoRAConfig.allProjections` (default: all seven).
    public var loraTargets = LoRAConfig.allProjections
    /// rsLoRA scaling, alpha / sqrt(r).
    public var useRSLoRA = false
    /// Train every weight and save an HF folder instead of a LoRA adapter.
    public var full = false
    /// A PEFT adapter folder to continue training from; its own r, alpha and targets replace the
    /// lora_* settings. Ignored with `full`.
    public var adapter: String?
    /// SFT only: pack examples end to end into rows of `maxLength`; attention stays within each.
    public var packing = false
    /// Recompute each layer in backward instead of keeping its activations (HF's gradient_checkpointing).
    public var gradientCheckpointing = false
    /// Mixture of experts: the weight of the load-balancing loss in the training loss (nil, as TRL
    /// 1.16: the config's `router_aux_loss_coef` for SFT, DPO, KTO and GRPO; for ORPO, CPO and SimPO
    /// only where the config sets `output_router_logits`; 0 turns it off).
    public var routerAuxLossCoef: Double?
    /// Keep a quantized base (GGUF Q4/Q8) quantized in memory, dequantized tile by tile inside
    /// each product, instead of the f32 copy made for bases under 1 GB (Unsloth's load_in_4bit).
    public var keepQuantized = false
    /// Load a model whose weights hold NaN or infinity (refused by default).
    public var allowNonFinite = false
    /// What a step with a non-finite loss or gradient does: stop (default) or skip-step.
    public var nanPolicy = NaNPolicy.stop
    /// Precision of the base model's products (`Precision`): auto picks bf16 where the CPU
    /// computes it natively, as TRL's bf16=True default does.
    public var precision: PrecisionChoice = .auto
    /// Render plain-text prompts as a user turn with the model's chat template.
    public var chatTemplate = false
    /// At each evaluation, sample completions of this many eval prompts into generations.jsonl; 0 for none.
    public var generateDuringEval = 0
    /// Continue from the newest checkpoint in `output` (an error if it has none).
    public var resume = false
    /// Empty a non-empty `output` before starting; without it (or `resume`) such a folder is an error.
    public var overwrite = false
    /// Where metrics go: `jsonl` (metrics.jsonl, and metrics.svg at the end), `tensorboard`
    /// (event files in `output/tensorboard`), both, or `none`.
    public var reportTo = ["jsonl"]
    /// Data parallel runs: seconds a collective may wait for the other ranks before the job stops.
    public var collectiveTimeout = 300.0
    /// Batch size, optimizer, schedule and logging: the options read by `Trainer`.
    public var trainer = TrainerSettings()

    /// The methods of `ObjectiveRegistry`, by name.
    public static var methods: [String] { ObjectiveRegistry.methods.map(\.name) }

    /// A bad option, thrown while building a config; `source` names the flag or YAML file.
    public enum Error: Swift.Error, CustomStringConvertible, Equatable {
        case missing(String)
        case invalid(key: String, source: String, found: String, expected: String)
        case unknown(key: String, source: String, known: [String])

        public var description: String {
            switch self {
            case let .missing(key): return "missing required option --\(key.replacingOccurrences(of: "_", with: "-")) (or `\(key):` in the YAML config)"
            case let .invalid(key, source, found, expected): return "\(source): \(key): found '\(found)', expected \(expected)"
            case let .unknown(key, source, known):
                return "\(source): unknown option '\(key)'; known: \(known.joined(separator: ", "))"
            }
        }
    }

    /// Every option at its default; model, data and output still empty.
    public init() {}

    /// Builds a config from string values (YAML scalars or flag arguments); `sources` names where
    /// each came from ("--lr", "train.yaml") for error messages.
    public init(values: [String: String], sources: [String: String] = [:]) throws {
        for key in values.keys where !Self.keys.contains(key) {
            throw Error.unknown(key: key, source: sources[key] ?? "options", known: Self.keys)
        }
        func source(_ key: String) -> String { sources[key] ?? "--\(key.replacingOccurrences(of: "_", with: "-"))" }
        func apply(_ option: TrainOption) throws {
            if let value = values[option.key] { try option.set(value, in: &self, source: source(option.key)) }
        }
        // The method first, then what a run must be given, then the rest in declaration order.
        try Self.options.filter { $0.key == "method" }.forEach(apply)
        if let missing = Self.options.first(where: { $0.required && values[$0.key] == nil }) { throw Error.missing(missing.key) }
        try Self.options.filter { $0.key != "method" }.forEach(apply)
        let t = trainer
        if collectiveTimeout <= 0 {
            throw Error.invalid(key: "collective_timeout", source: source("collective_timeout"), found: "\(collectiveTimeout)", expected: "a positive number of seconds")
        }

        for (key, value) in [("max_length", maxLength), ("batch_size", t.batchSize), ("grad_accum", t.gradAccum), ("lora_r", loraR)] where value < 1 {
            throw Error.invalid(key: key, source: source(key), found: "\(value)", expected: "a positive number")
        }
        // Sizes that later multiply into allocations and loop bounds: within what a run can hold.
        for (key, value, limit) in [("max_length", maxLength, 1 << 20), ("batch_size", t.batchSize, 1 << 16), ("grad_accum", t.gradAccum, 1 << 16),
                                    ("lora_r", loraR, 1 << 14), ("warmup_steps", t.warmupSteps, 1 << 30), ("max_steps", t.maxSteps, 1 << 30),
                                    ("epochs", t.epochs, 1 << 20)] where value > limit {
            throw Error.invalid(key: key, source: source(key), found: "\(value)", expected: "at most \(limit)")
        }
        for (key, value) in [("lr", Double(t.learningRate)), ("weight_decay", Double(t.weightDecay)), ("max_grad_norm", Double(t.maxGradNorm)),
                             ("beta", beta), ("lora_alpha", Double(loraAlpha))] where !value.isFinite || value < 0 {
            throw Error.invalid(key: key, source: source(key), found: values[key] ?? "\(value)", expected: "a finite number >= 0 (within float range)")
        }
        if t.epochs < 1 && t.maxSteps < 1 { throw Error.invalid(key: "epochs", source: source("epochs"), found: "\(t.epochs)", expected: "at least 1, or max_steps") }
        let ownLossTypes = method == "kto" ? KTOObjective.Loss.allCases.map(\.rawValue)
            : method == "grpo" ? GRPOObjective.Loss.allCases.map(\.rawValue) : nil
        let lossTypes = ownLossTypes.map { ["sigmoid"] + $0 } ?? PreferenceLoss.DPOKind.allCases.map(\.rawValue)
        if !lossTypes.contains(lossType) {
            throw Error.invalid(key: "loss_type", source: source("loss_type"), found: lossType,
                                expected: "one of \((ownLossTypes ?? lossTypes).joined(separator: ", ")) for \(method)")
        }
        if method == "grpo" {
            if values["beta"] == nil { beta = 0 }
            try validateGRPO(source: source)
        }
        for (key, value) in [("desirable_weight", desirableWeight), ("undesirable_weight", undesirableWeight)] where !value.isFinite || value <= 0 {
            throw Error.invalid(key: key, source: source(key), found: "\(value)", expected: "a positive number")
        }
        if !(0..<1).contains(validationSplit) || !validationSplit.isFinite {
            throw Error.invalid(key: "validation_split", source: source("validation_split"), found: "\(validationSplit)", expected: "a share in [0, 1)")
        }
        if validationSplit > 0 && evalData != nil {
            throw Error.invalid(key: "validation_split", source: source("validation_split"), found: "\(validationSplit) with eval_data",
                                expected: "one of them: a held-out share of the data, or a file")
        }
        if method == "dpo" && labelSmoothing != 0 && lossType != "robust" {
            throw Error.invalid(key: "label_smoothing", source: source("label_smoothing"), found: "\(labelSmoothing) with loss_type \(lossType)",
                                expected: "loss_type robust (TRL 1.x ignores label smoothing for sigmoid, ipo and hinge)")
        }
        if !(0..<1).contains(loraDropout) { throw Error.invalid(key: "lora_dropout", source: source("lora_dropout"), found: "\(loraDropout)", expected: "a number in [0, 1)") }
    }

    /// GRPO's settings, checked for what a run can do.
    func validateGRPO(source: (String) -> String) throws {
        func check(_ ok: Bool, _ key: String, _ found: String, _ expected: String) throws {
            if !ok { throw Error.invalid(key: key, source: source(key), found: found, expected: expected) }
        }
        try check(numGenerations >= 2 && numGenerations <= 1 << 12, "num_generations", "\(numGenerations)",
                  "2 to 4096 (advantages compare the completions of one prompt: one completion has no group to normalise over)")
        try check((1...(1 << 20)).contains(maxCompletionLength), "max_completion_length", "\(maxCompletionLength)", "a positive number of tokens")
        try check(temperature > 0 && temperature.isFinite, "temperature", "\(temperature)", "a positive number (GRPO samples)")
        try check(topP > 0 && topP <= 1, "top_p", "\(topP)", "a number in (0, 1]")
        try check(topK >= 0, "top_k", "\(topK)", "0 (off) or a positive number")
        try check(epsilon >= 0 && epsilon.isFinite, "epsilon", "\(epsilon)", "a number >= 0")
        try check((epsilonHigh ?? 0) >= 0 && (epsilonHigh ?? 0).isFinite, "epsilon_high", "\(epsilonHigh ?? 0)", "a number >= 0")
        try check((routerAuxLossCoef ?? 0) >= 0 && (routerAuxLossCoef ?? 0).isFinite, "router_aux_loss_coef", "\(routerAuxLossCoef ?? 0)", "a number >= 0")
        try check((1...1024).contains(numIterations), "num_iterations", "\(numIterations)", "1 to 1024")
        try check(rewardTimeout > 0 && rewardTimeout.isFinite, "reward_timeout", "\(rewardTimeout)", "a positive number of seconds")
        try check(!rewardFunctions.isEmpty || !rewardCommands.isEmpty, "reward_function", "none",
                  "at least one --reward-function (\(BuiltInRewards.names.joined(separator: ", "))) or --reward-command")
        for spec in rewardFunctions {
            do { _ = try BuiltInRewards.named(spec, maxCompletionLength: maxCompletionLength) } catch {
                throw Error.invalid(key: "reward_function", source: source("reward_function"), found: spec, expected: "\(error)")
            }
        }
        let count = rewardFunctions.count + rewardCommands.count
        try check(rewardWeights.isEmpty || rewardWeights.count == count, "reward_weights", "\(rewardWeights.count) weights",
                  "one per reward (\(count): the --reward-function ones first, then the --reward-command ones)")
    }

    /// The GRPO settings of the grpo options.
    public var grpoSettings: GRPOSettings {
        var s = GRPOSettings()
        s.numGenerations = numGenerations; s.maxCompletionLength = maxCompletionLength
        s.temperature = Float(temperature); s.topP = Float(topP); s.topK = topK
        s.beta = beta; s.epsilon = epsilon; s.epsilonHigh = epsilonHigh; s.numIterations = numIterations
        s.loss = GRPOObjective.Loss(rawValue: lossType) ?? .dapo
        s.scaleRewards = GRPOObjective.RewardScaling(rawValue: scaleRewards) ?? .group
        s.maskTruncatedCompletions = maskTruncatedCompletions
        s.biasCorrectedKL = useBiasCorrectionKL
        s.rewardWeights = rewardWeights.isEmpty ? nil : rewardWeights
        s.seed = trainer.seed
        return s
    }

    /// The LoRA hyper-parameters of the lora_* options.
    public var loraConfig: LoRAConfig {
        LoRAConfig(rank: loraR, alpha: loraAlpha, dropout: loraDropout, targets: loraTargets, useRSLoRA: useRSLoRA)
    }
}
