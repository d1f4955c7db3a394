import Foundation
import FinchKernels
import FinchIO
import FinchTokenizers
import FinchModels
import FinchGeneration
import FinchDistributed

/// Checkpoints of a training run: `checkpoint-<step>/` holding the trainable parameters, the
/// optimizer moments and `trainer_state.json` (step, data position, random state), and for LoRA
/// the adapter in PEFT format. Each folder is written under a temporary name and renamed into
/// place, so a crash never leaves a half-written checkpoint under the final name. The last file
/// written, `manifest.json`, holds every other file's size and SHA-256; resuming checks them, so a
/// checkpoint damaged after it was written (a disk error, a copy cut short) is refused by name.
public enum Checkpoint {
    static let manifestFile = "manifest.json"
    static let stateFile = "trainer_state.json"
    static let parametersFile = "parameters.safetensors"
    static let optimizerFile = "optimizer.safetensors"

    struct SavedState: Codable {
        var state: TrainerState
        var optimizerStep: Int
        var settings: TrainerSettings
        /// Ranks that trained (nil in checkpoints older than data parallel training: 1).
        var ranks: Int?
        /// Examples of `state.epoch` trained on, over all ranks: the data position, whatever the rank count.
        var examplesInEpoch: Int?
    }

    /// Writes a checkpoint of `trainer` into `runDirectory/checkpoint-<step>` and returns its path.
    @discardableResult
    public static func save(_ trainer: Trainer, runDirectory: String) throws -> String {
        let fm = FileManager.default
        let final = (runDirectory as NSString).appendingPathComponent("checkpoint-\(trainer.state.step)")
        let temporary = final + ".partial-\(getpid())"
        try? fm.removeItem(atPath: temporary)
        do {
            try fm.createDirectory(atPath: temporary, withIntermediateDirectories: true)
        } catch {
            throw SaveError.unwritable(path: temporary, reason: error.localizedDescription)
        }
        let p = trainer.parameters
        try SafeTensors.write(path: (temporary as NSString).appendingPathComponent(parametersFile),
                              tensors: p.entries.map { ($0.name, $0.shape, p.array($0.name)!) })
        let o = trainer.optimizer
        try SafeTensors.write(path: (temporary as NSString).appendingPathComponent(optimizerFile),
                              tensors: o.kind == .adamw ? [("m", [o.m.count], o.m), ("v", [o.v.count], o.v)] : [])
        if case .lora = trainer.model.fineTuning { try PEFTAdapter.save(trainer.model, to: temporary) }
        let saved = SavedState(state: trainer.state, optimizerStep: o.step, settings: trainer.settings, ranks: trainer.group.size,
                               examplesInEpoch: min(trainer.state.windowInEpoch * trainer.windowSize, trainer.train.count))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(saved).write(to: URL(fileURLWithPath: (temporary as NSString).appendingPathComponent(stateFile)))
        try writeManifest(in: temporary)
        // Folders of checkpoints whose writer died before the rename are never valid: clear them.
        for name in (try? fm.contentsOfDirectory(atPath: runDirectory)) ?? [] where name.hasPrefix("checkpoint-") && name.contains(".partial-") {
            let path = (runDirectory as NSString).appendingPathComponent(name)
            if path != temporary { try? fm.removeItem(atPath: path) }
        }
        // Replace an older checkpoint of the same step only once the new one is complete.
        if fm.fileExists(atPath: final) { try fm.removeItem(atPath: final) }
        guard rename(temporary, final) == 0 else {
            throw SaveError.unwritable(path: final, reason: String(cString: strerror(errno)))
        }
        return final
    }

    /// Writes `manifest.json`: each file of `folder` (recursively) with its size and SHA-256.
    static func writeManifest(in folder: String) throws {
        var files: [String: [String: Any]] = [:]
        let enumerator = FileManager.default.enumerator(atPath: folder)
        while let name = enumerator?.nextObject() as? String {
            let path = (folder as NSString).appendingPathComponent(name)
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue else { continue }
            let size = (try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue ?? 0
            files[name] = ["bytes": size, "sha256": try Checksum.sha256Hex(ofPath: path)]
        }
        let data = try JSONSerialization.data(withJSONObject: ["format": 1, "files": files], options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: (folder as NSString).appendingPathComponent(manifestFile)))
    }

    /// Checks every file the manifest lists (size, then SHA-256); a checkpoint written before
    /// manifests existed has none and is read as it is.
    static func verifyManifest(in folder: String) throws {
        let path = (folder as NSString).appendingPathComponent(manifestFile)
        guard let data = FileManager.default.contents(atPath: path) else {
            if FileManager.default.fileExists(atPath: path) { throw LoadError.unreadable(path: path, reason: "cannot read the file") }
            return
        }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let files = object["files"] as? [String: [String: Any]] else {
            throw LoadError.malformed(path: path, field: "files", found: "not a manifest", expected: "{\"files\": {name: {\"bytes\", \"sha256\"}}}")
        }
        for name in files.keys.sorted() {
            let entry = files[name]!, file = (folder as NSString).appendingPathComponent(name)
            guard let bytes = (entry["bytes"] as? NSNumber)?.intValue, let sha = entry["sha256"] as? String else {
                throw LoadError.malformed(path: path, field: "files.\(name)", found: "\(entry)", expected: "bytes and sha256")
            }
            guard FileManager.default.fileExists(atPath: file) else { throw LoadError.fileNotFound(path: file) }
            let size = (try? FileManager.default.attributesOfItem(atPath: file)[.size] as? NSNumber)?.intValue ?? -1
            guard size == bytes else {
                throw LoadError.malformed(path: file, field: "size", found: "\(size) bytes", expected: "\(bytes) bytes as the checkpoint's manifest records (the file is damaged)")
            }
            let actual = try Checksum.sha256Hex(ofPath: file)
            guard actual == sha else {
                throw LoadError.malformed(path: file, field: "SHA-256", found: actual, expected: "\(sha) as the checkpoint's manifest records (the file is damaged)")
            }
        }
    }

    /// The newest complete checkpoint of a run, if any: a `checkpoint-N` folder without its
    /// trainer state (emptied, or made by hand) is passed over for the newest one that has it.
    public static func latest(in runDirectory: String) -> String? {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: runDirectory)) ?? []
        let steps = names.compactMap { name -> Int? in
            guard name.hasPrefix("checkpoint-"), !name.contains(".partial") else { return nil }
            return Int(name.dropFirst("checkpoint-".count))
        }
        return steps.sorted(by: >).lazy.map { (runDirectory as NSString).appendingPathComponent("checkpoint-\($0)") }
            .first { FileManager.default.fileExists(atPath: ($0 as NSString).appendingPathComponent(stateFile)) }
    }

    /// Restores parameters, optimizer and position from `checkpoint` into `trainer`. The rank count
    /// may differ from the run that wrote it when the global batch (ranks x batch size x grad
    /// accum) is the same: the data order and the schedule depend only on that.
    public static func restore(_ trainer: Trainer, from checkpoint: String) throws {
        try verifyManifest(in: checkpoint)
        let statePath = (checkpoint as NSString).appendingPathComponent(stateFile)
        guard let data = FileManager.default.contents(atPath: statePath) else { throw LoadError.fileNotFound(path: statePath) }
        let saved: SavedState
        do { saved = try JSONDecoder().decode(SavedState.self, from: data) } catch {
            throw LoadError.malformed(path: statePath, field: "JSON", found: "\(error)", expected: "a Finch trainer state")
        }
        // A position the run cannot have reached is a corrupt or foreign file, not a place to resume.
        let s = saved.state
        let position: [(field: String, value: Int, range: ClosedRange<Int>)] = [
            ("state.step", s.step, 0...trainer.totalSteps), ("state.epoch", s.epoch, 0...max(trainer.settings.epochs, 1) + trainer.totalSteps),
            ("state.windowInEpoch", s.windowInEpoch, 0...trainer.windowsPerEpoch), ("state.numTokens", s.numTokens, 0...Int.max),
            ("optimizerStep", saved.optimizerStep, 0...max(s.step, 0)), ("examplesInEpoch", saved.examplesInEpoch ?? 0, 0...trainer.train.count),
            ("ranks", saved.ranks ?? 1, 1...1 << 20)]
        for (field, value, range) in position where !range.contains(value) {
            throw LoadError.malformed(path: statePath, field: field, found: "\(value)", expected: "a value in \(range.lowerBound)...\(range.upperBound) for this run")
        }
        if s.random.count != trainer.model.random.state.count {
            throw LoadError.malformed(path: statePath, field: "state.random", found: "\(s.random.count) words",
                                      expected: "\(trainer.model.random.state.count) (the dropout generator's state)")
        }
        var differences: [String] = []
        let a = saved.settings, b = trainer.settings
        let savedWindow = (saved.ranks ?? 1) * a.batchSize * a.gradAccum
        if savedWindow != trainer.windowSize {
            throw LoadError.malformed(path: statePath, field: "global batch (ranks x batch size x grad accum)",
                                      found: "\(trainer.group.size) x \(b.batchSize) x \(b.gradAccum) = \(trainer.windowSize) in this run",
                                      expected: "\(saved.ranks ?? 1) x \(a.batchSize) x \(a.gradAccum) = \(savedWindow) as the checkpoint was written "
                                        + "(change --batch-size or --grad-accum to keep the product)")
        }
        if a.seed != b.seed { differences.append("seed") }
        if a.optimizer != b.optimizer { differences.append("optimizer") }
        guard differences.isEmpty else {
            throw LoadError.malformed(path: statePath, field: differences.joined(separator: ", "),
                                      found: "a run with other settings", expected: "the settings the checkpoint was written with")
        }
        let parametersPath = (checkpoint as NSString).appendingPathComponent(parametersFile)
        let tensors = try SafeTensors.read(path: parametersPath)
        let p = trainer.parameters
        for entry in p.entries {
            guard let t = tensors[entry.name] else { throw LoadError.missingTensor(path: parametersPath, name: entry.name) }
            guard t.shape == entry.shape, t.dtype == .f32 else {
                throw LoadError.shapeMismatch(path: parametersPath, name: entry.name, found: t.shape, expected: entry.shape)
            }
            (p.values + entry.offset).update(from: t.bytes.assumingMemoryBound(to: Float.self), count: entry.count)
        }
        let optimizerPath = (checkpoint as NSString).appendingPathComponent(optimizerFile)
        let moments = try SafeTensors.read(path: optimizerPath)
        if trainer.optimizer.kind == .adamw {
            guard let m = moments["m"], let v = moments["v"], m.elementCount == p.count, v.elementCount == p.count else {
                throw LoadError.malformed(path: optimizerPath, field: "m, v", found: "missing or of another size",
                                          expected: "\(p.count) AdamW moments each")
            }
            trainer.optimizer.restore(step: saved.optimizerStep, m: dequantize(m), v: dequantize(v))
        } else {
            trainer.optimizer.restore(step: saved.optimizerStep, m: [], v: [])
        }
        trainer.state = saved.state
        if let examples = saved.examplesInEpoch {
            // The data position in global examples; equal windows make it a whole number of windows.
            trainer.state.windowInEpoch = (examples + trainer.windowSize - 1) / trainer.windowSize
        }
        trainer.model.random.state = saved.state.random
    }
}
