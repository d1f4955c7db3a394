import Foundation
import FinchKernels
import FinchIO
import FinchTokenizers
import FinchModels
import FinchGeneration
import FinchDistributed

/// One `finch train` run: prepares model, tokenizer and data from a `TrainConfig`, trains,
/// logs metrics, evaluates, checkpoints, and writes the result into the output folder.
///
/// In a data parallel job every rank runs this with the same config; only rank 0 writes the
/// output folder and reports events, the others train their share and stay quiet.
public final class TrainingRun {
    /// What a run reports as it goes; only rank 0 reports.
    public enum Event {
        /// Data tokenized and model built: what truncation did, the steps to run, and the step resumed at.
        case prepared(train: TrainingData.Report, eval: TrainingData.Report?, totalSteps: Int, resumedAt: Int?)
        /// The precision chosen (`--precision`), why, and the GEMM backend that runs it.
        case precision(Precision, reason: String, gemm: String)
        /// An optimizer step finished.
        case step(StepLog)
        /// Evaluation metrics (without the `eval_` prefix metrics.jsonl gives them); step 0 is the baseline.
        case evaluation(step: Int, metrics: [String: Double])
        /// A resumable checkpoint was written at `path`.
        case checkpoint(step: Int, path: String)
        /// The result is saved in `output`.
        case finished(output: String)
    }

    /// The output folder does not suit the run: occupied without --overwrite, or nothing to --resume.
    public enum Error: Swift.Error, CustomStringConvertible {
        case outputExists(String)
        case nothingToResume(String)

        public var description: String {
            switch self {
            case let .outputExists(path): return "\(path) already holds a run; pass --overwrite to replace it or --resume to continue it"
            case let .nothingToResume(path): return "\(path) holds no checkpoint to resume from (the run stopped before its first save; start it again with --overwrite)"
            }
        }
    }

    /// The options this run was built from.
    public let config: TrainConfig
    /// The ranks of a data parallel job (`.single` for one process).
    public let group: ProcessGroup
    /// Built by `run`; nil before it.
    public private(set) var trainer: Trainer!
    /// The model's tokenizer, loaded by `run`; nil before it.
    public private(set) var tokenizer: Tokenizer!
    var files: ModelFiles!
    var evalExamples: [Example] = []
    var metricsHandle: FileHandle?
    /// The tool schemas of `--tools`, read once.
    var toolSchemas: JinjaValue?
    /// The TensorBoard event file (`--report-to tensorboard`), on rank 0.
    var tensorboard: TensorBoardWriter?
    /// `config.model` as a path: itself, or a repo id's snapshot in the Hugging Face cache.
    var modelPath = ""
    /// The precision of the base model's products, and why it was chosen.
    public private(set) var precision: (precision: Precision, reason: String) = (.fp32, "")

    /// Stores the config; nothing is read or written until `run`.
    public init(config: TrainConfig, group: ProcessGroup = .single) {
        self.config = config
        self.group = group
    }

    var output: String { config.output }
    func path(_ name: String) -> String { (output as NSString).appendingPathComponent(name) }

    /// Loads, trains to the end, and saves the result into `config.output`, calling `reportEvent`
    /// on rank 0 as things happen. Throws on bad data, a diverged step or a failed collective.
    public func run(onEvent reportEvent: (Event) -> Void) throws {
        func onEvent(_ event: Event) { if group.isRoot { reportEvent(event) } }
        if group.isRoot { try prepareOutput() }
        modelPath = try HubCache.resolve(config.model, revision: config.revision)
        files = try ModelFiles.open(modelPath, allowNonFinite: config.allowNonFinite)
        tokenizer = try Tokenizer.load(from: modelPath)
        try tokenizer.checkIDs(below: files.config.vocabSize, model: files.source)
        if let path = config.tools {
            guard let data = FileManager.default.contents(atPath: path) else { throw LoadError.fileNotFound(path: path) }
            do { toolSchemas = try JinjaValue(jsonText: try UTF8Validation.string(from: data, source: path)) } catch let error as JinjaJSONError {
                throw LoadError.malformed(path: path, field: "JSON", found: "\(error)", expected: "a JSON list of tool schemas")
            }
        }
        let format = config.format.flatMap(TrainingData.Format.init(rawValue:))
        var (train, trainReport) = try examples(config.data, format: format)
        if config.validationSplit > 0 {
            // A seeded share of the examples, the same on every rank and on resume.
            var order = Array(train.indices)
            var random = FinchRandom(seed: config.trainer.seed ^ 0x5EED_0F_5B11)
            order.shuffle(using: &random)
            let held = Set(order.prefix(max(1, Int((Double(train.count) * config.validationSplit).rounded()))))
            guard held.count < train.count else {
                throw TrainConfig.Error.invalid(key: "validation_split", source: "--validation-split", found: "\(config.validationSplit) of \(train.count) examples",
                                                expected: "a share that leaves examples to train on")
            }
            evalExamples = train.indices.filter { held.contains($0) }.map { train[$0] }
            train = train.indices.filter { !held.contains($0) }.map { train[$0] }
        }
        if config.packing {
            guard config.method == "sft" else {
                throw TrainConfig.Error.invalid(key: "packing", source: "--packing", found: "true with method \(config.method)", expected: "method sft")
            }
            train = TrainingData.pack(train, maxLength: config.maxLength)
        }
        var evalReport: TrainingData.Report?
        if let evalData = config.evalData {
            (evalExamples, evalReport) = try examples(evalData, format: format)
        }

        let tuning: FineTuning
        if config.full { tuning = .full } else if let adapter = config.adapter { tuning = .lora(try PEFTAdapter.config(directory: adapter)) } else { tuning = .lora(config.loraConfig) }
        precision = config.precision.resolved()
        let model = try Transformer(files: files, fineTuning: tuning, seed: config.trainer.seed,
                                    denseLimitBytes: config.keepQuantized ? 0 : Transformer.defaultDenseLimitBytes,
                                    precision: precision.precision)
        model.gradientCheckpointing = config.gradientCheckpointing
        if let moe = model.config.experts {
            // TRL 1.16: SFT, DPO, KTO and GRPO add the load-balancing loss at the config's coefficient
            // unless told 0; its ORPO and CPO (SimPO) trainers only where the config sets output_router_logits.
            let followsConfigFlag = ["orpo", "cpo", "simpo"].contains(config.method)
            model.routerAuxLossCoef = config.routerAuxLossCoef.map { Float($0) }
                ?? (followsConfigFlag && !moe.outputRouterLogits ? 0 : moe.routerAuxLossCoef)
        }
        if let adapter = config.adapter, !config.full { try PEFTAdapter.load(directory: adapter, into: model) }
        let padId = Int32(tokenizer.padTokenId ?? tokenizer.eosTokenId ?? 0)
        let chosenPrecision = precision.precision, modelFiles: ModelFiles = files
        let objective = try ObjectiveRegistry.method(named: config.method).objective(
            for: config, context: ObjectiveContext(padId: padId, frozenModel: { try Transformer(files: modelFiles, precision: chosenPrecision) },
                                                   tokenizer: tokenizer, eosTokenIds: Set([tokenizer.eosTokenId].compactMap { $0 } + files.config.eosTokenIds),
                                                   ranks: group.size))
        trainer = try Trainer(model: model, objective: objective, train: train, eval: evalExamples, settings: config.trainer, group: group)
        trainer.nanPolicy = config.nanPolicy

        var resumedAt: Int?
        if config.resume {
            // Rank 0 reads the checkpoint and hands it to the others: only its machine needs the run folder.
            if group.isRoot {
                guard let checkpoint = Checkpoint.latest(in: output) else { throw Error.nothingToResume(output) }
                try Checkpoint.restore(trainer, from: checkpoint)
            }
        }
        try trainer.synchroniseWithRoot()
        if config.resume { resumedAt = trainer.state.step }
        if group.isRoot {
            if config.reportTo.contains("jsonl") { try openMetrics(keepingStepsUpTo: resumedAt ?? 0) }
            if config.reportTo.contains("tensorboard") { tensorboard = try TensorBoardWriter(directory: path("tensorboard")) }
            try writeRunRecord(status: "running")
        }
        onEvent(.precision(precision.precision, reason: precision.reason, gemm: GEMM.description))
        onEvent(.prepared(train: trainReport, eval: evalReport, totalSteps: trainer.totalSteps, resumedAt: resumedAt))
        // A baseline before the first step, so the log shows what training changed.
        if resumedAt == nil && !evalExamples.isEmpty { try evaluate(step: 0, onEvent: onEvent) }

        let settings = config.trainer
        while !trainer.isFinished {
            let log = try trainer.step()
            if group.isRoot && settings.loggingSteps > 0 && (log.step % settings.loggingSteps == 0 || trainer.isFinished) {
                var line: [String: Any] = ["step": log.step, "epoch": log.epoch]
                for (key, value) in log.metrics { line[key] = value }
                try appendMetrics(line)
                // Under HF Trainer's names: train/loss, train/learning_rate, ...
                var scalars = Dictionary(uniqueKeysWithValues: log.metrics.map { ("train/" + $0.key, $0.value) })
                scalars["train/epoch"] = log.epoch
                try tensorboard?.add(scalars: scalars, step: log.step)
            }
            onEvent(.step(log))
            if settings.evalSteps > 0 && !evalExamples.isEmpty && (log.step % settings.evalSteps == 0 || trainer.isFinished) {
                try evaluate(step: log.step, onEvent: onEvent)
            }
            if group.isRoot && settings.saveSteps > 0 && log.step % settings.saveSteps == 0 && !trainer.isFinished {
                onEvent(.checkpoint(step: log.step, path: try Checkpoint.save(trainer, runDirectory: output)))
            }
            testFailureHooks(after: log.step)
        }
        if settings.evalSteps == 0 && !evalExamples.isEmpty { try evaluate(step: trainer.state.step, onEvent: onEvent) }
        if group.isRoot {
            try saveResult()
            try writeRunRecord(status: "finished")
            if config.reportTo.contains("jsonl") { try MetricsPlot.write(runDirectory: output) }
        }
        onEvent(.finished(output: output))
    }

    /// Test hooks: after step N die abruptly, as a killed process would (FINCH_TEST_CRASH_AFTER_STEP=N),
    /// or stop answering, as a hung one would (FINCH_TEST_HANG_AFTER_STEP=N); only on rank
    /// FINCH_TEST_FAILING_RANK when set.
    func testFailureHooks(after step: Int) {
        let env = ProcessInfo.processInfo.environment
        if let only = env["FINCH_TEST_FAILING_RANK"], Int(only) != group.rank { return }
        if let crash = env["FINCH_TEST_CRASH_AFTER_STEP"], Int(crash) == step { _exit(137) }
        if let hang = env["FINCH_TEST_HANG_AFTER_STEP"], Int(hang) == step { while true { sleep(1000) } }
    }

    func evaluate(step: Int, onEvent: (Event) -> Void) throws {
        let metrics = try trainer.evaluate()
        guard group.isRoot else { return }
        var line: [String: Any] = ["step": step]
        for (key, value) in metrics { line["eval_" + key] = value }
        try appendMetrics(line)
        try tensorboard?.add(scalars: Dictionary(uniqueKeysWithValues: metrics.map { ("eval/" + $0.key, $0.value) }), step: step)
        onEvent(.evaluation(step: step, metrics: metrics))
        if config.generateDuringEval > 0 { try writeGenerations(step: step) }
    }

    /// The examples of `--data`: one file, or several mixed by weight (`a.jsonl:2,b.jsonl`,
    /// `TrainingData.mix`), numbered in order.
    func examples(_ spec: String, format: TrainingData.Format?) throws -> ([Example], TrainingData.Report) {
        let parts = try TrainingData.dataFiles(spec)
        if parts.count == 1 && parts[0].weight == 1 { return try examples(file: parts[0].path, format: format) }
        var loaded: [(examples: [Example], weight: Double)] = [], report = TrainingData.Report()
        for part in parts {
            let (e, r) = try examples(file: part.path, format: format)
            loaded.append((e, part.weight))
            report.rows += r.rows; report.truncated += r.truncated; report.dropped += r.dropped
            report.skipped += r.skipped; report.skippedReasons += r.skippedReasons
        }
        let mixed = TrainingData.mix(loaded, seed: config.trainer.seed)
        report.tokens = mixed.reduce(0) { $0 + $1.fields.filter { $0.key.hasSuffix("input_ids") }.reduce(0) { $0 + $1.value.count } }
        return (mixed, report)
    }

    /// The examples of a data file: fields mapped, rows tokenized; unreadable rows skipped and
    /// counted with `--skip-bad-rows`.
    func examples(file path: String, format: TrainingData.Format?) throws -> ([Example], TrainingData.Report) {
        var skipped: [DataFile.Error]? = config.skipBadRows ? [] : nil
        let rows = try TrainingData.mapFields(DataFile.read(path, skipped: &skipped), config.fieldMapping, skipBadRows: config.skipBadRows)
        var (examples, report) = try TrainingData.examples(rows: rows, method: config.method, format: format, tokenizer: tokenizer,
                                                           maxLength: config.maxLength, chatPrompts: config.chatTemplate,
                                                           skipBadRows: config.skipBadRows, tools: toolSchemas)
        if let skipped, !skipped.isEmpty {
            // Every reason, in line order (the file's own errors and the rows' merged), the first few kept.
            func line(_ reason: String) -> Int { Int(reason.split(separator: ":").dropFirst().first ?? "") ?? Int.max }
            let reasons = (skipped.map { "\($0)" } + report.skippedReasons).sorted { line($0) < line($1) }
            report.rows += skipped.count
            report.skipped += skipped.count
            report.skippedReasons = Array(reasons.prefix(5))
        }
        guard !examples.isEmpty || !config.skipBadRows else {
            throw DataFile.Error.empty(path: path + " (every row was skipped; the first: \(report.skippedReasons.first ?? "none"))")
        }
        return (examples, report)
    }

    /// Sampled completions of the first eval prompts, one JSON line each, into generations.jsonl.
    func writeGenerations(step: Int) throws {
        let generator = Generator(model: trainer.model)
        let eos = Set([tokenizer.eosTokenId].compactMap { $0 } + files.config.eosTokenIds)
        for example in evalExamples.prefix(config.generateDuringEval) {
            let prompt = (example.fields["prompt_input_ids"] ?? promptPrefix(example)).map(Int.init)
            guard !prompt.isEmpty else { continue }
            let result = generator.generate(prompt: prompt, sampling: SamplingSettings(temperature: 0.7, topP: 0.9, seed: UInt64(step)),
                                            stop: StopRules(maxNewTokens: 128, eosTokenIds: eos))
            let record: [String: Any] = ["step": step, "example": example.id,
                                         "prompt": tokenizer.decode(prompt, skipSpecialTokens: false),
                                         "completion": tokenizer.decode(result.tokens, skipSpecialTokens: true)]
            try appendLine(record, to: path("generations.jsonl"))
            try tensorboard?.add(text: "**prompt:** \(record["prompt"]!)\n\n**completion:** \(record["completion"]!)",
                                 tag: "eval/generation_\(example.id)", step: step)
        }
    }

    /// The prompt of an SFT example: its leading tokens without labels.
    func promptPrefix(_ example: Example) -> [Int32] {
        let ids = example["input_ids"], labels = example["labels"]
        let n = labels.firstIndex { $0 >= 0 } ?? ids.count
        return Array(ids.prefix(n))
    }

    func prepareOutput() throws {
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        if fm.fileExists(atPath: output, isDirectory: &isDirectory) {
            let contents = (try? fm.contentsOfDirectory(atPath: output)) ?? []
            if !contents.isEmpty && !config.resume {
                guard config.overwrite else { throw Error.outputExists(output) }
                for name in contents { try fm.removeItem(atPath: path(name)) }
            }
        }
        do { try fm.createDirectory(atPath: output, withIntermediateDirectories: true) } catch {
            throw SaveError.unwritable(path: output, reason: error.localizedDescription)
        }
    }

    func openMetrics(keepingStepsUpTo step: Int) throws {
        let metrics = path("metrics.jsonl")
        // On resume, lines past the checkpoint are dropped: they will be logged again.
        var kept = ""
        if step > 0, let text = try? String(contentsOfFile: metrics, encoding: .utf8) {
            for line in text.split(separator: "\n") {
                if let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                   let s = object["step"] as? Int, s <= step { kept += line + "\n" }
            }
        }
        try kept.write(toFile: metrics, atomically: true, encoding: .utf8)
    }

    func appendMetrics(_ object: [String: Any]) throws {
        if config.reportTo.contains("jsonl") { try appendLine(object, to: path("metrics.jsonl")) }
    }

    func appendLine(_ object: [String: Any], to file: String) throws {
        if !FileManager.default.fileExists(atPath: file) { _ = FileManager.default.createFile(atPath: file, contents: nil) }
        guard let handle = FileHandle(forWritingAtPath: file) else { throw SaveError.unwritable(path: file, reason: "cannot open for appending") }
        defer { try? handle.close() }
        handle.seekToEndOfFile()
        var data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        data.append(0x0a)
        handle.write(data)
    }

    /// The adapter in PEFT format, or with --full the weights as an HF folder.
    func saveResult() throws {
        let model = trainer.model
        if case .lora = model.fineTuning {
            try PEFTAdapter.save(model, to: output, baseModel: config.model)
            return
        }
        try SafeTensors.write(path: path("model.safetensors"), tensors: model.weightsForSaving(), metadata: ["format": "pt"])
        let configData = try JSONSerialization.data(withJSONObject: model.config.huggingFaceJSON(), options: [.prettyPrinted, .sortedKeys])
        try configData.write(to: URL(fileURLWithPath: path("config.json")), options: .atomic)
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: modelPath, isDirectory: &isDirectory), isDirectory.boolValue {
            for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "generation_config.json"] {
                let source = (modelPath as NSString).appendingPathComponent(name)
                if FileManager.default.fileExists(atPath: source) {
                    try? FileManager.default.removeItem(atPath: path(name))
                    try FileManager.default.copyItem(atPath: source, toPath: path(name))
                }
            }
        }
    }

    /// run.json: the resolved config, Finch's version and commit, checksums of model and data, seed.
    func writeRunRecord(status: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let configObject = try JSONSerialization.jsonObject(with: try encoder.encode(config))
        var record: [String: Any] = ["status": status, "config": configObject, "finch_version": Finch.version,
                                     "seed": config.trainer.seed, "step": trainer.state.step, "ranks": group.size]
        if let commit = Finch.gitCommit { record["git_commit"] = commit }
        record["precision"] = ["chosen": precision.precision.rawValue, "reason": precision.reason,
                               "gemm": GEMM.description, "cpu": CPU.description,
                               "saved_activations": config.gradientCheckpointing ? "recomputed per layer"
                                   : precision.precision == .bf16 ? "bf16 (q, k, v, attention output, gate/up), rest fp32" : "fp32"]
        var checksums: [String: String] = [:]
        for source in [modelPath] + (try TrainingData.dataFiles(config.data).map(\.path)) + (config.evalData.map { [$0] } ?? []) {
            checksums[source] = try Checksum.sha256Hex(ofPath: source)
        }
        record["sha256"] = checksums
        let data = try JSONSerialization.data(withJSONObject: record, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: path("run.json")), options: .atomic)
    }
}
