import Foundation
import FinchKernels
import FinchModels

/// One option of `finch train`, declared once: its key (snake_case in YAML, kebab-case as a
/// flag), the kind of value, the property it sets, its default (read from `TrainConfig()`) and
/// what it means. Flags, YAML files, `finch train --help` and README's table all come from
/// `TrainConfig.options`.
public struct TrainOption: Sendable {
    /// The type of value an option takes, which decides its parsing and help syntax.
    public enum Kind: Sendable, Equatable {
        /// true when given as a flag; `key: true` or `false` in YAML.
        case flag
        case text, integer, number
        case choice([String])
        /// Comma-separated names among these.
        case list([String])
        /// Text that may be given several times (each flag, or each item of a YAML list, adds one).
        case repeated
    }

    /// snake_case name, as in YAML (`max_length`).
    public let key: String
    /// The value it takes.
    public let kind: Kind
    /// One-line meaning, shown in `--help` and README's table.
    public let help: String

    init(key: String, kind: Kind, help: String, defaultValue: String?, required: Bool = false,
         apply: @escaping @Sendable (inout TrainConfig, String, String) throws -> Void) {
        self.key = key; self.kind = kind; self.help = help; self.defaultValue = defaultValue; self.required = required; self.apply = apply
    }
    /// The default as text, or nil when there is none.
    public let defaultValue: String?
    /// A run must be given it (model, data, output).
    public var required = false
    let apply: @Sendable (inout TrainConfig, String, String) throws -> Void

    /// `--max-length`.
    public var flag: String { "--" + key.replacingOccurrences(of: "_", with: "-") }

    /// What the value looks like in help: `<int>`, `<number>`, `sft|orpo|...`; empty for a flag.
    public var valueSyntax: String {
        switch kind {
        case .flag: return ""
        case .text: return "<\(key.hasSuffix("data") || ["model", "output", "adapter"].contains(key) ? "path" : "text")>"
        case .integer: return "<int>"
        case .number: return "<number>"
        case let .choice(values): return values.joined(separator: "|")
        case .list: return "<names>"
        case .repeated: return "<text>..."
        }
    }

    /// Parses `value` (from `source`, for errors) into `config`.
    package func set(_ value: String, in config: inout TrainConfig, source: String) throws {
        try apply(&config, value, source)
    }

    // MARK: Declaring options by the type of their property

    static func invalid(_ key: String, _ source: String, _ found: String, _ expected: String) -> TrainConfig.Error {
        .invalid(key: key, source: source, found: found, expected: expected)
    }

    static func text(_ key: String, _ path: WritableKeyPath<TrainConfig, String> & Sendable, _ help: String, required: Bool = false) -> TrainOption {
        TrainOption(key: key, kind: .text, help: help, defaultValue: required ? nil : TrainConfig()[keyPath: path], required: required) { c, v, _ in
            c[keyPath: path] = v
        }
    }

    static func optionalText(_ key: String, _ path: WritableKeyPath<TrainConfig, String?> & Sendable, _ help: String) -> TrainOption {
        TrainOption(key: key, kind: .text, help: help, defaultValue: nil) { c, v, _ in c[keyPath: path] = v }
    }

    static func integer<T: FixedWidthInteger & Sendable>(_ key: String, _ path: WritableKeyPath<TrainConfig, T> & Sendable, _ help: String) -> TrainOption {
        TrainOption(key: key, kind: .integer, help: help, defaultValue: "\(TrainConfig()[keyPath: path])") { c, v, source in
            guard let i = Int(v) else { throw invalid(key, source, v, "a whole number") }
            c[keyPath: path] = T(truncatingIfNeeded: i)
        }
    }

    static func number<T: BinaryFloatingPoint & Sendable>(_ key: String, _ path: WritableKeyPath<TrainConfig, T> & Sendable, _ help: String) -> TrainOption {
        TrainOption(key: key, kind: .number, help: help, defaultValue: "\(Double(TrainConfig()[keyPath: path]))") { c, v, source in
            guard let d = Double(v), d.isFinite else { throw invalid(key, source, v, "a number") }
            c[keyPath: path] = T(d)
        }
    }

    /// The values of a repeated option, one per line of `value`.
    static func repeated(_ key: String, _ path: WritableKeyPath<TrainConfig, [String]> & Sendable, _ help: String) -> TrainOption {
        TrainOption(key: key, kind: .repeated, help: help, defaultValue: nil) { c, v, _ in
            c[keyPath: path] = v.split(separator: "\n").map(String.init).filter { !$0.isEmpty }
        }
    }

    static func flag(_ key: String, _ path: WritableKeyPath<TrainConfig, Bool> & Sendable, _ help: String) -> TrainOption {
        TrainOption(key: key, kind: .flag, help: help, defaultValue: "\(TrainConfig()[keyPath: path])") { c, v, source in
            switch v.lowercased() {
            case "true", "yes", "1", "on": c[keyPath: path] = true
            case "false", "no", "0", "off": c[keyPath: path] = false
            default: throw invalid(key, source, v, "true or false")
            }
        }
    }

    static func choice<T: RawRepresentable & CaseIterable & Sendable>(_ key: String, _ path: WritableKeyPath<TrainConfig, T> & Sendable, _ help: String) -> TrainOption
    where T.RawValue == String {
        let allowed = T.allCases.map(\.rawValue)
        return TrainOption(key: key, kind: .choice(allowed), help: help, defaultValue: TrainConfig()[keyPath: path].rawValue) { c, v, source in
            guard let value = T(rawValue: v) else { throw invalid(key, source, v, "one of \(allowed.joined(separator: ", "))") }
            c[keyPath: path] = value
        }
    }

    static func choice(_ key: String, _ path: WritableKeyPath<TrainConfig, String> & Sendable, among allowed: [String], _ help: String) -> TrainOption {
        TrainOption(key: key, kind: .choice(allowed), help: help, defaultValue: TrainConfig()[keyPath: path]) { c, v, source in
            guard allowed.contains(v) else { throw invalid(key, source, v, "one of \(allowed.joined(separator: ", "))") }
            c[keyPath: path] = v
        }
    }
}

extension TrainConfig {
    /// Every option of `finch train`, in the order help lists them.
    public static let options: [TrainOption] = [
        .choice("method", \.method, among: methods, "The objective."),
        .text("model", \.model, "An HF model folder, a .gguf file, or a repo id in the Hugging Face cache.", required: true),
        .optionalText("revision", \.revision, "The branch, tag or commit of a --model given as a repo id (default: main)."),
        .text("data", \.data, "Training data: .jsonl, .json or .csv; several files mixed with weights: a.jsonl:2,b.jsonl:0.5.", required: true),
        .optionalText("eval_data", \.evalData, "Held-out data, evaluated every --eval-steps."),
        .text("output", \.output, "The run folder (adapter, metrics.jsonl, run.json, checkpoints).", required: true),
        TrainOption(key: "format", kind: .choice(dataFormats), help: "The data's format (default: detected from its fields).", defaultValue: nil) { c, v, source in
            guard dataFormats.contains(v) else { throw TrainOption.invalid("format", source, v, "one of \(dataFormats.joined(separator: ", "))") }
            c.format = v
        },
        TrainOption(key: "field", kind: .text, help: "Read a field under another name, comma-separated name=source pairs (prompt=question,completion=answer).",
                    defaultValue: nil) { c, v, _ in
            c.fieldMapping = v.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        },
        .optionalText("tools", \.tools, "A JSON file of tool schemas for the chat template of conversations whose rows have no tools field."),
        .flag("skip_bad_rows", \.skipBadRows, "Leave out (and count) rows the data format cannot read, instead of stopping."),
        .number("validation_split", \.validationSplit, "Hold out this share of the training rows for evaluation (instead of --eval-data)."),
        .integer("max_length", \.maxLength, "Tokens per row; longer rows are truncated."),
        .number("beta", \.beta, "ORPO / DPO / CPO / SimPO / KTO beta; GRPO's KL weight (GRPO's default: 0)."),
        .choice("loss_type", \.lossType, among: PreferenceLoss.DPOKind.allCases.map(\.rawValue) + KTOObjective.Loss.allCases.map(\.rawValue)
                    + GRPOObjective.Loss.allCases.map(\.rawValue),
                "DPO's loss (sigmoid, ipo, hinge, robust), KTO's (kto, apo_zero_unpaired; the default means kto) or GRPO's (grpo, bnpo, dr_grpo, dapo; the default means dapo)."),
        .integer("num_generations", \.numGenerations, "GRPO: completions sampled per prompt (at least 2)."),
        .integer("max_completion_length", \.maxCompletionLength, "GRPO: most tokens per completion."),
        .number("temperature", \.temperature, "GRPO: sampling temperature (log-probabilities are taken at it too)."),
        .number("top_p", \.topP, "GRPO: nucleus sampling (1: off)."),
        .integer("top_k", \.topK, "GRPO: top-k sampling (0: off)."),
        .number("epsilon", \.epsilon, "GRPO: the ratio is clipped below at 1 - epsilon."),
        TrainOption(key: "epsilon_high", kind: .number, help: "GRPO: the ratio is clipped above at 1 + epsilon_high (default: epsilon).",
                    defaultValue: nil) { c, v, source in
            guard let d = Double(v), d.isFinite else { throw TrainOption.invalid("epsilon_high", source, v, "a number") }
            c.epsilonHigh = d
        },
        .integer("num_iterations", \.numIterations, "GRPO: optimizer steps on each batch of completions (ratios against the sampling policy)."),
        .choice("scale_rewards", \.scaleRewards, among: GRPOObjective.RewardScaling.allCases.map(\.rawValue),
                "GRPO: divide advantages by the std of the prompt's group, of the batch, or not at all."),
        .flag("mask_truncated_completions", \.maskTruncatedCompletions, "GRPO: completions cut at the max length take no part in the loss."),
        .flag("use_bias_correction_kl", \.useBiasCorrectionKL,
              "GRPO: multiply the KL term by the importance ratio (TRL's default; =false for the plain k3 estimate)."),
        .repeated("reward_function", \.rewardFunctions,
                  "GRPO: a built-in reward, repeatable: exact_match[:column], format[:regex], length_penalty[:tokens]."),
        .repeated("reward_command", \.rewardCommands,
                  "GRPO: a shell command that reads one JSON object per completion and prints one number per line; repeatable."),
        TrainOption(key: "reward_weights", kind: .text, help: "GRPO: comma-separated weights, the reward functions first, then the commands (default: 1 each).",
                    defaultValue: nil) { c, v, source in
            c.rewardWeights = try v.split(separator: ",").map { item in
                let text = item.trimmingCharacters(in: .whitespaces)
                guard let d = Double(text), d.isFinite else { throw TrainOption.invalid("reward_weights", source, text, "a number") }
                return d
            }
        },
        .number("reward_timeout", \.rewardTimeout, "GRPO: seconds a reward command may take per batch."),
        .number("desirable_weight", \.desirableWeight, "KTO's weight on desirable examples."),
        .number("undesirable_weight", \.undesirableWeight, "KTO's weight on undesirable examples."),
        .number("label_smoothing", \.labelSmoothing, "DPO (robust), SimPO and CPO label smoothing."),
        .number("simpo_gamma", \.simpoGamma, "SimPO's target reward margin."),
        .number("cpo_alpha", \.cpoAlpha, "CPO / SimPO weight of the NLL term."),
        .integer("lora_r", \.loraR, "LoRA rank."),
        .number("lora_alpha", \.loraAlpha, "LoRA alpha (scale alpha / r)."),
        .number("lora_dropout", \.loraDropout, "LoRA dropout, in [0, 1)."),
        TrainOption(key: "lora_targets", kind: .list(LoRAConfig.targetNames), help: "The projections that get adapters, comma-separated (Phi-3's joined modules: qkv_proj, gate_up_proj; a mixture of experts' experts: experts.gate_up_proj, experts.down_proj).",
                    defaultValue: LoRAConfig.allProjections.joined(separator: ",")) { c, v, source in
            let list = v.split(whereSeparator: { $0 == "," || $0 == " " || $0 == "[" || $0 == "]" }).map(String.init)
            if let bad = list.first(where: { !LoRAConfig.targetNames.contains($0) }) {
                throw TrainOption.invalid("lora_targets", source, bad, "names among \(LoRAConfig.targetNames.joined(separator: ", "))")
            }
            c.loraTargets = list
        },
        .flag("use_rslora", \.useRSLoRA, "rsLoRA: scale by alpha / sqrt(r)."),
        .flag("full", \.full, "Train every weight instead of LoRA adapters."),
        .optionalText("adapter", \.adapter, "Start from an existing PEFT adapter."),
        .flag("packing", \.packing, "SFT: pack sequences end to end into rows of --max-length (attention stays within each)."),
        TrainOption(key: "router_aux_loss_coef", kind: .number,
                    help: "Mixture of experts: weight of the load-balancing loss (default, as TRL: the config's router_aux_loss_coef; for orpo, cpo and simpo only where the config sets output_router_logits; 0 turns it off).",
                    defaultValue: nil) { c, v, source in
            guard let d = Double(v), d.isFinite, d >= 0 else { throw TrainOption.invalid("router_aux_loss_coef", source, v, "a number >= 0") }
            c.routerAuxLossCoef = d
        },
        .flag("gradient_checkpointing", \.gradientCheckpointing,
              "Keep only each layer's input and recompute the layer in backward: far less memory, one more forward per step."),
        .flag("keep_quantized", \.keepQuantized,
              "Keep a quantized (GGUF) base quantized in memory instead of an f32 copy: less memory, slower products."),
        .flag("allow_nonfinite", \.allowNonFinite, "Load a model whose weights hold NaN or infinity (refused by default)."),
        .choice("nan_policy", \.nanPolicy,
                "A step whose loss or gradient is NaN or infinite: stop (naming the step) or skip-step (no update; stops after 10 in a row)."),
        .choice("precision", \.precision,
                "Precision of the base model's products: auto (bf16 where the CPU computes it natively, as TRL's bf16=True; else fp32), fp32 or bf16."),
        .flag("chat_template", \.chatTemplate, "Render plain-text prompts as a user turn with the chat template."),
        .integer("generate_during_eval", \.generateDuringEval, "Sampled completions of N eval prompts per evaluation."),
        TrainOption(key: "report_to", kind: .list(["jsonl", "tensorboard", "none"]),
                    help: "Where metrics go, comma-separated: jsonl (metrics.jsonl and metrics.svg), tensorboard (event files in OUTPUT/tensorboard), none.",
                    defaultValue: "jsonl") { c, v, source in
            let list = v.split(whereSeparator: { $0 == "," || $0 == " " || $0 == "[" || $0 == "]" }).map(String.init)
            if let bad = list.first(where: { !["jsonl", "tensorboard", "none"].contains($0) }) {
                throw TrainOption.invalid("report_to", source, bad, "jsonl, tensorboard or none")
            }
            c.reportTo = list.contains("none") ? [] : list
        },
        .flag("resume", \.resume, "Continue from the newest checkpoint in --output."),
        .flag("overwrite", \.overwrite, "Replace an existing run in --output."),
        .integer("batch_size", \.trainer.batchSize, "Examples per micro-batch (pairs for preference methods)."),
        .integer("grad_accum", \.trainer.gradAccum, "Micro-batches per optimizer step (exact accumulation)."),
        .integer("epochs", \.trainer.epochs, "Passes over the data."),
        .integer("max_steps", \.trainer.maxSteps, "Stop after this many optimizer steps (0: run the epochs)."),
        .number("lr", \.trainer.learningRate, "Peak learning rate."),
        .choice("optimizer", \.trainer.optimizer, "The optimizer."),
        .number("weight_decay", \.trainer.weightDecay, "Decoupled weight decay."),
        .choice("lr_scheduler", \.trainer.scheduler, "The learning-rate schedule after warm-up."),
        .integer("warmup_steps", \.trainer.warmupSteps, "Linear warm-up steps."),
        .number("max_grad_norm", \.trainer.maxGradNorm, "Gradient clipping by global norm; 0 turns it off."),
        .integer("seed", \.trainer.seed, "Seed of LoRA initialisation, shuffling, dropout and sampling."),
        .integer("logging_steps", \.trainer.loggingSteps, "Log every N steps."),
        .integer("eval_steps", \.trainer.evalSteps, "Evaluate every N steps (0: at the end only)."),
        .integer("save_steps", \.trainer.saveSteps, "Checkpoint every N steps (0: at the end only)."),
        .flag("group_by_length", \.trainer.groupByLength, "Batch rows of similar length together."),
        .number("collective_timeout", \.collectiveTimeout,
                "Under mpirun: seconds a rank waits for the others in a collective before the job stops."),
    ]

    /// The data formats `format` names.
    public static let dataFormats = TrainingData.Format.allCases.map(\.rawValue)

    /// Every key, in snake_case.
    public static var keys: [String] { options.map(\.key) }

    /// The options as help text: one per line, flag, value and default, then what it means.
    public static var optionsHelp: String {
        options.map { option in
            var head = "  \(option.flag)"
            if !option.valueSyntax.isEmpty { head += " \(option.valueSyntax)" }
            if let value = option.defaultValue, option.kind != .flag { head += " (default: \(value))" }
            return head + "\n      " + option.help
        }.joined(separator: "\n")
    }

    /// The options as a Markdown table (README's).
    public static var optionsMarkdown: String {
        (["| flag | value | default | meaning |", "|---|---|---|---|"] + options.map { option in
            let value = option.valueSyntax.isEmpty ? "" : "`" + option.valueSyntax.replacingOccurrences(of: "|", with: "\\|") + "`"
            let defaultValue = option.required ? "required" : option.kind == .flag ? (option.defaultValue == "true" ? "on" : "off") : option.defaultValue.map { "`\($0)`" } ?? ""
            return "| `\(option.flag)` | \(value) | \(defaultValue) | \(option.help) |"
        }).joined(separator: "\n")
    }
}
