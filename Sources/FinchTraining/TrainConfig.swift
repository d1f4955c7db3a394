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

    public static let methods = ["sft", "orpo", "dpo", "simpo", "cpo"]

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

    /// Every key, in snake_case.
    public static let keys = ["method", "model", "data", "eval_data", "output", "format", "max_length", "beta", "loss_type",
                              "label_smoothing", "simpo_gamma", "cpo_alpha", "lora_r", "lora_alpha", "lora_dropout", "lora_targets",
                              "use_rslora", "full", "adapter", "packing", "gradient_checkpointing", "keep_quantized", "allow_nonfinite", "nan_policy", "precision", "chat_template", "generate_during_eval", "resume", "overwrite",
                              "batch_size", "grad_accum", "epochs", "max_steps", "lr", "optimizer", "weight_decay",
                              "lr_scheduler", "warmup_steps", "max_grad_norm", "seed", "logging_steps", "eval_steps",
                              "save_steps", "group_by_length", "collective_timeout"]

    public init() {}

    /// Builds a config from string values (YAML scalars or flag arguments); `sources` names where
    /// each came from ("--lr", "train.yaml") for error messages.
    public init(values: [String: String], sources: [String: String] = [:]) throws {
        for key in values.keys where !Self.keys.contains(key) {
            throw Error.unknown(key: key, source: sources[key] ?? "options", known: Self.keys)
        }
        func source(_ key: String) -> String { sources[key] ?? "--\(key.replacingOccurrences(of: "_", with: "-"))" }
        func string(_ key: String) -> String? { values[key] }
        func int(_ key: String) throws -> Int? {
            guard let v = values[key] else { return nil }
            guard let i = Int(v) else { throw Error.invalid(key: key, source: source(key), found: v, expected: "a whole number") }
            return i
        }
        func double(_ key: String) throws -> Double? {
            guard let v = values[key] else { return nil }
            guard let d = Double(v), d.isFinite else { throw Error.invalid(key: key, source: source(key), found: v, expected: "a number") }
            return d
        }
        func bool(_ key: String) throws -> Bool? {
            guard let v = values[key]?.lowercased() else { return nil }
            switch v {
            case "true", "yes", "1", "on": return true
            case "false", "no", "0", "off": return false
            default: throw Error.invalid(key: key, source: source(key), found: v, expected: "true or false")
            }
        }
        func choice(_ key: String, _ allowed: [String]) throws -> String? {
            guard let v = values[key] else { return nil }
            guard allowed.contains(v) else { throw Error.invalid(key: key, source: source(key), found: v, expected: "one of \(allowed.joined(separator: ", "))") }
            return v
        }

        method = try choice("method", Self.methods) ?? method
        guard let model = string("model") else { throw Error.missing("model") }
        guard let data = string("data") else { throw Error.missing("data") }
        guard let output = string("output") else { throw Error.missing("output") }
        self.model = model; self.data = data; self.output = output
        evalData = string("eval_data")
        format = try choice("format", ["text", "prompt_completion", "messages", "preference"])
        maxLength = try int("max_length") ?? maxLength
        beta = try double("beta") ?? beta
        lossType = try choice("loss_type", PreferenceLoss.DPOKind.allCases.map(\.rawValue)) ?? lossType
        labelSmoothing = try double("label_smoothing") ?? labelSmoothing
        simpoGamma = try double("simpo_gamma") ?? simpoGamma
        cpoAlpha = try double("cpo_alpha") ?? cpoAlpha
        loraR = try int("lora_r") ?? loraR
        loraAlpha = Float(try double("lora_alpha") ?? Double(loraAlpha))
        loraDropout = Float(try double("lora_dropout") ?? Double(loraDropout))
        if let targets = string("lora_targets") {
            let list = targets.split(whereSeparator: { $0 == "," || $0 == " " || $0 == "[" || $0 == "]" }).map(String.init)
            if let bad = list.first(where: { !LoRAConfig.allProjections.contains($0) }) {
                throw Error.invalid(key: "lora_targets", source: source("lora_targets"), found: bad,
                                    expected: "names among \(LoRAConfig.allProjections.joined(separator: ", "))")
            }
            loraTargets = list
        }
        useRSLoRA = try bool("use_rslora") ?? useRSLoRA
        full = try bool("full") ?? full
        adapter = string("adapter")
        packing = try bool("packing") ?? packing
        gradientCheckpointing = try bool("gradient_checkpointing") ?? gradientCheckpointing
        keepQuantized = try bool("keep_quantized") ?? keepQuantized
        allowNonFinite = try bool("allow_nonfinite") ?? allowNonFinite
        nanPolicy = try choice("nan_policy", NaNPolicy.allCases.map(\.rawValue)).flatMap(NaNPolicy.init(rawValue:)) ?? nanPolicy
        precision = try choice("precision", PrecisionChoice.allCases.map(\.rawValue)).flatMap(PrecisionChoice.init(rawValue:)) ?? precision
        chatTemplate = try bool("chat_template") ?? chatTemplate
        generateDuringEval = try int("generate_during_eval") ?? generateDuringEval
        resume = try bool("resume") ?? resume
        overwrite = try bool("overwrite") ?? overwrite
        collectiveTimeout = try double("collective_timeout") ?? collectiveTimeout
        if collectiveTimeout <= 0 {
            throw Error.invalid(key: "collective_timeout", source: source("collective_timeout"), found: "\(collectiveTimeout)", expected: "a positive number of seconds")
        }

        var t = TrainerSettings()
        t.batchSize = try int("batch_size") ?? t.batchSize
        t.gradAccum = try int("grad_accum") ?? t.gradAccum
        t.epochs = try int("epochs") ?? t.epochs
        t.maxSteps = try int("max_steps") ?? t.maxSteps
        t.learningRate = Float(try double("lr") ?? Double(t.learningRate))
        t.optimizer = OptimizerKind(rawValue: try choice("optimizer", OptimizerKind.allCases.map(\.rawValue)) ?? t.optimizer.rawValue)!
        t.weightDecay = Float(try double("weight_decay") ?? Double(t.weightDecay))
        t.scheduler = LRScheduleKind(rawValue: try choice("lr_scheduler", LRScheduleKind.allCases.map(\.rawValue)) ?? t.scheduler.rawValue)!
        t.warmupSteps = try int("warmup_steps") ?? t.warmupSteps
        t.maxGradNorm = Float(try double("max_grad_norm") ?? Double(t.maxGradNorm))
        if let seed = try int("seed") { t.seed = UInt64(truncatingIfNeeded: seed) }
        t.loggingSteps = try int("logging_steps") ?? t.loggingSteps
        t.evalSteps = try int("eval_steps") ?? t.evalSteps
        t.saveSteps = try int("save_steps") ?? t.saveSteps
        t.groupByLength = try bool("group_by_length") ?? t.groupByLength
        trainer = t

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
            throw Error.invalid(key: key, source: source(key), found: "\(try double(key) ?? value)", expected: "a finite number >= 0 (within float range)")
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

    /// The preference loss of a preference method (nil for SFT).
    public var preferenceLoss: PreferenceLoss? {
        switch method {
        case "orpo": return .orpo(beta: beta)
        case "dpo": return .dpo(kind: PreferenceLoss.DPOKind(rawValue: lossType) ?? .sigmoid, beta: beta, labelSmoothing: labelSmoothing)
        case "simpo": return .simpo(beta: beta, gamma: simpoGamma, alpha: cpoAlpha, labelSmoothing: labelSmoothing)
        case "cpo": return .cpo(beta: beta, alpha: cpoAlpha, labelSmoothing: labelSmoothing)
        default: return nil
        }
    }
}
