import ArgumentParser
import Finch
import Foundation
import Yams

struct TrainCommand: ParsableCommand {
    // The options of a run are declared once, in `TrainConfig.options` (FinchTraining/TrainOptions.swift):
    // flags, YAML keys, this help and README's table all come from there.
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Fine-tune a model with SFT, ORPO, DPO, SimPO, CPO, KTO or GRPO (LoRA or full).",
        usage: "finch train [--config <file>] --model <path> --data <path> --output <path> [<option> ...]",
        discussion: """
            Every option can also be given in a YAML file (--config), keys in snake_case (max_length: 512); flags win.

            OPTIONS OF A RUN:
            \(TrainConfig.optionsHelp)
            """)

    @Option(help: "A YAML file of options.") var config: String?
    @Argument(parsing: .allUnrecognized, help: .hidden) var arguments: [String] = []

    /// The run's flags as (snake_case key, value): `--lr 1e-4`, `--lr=1e-4`, and `--packing` for a
    /// flag (`--packing=false` turns it off).
    func flagValues() throws -> [String: String] {
        let byFlag = Dictionary(uniqueKeysWithValues: TrainConfig.options.map { ($0.flag, $0) })
        var values: [String: String] = [:], i = 0
        while i < arguments.count {
            let argument = arguments[i]
            i += 1
            let parts = argument.split(separator: "=", maxSplits: 1).map(String.init)
            guard let option = byFlag[parts[0]] else {
                throw TrainConfig.Error.unknown(key: argument, source: "the command line", known: TrainConfig.options.map(\.flag))
            }
            var value: String
            if parts.count == 2 {
                value = parts[1]
            } else if option.kind == .flag {
                value = "true"
            } else {
                guard i < arguments.count else {
                    throw TrainConfig.Error.invalid(key: option.key, source: option.flag, found: "nothing", expected: "a value (\(option.valueSyntax))")
                }
                value = arguments[i]
                i += 1
            }
            // A repeated option keeps every value, one per line.
            if option.kind == .repeated, let earlier = values[option.key] { value = earlier + "\n" + value }
            values[option.key] = value
        }
        return values
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
            case let .sequence(list):
                let repeated = TrainConfig.options.first { $0.key == name }?.kind == .repeated
                values[name] = try list.map { try scalar($0, name) }.joined(separator: repeated ? "\n" : ",")
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
            for (key, value) in try flagValues() {
                values[key] = value
                sources[key] = "--" + key.replacingOccurrences(of: "_", with: "-")
            }
            let trainConfig = try TrainConfig(values: values, sources: sources)
            // Under mpirun: one rank of a data parallel job (rank 0 prints and writes); else this process alone.
            let group = try ProcessGroup.launched(timeout: trainConfig.collectiveTimeout)
            if group.isRoot && group.size > 1 { print("data parallel: \(group.size) ranks, \(Parallel.coreCount) threads each on this machine") }
            GEMM.reportBackend()
            let progress = ProgressReporter()
            progress.every = max(trainConfig.trainer.loggingSteps, 1)
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
    /// Not on a terminal: a line every this many steps (`--logging-steps`), and the last.
    var every = 1

    func report(_ event: TrainingRun.Event) {
        switch event {
        case let .prepared(train, eval, totalSteps, resumedAt):
            total = totalSteps
            firstStep = resumedAt ?? 0
            start = MonotonicClock.now()
            print("data: \(train.rows) rows, \(train.tokens) tokens, \(train.truncated) truncated, \(train.dropped) dropped"
                  + (train.skipped > 0 ? ", \(train.skipped) skipped as unreadable" : "")
                  + (eval.map { "; eval: \($0.rows) rows, \($0.truncated) truncated, \($0.dropped) dropped" + ($0.skipped > 0 ? ", \($0.skipped) skipped" : "") } ?? ""))
            for reason in train.skippedReasons + (eval?.skippedReasons ?? []) { print("  skipped: \(reason)") }
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
            if !isTerminal && log.step % every != 0 && log.step != total { return }
            let loss = log.metrics["loss"] ?? .nan
            let speed = log.metrics["tokens_per_second"] ?? 0
            var text = String(format: "step %d/%d  loss %.4f", log.step, total, loss)
            // GRPO: the mean reward of the step's completions, and the time spent sampling them.
            if let reward = log.metrics["reward"] { text += String(format: "  reward %.3f", reward) }
            text += String(format: "  %.0f tok/s  ETA %@", speed, Self.duration(eta))
            if let generation = log.metrics["time/generation"] {
                text += String(format: "  (generation %.1f s, rewards %.1f s, train %.1f s)", generation, log.metrics["time/rewards"] ?? 0,
                               max(log.seconds - generation - (log.metrics["time/rewards"] ?? 0), 0))
            }
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
