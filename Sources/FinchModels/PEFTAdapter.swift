import Foundation
import FinchKernels
import FinchIO

/// LoRA adapters in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`,
/// with tensor names such as `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.
public enum PEFTAdapter {
    /// File name of the hyper-parameters inside an adapter folder.
    public static let configFile = "adapter_config.json"
    /// File name of the LoRA A/B tensors inside an adapter folder.
    public static let weightsFile = "adapter_model.safetensors"

    /// Reads the LoRA hyper-parameters of an adapter folder.
    public static func config(directory: String) throws -> LoRAConfig {
        let path = (directory as NSString).appendingPathComponent(configFile)
        guard let data = FileManager.default.contents(atPath: path) else { throw LoadError.fileNotFound(path: path) }
        guard let json = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw LoadError.malformed(path: path, field: "JSON", found: "invalid JSON", expected: "a JSON object")
        }
        if let type = json["peft_type"] as? String, type != "LORA" {
            throw LoadError.unsupported(path: path, what: "peft_type", found: type, supported: ["LORA"])
        }
        guard let rank = (json["r"] as? NSNumber)?.intValue, rank > 0 else {
            throw LoadError.malformed(path: path, field: "r", found: "\(json["r"] ?? "nothing")", expected: "a positive integer")
        }
        let alpha = (json["lora_alpha"] as? NSNumber)?.floatValue ?? Float(rank)
        let dropout = (json["lora_dropout"] as? NSNumber)?.floatValue ?? 0
        var targets: [String]
        if let list = json["target_modules"] as? [String] { targets = list }
        else if let one = json["target_modules"] as? String {
            // A regex in PEFT; Finch takes the projection names it mentions.
            targets = LoRAConfig.targetNames.filter { one.contains($0) }
        } else {
            throw LoadError.malformed(path: path, field: "target_modules", found: "\(json["target_modules"] ?? "nothing")",
                                      expected: "a list of module names")
        }
        // A mixture of experts' 3D expert parameters (`LoRAConfig.expertTargets`).
        if let parameters = json["target_parameters"], !(parameters is NSNull) {
            // PEFT lists each as matched: `mlp.experts.down_proj`, and also `down_proj`.
            let known = LoRAConfig.expertTargets.map { "mlp." + $0 }
            guard let list = parameters as? [String] else {
                throw LoadError.malformed(path: path, field: "target_parameters", found: "\(parameters)", expected: "a list of parameter names")
            }
            for entry in list {
                guard let target = LoRAConfig.expertTargets.first(where: { "mlp." + $0 == entry || $0 == entry || $0 == "experts." + entry }) else {
                    throw LoadError.unsupported(path: path, what: "target_parameters entry", found: entry, supported: known)
                }
                if !targets.contains(target) { targets.append(target) }
            }
        }
        // Patterns: only PEFT's own for the experts (`.*\.gate_up_proj`), and only where no module target shares the name.
        var expertRanks: [String: Int] = [:], expertAlphas: [String: Float] = [:]
        for key in ["rank_pattern", "alpha_pattern"] {
            guard let pattern = json[key] as? [String: Any], !pattern.isEmpty else { continue }
            for (regex, value) in pattern {
                let name = regex.hasPrefix(".*\\.") ? String(regex.dropFirst(4)) : regex
                guard let target = LoRAConfig.expertTargets.first(where: { $0 == "experts." + name }), targets.contains(target),
                      !targets.contains(name), let number = value as? NSNumber, number.doubleValue > 0 else {
                    throw LoadError.unsupported(path: path, what: key, found: "\(pattern)",
                                                supported: ["{}", "{\".*\\\\.gate_up_proj\": N} with experts' gate_up_proj targeted"])
                }
                if key == "rank_pattern" { expertRanks[target] = number.intValue } else { expertAlphas[target] = number.floatValue }
            }
        }
        if let bias = json["bias"] as? String, bias != "none" {
            throw LoadError.unsupported(path: path, what: "bias", found: bias, supported: ["none"])
        }
        var config = LoRAConfig(rank: rank, alpha: alpha, dropout: dropout, targets: targets,
                                useRSLoRA: (json["use_rslora"] as? NSNumber)?.boolValue ?? false)
        config.expertRanks = expertRanks
        config.expertAlphas = expertAlphas
        return config
    }

    /// Copies an adapter's weights into a model built with `.lora(config(directory:))`.
    /// Every LoRA parameter must be present with the model's shape: an adapter made for
    /// another model fails here, naming the tensor.
    public static func load(directory: String, into model: Transformer) throws {
        let path = (directory as NSString).appendingPathComponent(weightsFile)
        let tensors = try SafeTensors.read(path: path)
        guard let parameters = model.parameters, case .lora = model.fineTuning else {
            throw LoadError.unsupported(path: path, what: "model mode", found: "\(model.fineTuning)", supported: ["lora"])
        }
        for entry in parameters.entries {
            // PEFT saves without the adapter name; some tools keep ".default".
            let stored = tensors[entry.name] ?? tensors[entry.name.replacingOccurrences(of: ".weight", with: ".default.weight")]
            guard let t = stored else { throw LoadError.missingTensor(path: path, name: entry.name) }
            guard t.shape == entry.shape else {
                throw LoadError.shapeMismatch(path: path, name: entry.name, found: t.shape, expected: entry.shape)
            }
            dequantizeRow(t.dtype, t.bytes, parameters.values + entry.offset, count: entry.count)
        }
        let known = Set(parameters.entries.map(\.name))
        if let extra = tensors.keys.sorted().first(where: { !known.contains($0) && !known.contains($0.replacingOccurrences(of: ".default.weight", with: ".weight")) }) {
            throw LoadError.malformed(path: path, field: extra, found: "a tensor the model has no place for",
                                      expected: "only LoRA tensors of the targeted modules")
        }
    }

    /// Writes the model's LoRA parameters and config as PEFT does, atomically per file.
    public static func save(_ model: Transformer, to directory: String, baseModel: String? = nil) throws {
        guard let parameters = model.parameters, case let .lora(lora) = model.fineTuning else {
            throw SaveError.unwritable(path: directory, reason: "the model has no LoRA adapters to save")
        }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let tensors = parameters.entries.map { (name: $0.name, shape: $0.shape, values: parameters.array($0.name)!) }
        // The modules adapted, by their last name as PEFT matches them (Phi-3: qkv_proj, not q_proj);
        // the experts' 3D parameters as PEFT's `target_parameters`.
        let modules = Set(parameters.entries.compactMap { entry -> String? in
            guard entry.name.hasSuffix(".lora_A.weight"), !entry.name.contains(".experts.") else { return nil }
            return entry.name.dropLast(".lora_A.weight".count).split(separator: ".").last.map(String.init)
        }).sorted()
        let moduleTargets = lora.targets.filter { !LoRAConfig.expertTargets.contains($0) }
        // In the order Finch nests them (gate_up's pair inner, as `base_layer`), which PEFT follows on loading.
        let expertTargets = LoRAConfig.expertTargets.filter { lora.targets.contains($0) }
        try SafeTensors.write(path: (directory as NSString).appendingPathComponent(weightsFile), tensors: tensors,
                              metadata: ["format": "pt"])
        let config: [String: Any] = [
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora.rank, "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout, "target_modules": Set(modules) == Set(moduleTargets) ? moduleTargets : modules,
            "target_parameters": expertTargets.isEmpty ? NSNull() : expertTargets.map { "mlp." + $0 } as Any,
            "use_rslora": lora.useRSLoRA,
            "bias": "none", "fan_in_fan_out": false, "inference_mode": true, "init_lora_weights": true,
            "base_model_name_or_path": baseModel ?? NSNull(), "modules_to_save": NSNull(),
            "rank_pattern": Dictionary(uniqueKeysWithValues: lora.expertRanks.map { (".*\\." + $0.key.dropFirst("experts.".count), $0.value) }),
            "alpha_pattern": Dictionary(uniqueKeysWithValues: lora.expertAlphas.map { (".*\\." + $0.key.dropFirst("experts.".count), $0.value) }),
        ]
        let data = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
        let url = URL(fileURLWithPath: (directory as NSString).appendingPathComponent(configFile))
        try data.write(to: url, options: .atomic)
    }
}

extension Transformer {
    /// The model of `files` for inference, with a PEFT adapter folder applied without merging.
    public convenience init(files: ModelFiles, adapter: String?) throws {
        try self.init(files: files, fineTuning: try adapter.map { .lora(try PEFTAdapter.config(directory: $0)) } ?? .none)
        if let adapter { try PEFTAdapter.load(directory: adapter, into: self) }
    }
}
