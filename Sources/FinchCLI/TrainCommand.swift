import ArgumentParser
import Finch
import Foundation
import Yams

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Fine-tune a model with SFT, ORPO, DPO, SimPO or CPO (LoRA or full).",
        discussion: "Every option can also be given in a YAML file (--config), keys in snake_case; flags win.")

    @Option(help: "A YAML file of options.") var config: String?
    @Option(help: "sft, orpo, dpo, simpo or cpo.") var method: String?
    @Option(help: "An HF model folder or a .gguf file.") var model: String?
    @Option(help: "Training data: .jsonl, .json or .csv.") var data: String?
    @Option(name: .customLong("eval-data"), help: "Held-out data, evaluated every --eval-steps.") var evalData: String?
    @Option(help: "The run folder (adapter, metrics.jsonl, run.json, checkpoints).") var output: String?
    @Option(help: "text, prompt_completion, messages or preference (default: detected).") var format: String?
    @Option(name: .customLong("max-length")) var maxLength: String?
    @Option(help: "ORPO / DPO / CPO / SimPO beta.") var beta: String?
    @Option(name: .customLong("loss-type"), help: "DPO: sigmoid, ipo, hinge or robust.") var lossType: String?
    @Option(name: .customLong("label-smoothing")) var labelSmoothing: String?
    @Option(name: .customLong("simpo-gamma")) var simpoGamma: String?
    @Option(name: .customLong("cpo-alpha")) var cpoAlpha: String?
    @Option(name: .customLong("batch-size")) var batchSize: String?
    @Option(name: .customLong("grad-accum")) var gradAccum: String?
    @Option(name: .customLong("max-steps")) var maxSteps: String?
    @Option var epochs: String?
    @Option var lr: String?
    @Option(help: "adamw or sgd.") var optimizer: String?
    @Option(name: .customLong("weight-decay")) var weightDecay: String?
    @Option(name: .customLong("lr-scheduler"), help: "constant, linear or cosine.") var lrScheduler: String?
    @Option(name: .customLong("warmup-steps")) var warmupSteps: String?
    @Option(name: .customLong("max-grad-norm"), help: "0 turns clipping off.") var maxGradNorm: String?
    @Option(name: .customLong("lora-r")) var loraR: String?
    @Option(name: .customLong("lora-alpha")) var loraAlpha: String?
    @Option(name: .customLong("lora-dropout")) var loraDropout: String?
    @Option(name: .customLong("lora-targets"), help: "Comma-separated: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj.")
    var loraTargets: String?
    @Flag(name: .customLong("use-rslora")) var useRSLoRA = false
    @Flag(help: "Train every weight instead of LoRA adapters.") var full = false
    @Option(help: "Start from an existing PEFT adapter.") var adapter: String?
    @Flag(help: "SFT: pack sequences end to end into rows of --max-length (attention stays within each).")
    var packing = false
    @Flag(name: .customLong("gradient-checkpointing"),
          help: "Keep only each layer's input and recompute the layer in backward: far less memory, one more forward per step.")
    var gradientCheckpointing = false
    @Flag(name: .customLong("keep-quantized"),
          help: "Keep a quantized (GGUF) base quantized in memory instead of an f32 copy: less memory, slower products.")
    var keepQuantized = false
    @Flag(name: .customLong("allow-nonfinite"), help: "Load a model whose weights hold NaN or infinity (refused by default).")
    var allowNonFinite = false
    @Option(name: .customLong("nan-policy"),
            help: "A step whose loss or gradient is NaN or infinite: stop (default, naming the step) or skip-step (no update; stops after 10 in a row).")
    var nanPolicy: String?
    @Option(help: "Precision of the base model's products: auto (bf16 where the CPU computes it natively, as TRL's bf16=True; else fp32), fp32 or bf16.")
    var precision: String?
    @Flag(name: .customLong("chat-template"), help: "Render plain-text prompts as a user turn with the chat template.")
    var chatTemplate = false
    @Option var seed: String?
    @Option(name: .customLong("save-steps")) var saveSteps: String?
    @Option(name: .customLong("eval-steps")) var evalSteps: String?
    @Option(name: .customLong("logging-steps")) var loggingSteps: String?
    @Option(name: .customLong("generate-during-eval"), help: "Sampled completions of N eval prompts per evaluation.")
    var generateDuringEval: String?
    @Option(name: .customLong("collective-timeout"),
            help: "Under mpirun: seconds a rank waits for the others in a collective before the job stops (default 300).")
    var collectiveTimeout: String?
    @Flag(help: "Continue from the newest checkpoint in --output.") var resume = false
    @Flag(help: "Replace an existing run in --output.") var overwrite = false

    func flagValues() -> [String: String] {
        let pairs: [(String, String?)] = [
            ("method", method), ("model", model), ("data", data), ("eval_data", evalData), ("output", output), ("format", format),
            ("max_length", maxLength), ("beta", beta), ("loss_type", lossType), ("label_smoothing", labelSmoothing),
            ("simpo_gamma", simpoGamma), ("cpo_alpha", cpoAlpha), ("batch_size", batchSize), ("grad_accum", gradAccum),
            ("max_steps", maxSteps), ("epochs", epochs), ("lr", lr), ("optimizer", optimizer), ("weight_decay", weightDecay),
            ("lr_scheduler", lrScheduler), ("warmup_steps", warmupSteps), ("max_grad_norm", maxGradNorm), ("lora_r", loraR),
            ("lora_alpha", loraAlpha), ("lora_dropout", loraDropout), ("lora_targets", loraTargets), ("adapter", adapter),
            ("seed", seed), ("save_steps", saveSteps), ("eval_steps", evalSteps), ("logging_steps", loggingSteps),
            ("generate_during_eval", generateDuringEval), ("collective_timeout", collectiveTimeout), ("precision", precision),
            ("use_rslora", useRSLoRA ? "true" : nil), ("full", full ? "true" : nil), ("packing", packing ? "true" : nil), ("gradient_checkpointing", gradientCheckpointing ? "true" : nil), ("keep_quantized", keepQuantized ? "true" : nil), ("allow_nonfinite", allowNonFinite ? "true" : nil), ("nan_policy", nanPolicy), ("chat_template", chatTemplate ? "true" : nil),
            ("resume", resume ? "true" : nil), ("overwrite", overwrite ? "true" : nil),
        ]
        return Dictionary(uniqueKeysWithValues: pairs.compactMap { key, value in value.map { (key, $0) } })
    }

    /// A config is a flat mapping: refuse, before parsing, the shapes that exhaust a YAML parser
    /// (nesting thousands deep overflows its recursive descent; aliases of aliases expand
    /// exponentially, the "billion laughs"), naming the line.
    static func checkYAMLShape(_ text: String, path: String) throws {
        let maxDepth = 32, maxAliases = 64
        var aliases = 0, flow = 0
        for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var quote: Character? = nil, previous: Character = " "
            let indent = line.prefix { $0 == " " || $0 == "\t" }.count
            var dashes = 0
            var rest = line.dropFirst(indent)
            while rest.hasPrefix("- ") || rest == "-" { dashes += 1; rest = rest.dropFirst(2).drop { $0 == " " } }
            for c in line {
                if let q = quote { if c == q { quote = nil }; previous = c; continue }
                switch c {
                case "\"", "'": quote = c
                case "[", "{": flow += 1
                case "]", "}": flow -= 1
                case "*" where previous == " " || previous == "[" || previous == "," || previous == ":": aliases += 1
                default: break
                }
                if c == "#" && (previous == " " || previous == "\t") { break }
                previous = c
                if flow > maxDepth { break }
            }
            if flow > maxDepth || dashes > maxDepth || indent > 4 * maxDepth {
                throw LoadError.malformed(path: path, field: "line \(number + 1)", found: "values nested more than \(maxDepth) deep",
                                          expected: "a mapping of option names to values")
            }
            if aliases > maxAliases {
                throw LoadError.malformed(path: path, field: "line \(number + 1)", found: "more than \(maxAliases) aliases (*name)",
                                          expected: "a mapping of option names to values")
            }
        }
    }

    /// YAML scalars and lists as strings, keys normalised to snake_case.
    static func yamlValues(_ path: String) throws -> [String: String] {
        guard FileManager.default.fileExists(atPath: path) else { throw LoadError.fileNotFound(path: path) }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw LoadError.unreadable(path: path, reason: "cannot read the file")
        }
        guard data.count <= 1 << 20 else {
            throw LoadError.malformed(path: path, field: "YAML", found: "\(data.count) bytes", expected: "a config of at most 1 MiB")
        }
        let text = try UTF8Validation.string(from: data, source: path)
        try checkYAMLShape(text, path: path)
        // The node tree, not Yams' constructed values: its constructor traps on a complex key
        // (`? [a, b]`), and a config needs names and scalars only.
        let root: Node?
        do { root = try Yams.compose(yaml: text) } catch {
            throw LoadError.malformed(path: path, field: "YAML", found: "\(error)".split(separator: "\n").first.map(String.init) ?? "invalid YAML",
                                      expected: "a mapping of option names to values")
        }
        func line(_ node: Node) -> String { node.mark.map { "line \($0.line)" } ?? "top level" }
        guard let root, case let .mapping(mapping) = root else {
            throw LoadError.malformed(path: path, field: "top level", found: root.map { _ in "a list or a single value" } ?? "nothing",
                                      expected: "a mapping of option names to values")
        }
        func scalar(_ node: Node, _ key: String) throws -> String {
            guard case let .scalar(s) = node else {
                throw LoadError.malformed(path: path, field: "\(line(node)): \(key)", found: "a nested list or mapping", expected: "a value, or a list of values")
            }
            return s.string
        }
        var values: [String: String] = [:]
        for (keyNode, valueNode) in mapping {
            guard case let .scalar(key) = keyNode else {
                throw LoadError.malformed(path: path, field: line(keyNode), found: "a key that is a list or mapping", expected: "option names as keys")
            }
            let name = key.string.replacingOccurrences(of: "-", with: "_")
            switch valueNode {
            case let .sequence(list): values[name] = try list.map { try scalar($0, name) }.joined(separator: ",")
            default: values[name] = try scalar(valueNode, name)
            }
        }
        return values
    }

    func run() throws {
        try runReportingErrors {
            var values: [String: String] = [:], sources: [String: String] = [:]
            if let config {
                values = try Self.yamlValues(config)
                for key in values.keys { sources[key] = config }
            }
            for (key, value) in flagValues() {
                values[key] = value
                sources[key] = "--" + key.replacingOccurrences(of: "_", with: "-")
            }
            let trainConfig = try TrainConfig(values: values, sources: sources)
            // Under mpirun: one rank of a data parallel job (rank 0 prints and writes); else this process alone.
            let group = try ProcessGroup.launched(timeout: trainConfig.collectiveTimeout)
            if group.isRoot && group.size > 1 { print("data parallel: \(group.size) ranks, \(Parallel.coreCount) threads each on this machine") }
            GEMM.reportBackend()
            let progress = ProgressReporter()
            try TrainingRun(config: trainConfig, group: group).run { progress.report($0) }
            group.finish()
        }
    }
}

/// A progress bar on a terminal; plain lines otherwise (logs, CI).
final class ProgressReporter {
    let isTerminal = isatty(STDOUT_FILENO) != 0
    var total = 0
    var start = MonotonicClock.now()
    var firstStep = 0

    func report(_ event: TrainingRun.Event) {
        switch event {
        case let .prepared(train, eval, totalSteps, resumedAt):
            total = totalSteps
            firstStep = resumedAt ?? 0
            start = MonotonicClock.now()
            print("data: \(train.rows) rows, \(train.tokens) tokens, \(train.truncated) truncated, \(train.dropped) dropped"
                  + (eval.map { "; eval: \($0.rows) rows, \($0.truncated) truncated, \($0.dropped) dropped" } ?? ""))
            if let resumedAt { print("resuming at step \(resumedAt)") }
        case let .precision(precision, reason, gemm):
            print("precision: \(precision.rawValue) (\(reason)); GEMM: \(gemm)")
        case let .step(log):
            let elapsed = MonotonicClock.now() - start
            let done = log.step - firstStep
            let eta = done > 0 ? elapsed / Double(done) * Double(total - log.step) : 0
            if let skipped = log.metrics["skipped_steps"] {
                print("step \(log.step)/\(total): the loss or gradient is not finite: skipped without updating (--nan-policy skip-step; \(Int(skipped)) skipped so far)")
                return
            }
            let loss = log.metrics["loss"] ?? .nan
            let speed = log.metrics["tokens_per_second"] ?? 0
            var text = String(format: "step %d/%d  loss %.4f  %.0f tok/s  ETA %@", log.step, total, loss, speed, Self.duration(eta))
            // Data parallel: the step's time in collectives (the all-reduce, and waiting for the slower rank).
            if log.collectiveSeconds > 0 { text += String(format: "  (%.2f of %.2f s in collectives)", log.collectiveSeconds, log.seconds) }
            if isTerminal {
                let width = 24, filled = total > 0 ? width * log.step / total : width
                let bar = String(repeating: "=", count: filled) + String(repeating: " ", count: width - filled)
                print("\r[\(bar)] \(text)", terminator: log.step == total ? "\n" : "")
                flushOutput()
            } else {
                print(text)
                flushOutput()   // logs show progress as it happens
            }
        case let .evaluation(step, metrics):
            if isTerminal { print("") }
            let shown = metrics.keys.sorted().map { String(format: "%@ %.4f", $0, metrics[$0]!) }.joined(separator: "  ")
            print("eval @ step \(step): \(shown)")
        case let .checkpoint(step, path):
            if isTerminal { print("") }
            print("checkpoint @ step \(step): \(path)")
        case let .finished(output):
            print("saved to \(output)")
        }
    }

    static func duration(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        return s >= 3600 ? "\(s / 3600)h\(s % 3600 / 60)m" : s >= 60 ? "\(s / 60)m\(s % 60)s" : "\(s)s"
    }
}
