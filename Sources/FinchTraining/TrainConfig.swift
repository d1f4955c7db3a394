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
    public var method = "sft"
    public var model = ""
    public var data = ""
    public var evalData: String?
    public var output = ""
    /// Dataset format: detected from the fields unless given (text, prompt_completion, messages, preference).
    public var format: String?
    public var maxLength = 1024
    public var beta = 0.1
    public var lossType = "sigmoid"
    public var labelSmoothing = 0.0
    public var simpoGamma = 0.5
    public var cpoAlpha = 1.0
    public var loraR = 16
    public var loraAlpha: Float = 32
    public var loraDropout: Float = 0
    public var loraTargets = LoRAConfig.allProjections
    public var useRSLoRA = false
    public var full = false
    public var adapter: String?
    public var packing = false
    /// Recompute each layer in backward instead of keeping its activations (HF's gradient_checkpointing).
    public var gradientCheckpointing = false
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
    public var generateDuringEval = 0
    public var resume = false
    public var overwrite = false
    /// Data parallel runs: seconds a collective may wait for the other ranks before the job stops.
    public var collectiveTimeout = 300.0
    public var trainer = TrainerSettings()

    /// The methods of `ObjectiveRegistry`, by name.
    public static var methods: [String] { ObjectiveRegistry.methods.map(\.name) }

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
        if method == "dpo" && labelSmoothing != 0 && lossType != "robust" {
            throw Error.invalid(key: "label_smoothing", source: source("label_smoothing"), found: "\(labelSmoothing) with loss_type \(lossType)",
                                expected: "loss_type robust (TRL 1.x ignores label smoothing for sigmoid, ipo and hinge)")
        }
        if !(0..<1).contains(loraDropout) { throw Error.invalid(key: "lora_dropout", source: source("lora_dropout"), found: "\(loraDropout)", expected: "a number in [0, 1)") }
    }

    public var loraConfig: LoRAConfig {
        LoRAConfig(rank: loraR, alpha: loraAlpha, dropout: loraDropout, targets: loraTargets, useRSLoRA: useRSLoRA)
    }
}
