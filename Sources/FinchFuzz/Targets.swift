import Foundation

/// What a case mutates, and the `finch` command that reads it.
enum Target: String, CaseIterable {
    case safetensors, config, tokenizer, template, gguf, data, yaml, imatrix

    /// One case: the mutated file written into `dir` (a fresh folder holding links to the seeds),
    /// and the command line (and stdin) that makes finch read it.
    struct Case {
        var arguments: [String]
        var stdin: String?
        var mutatedFile: String
    }

    func prepare(_ dir: URL, seeds: Seeds, rng: inout SplitMix) throws -> Case {
        let fm = FileManager.default
        let model = dir.appendingPathComponent("model")
        try fm.createDirectory(at: model, withIntermediateDirectories: true)
        for name in Seeds.modelFiles {
            try fm.createSymbolicLink(at: model.appendingPathComponent(name), withDestinationURL: seeds.model.appendingPathComponent(name))
        }
        func write(_ bytes: [UInt8], to url: URL) throws {
            try? fm.removeItem(at: url)
            try Data(bytes).write(to: url)
        }
        func read(_ url: URL) throws -> [UInt8] { Array(try Data(contentsOf: url)) }
        let eval = seeds.file("eval.txt").path
        let modelCommands: [[String]] = [
            ["perplexity", "--model", model.path, "--data", eval],
            ["generate", "--model", model.path, "--prompt", "The capital of France", "--max-new-tokens", "3"],
            ["generate", "--model", model.path, "--chat", "--prompt", "Hello there", "--max-new-tokens", "3"],
        ]
        switch self {
        case .safetensors:
            let url = model.appendingPathComponent("model.safetensors")
            var bytes = try read(seeds.model.appendingPathComponent("model.safetensors"))
            let headerLength = bytes.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
            if rng.chance(0.5) {
                // The header as JSON: shapes, dtypes and data offsets.
                let header = Array(bytes[8..<(8 + headerLength)])
                var names: [String] = []
                if let object = try? JSONSerialization.jsonObject(with: Data(header)) as? [String: Any] { names = object.keys.sorted() }
                let targets: [([JSONMutator.Step], [Any])] = names.flatMap { name -> [([JSONMutator.Step], [Any])] in
                    [([.key(name), .key("data_offsets"), .index(0)], [0, 1, -1, 4, 1 << 40, 3.5]),
                     ([.key(name), .key("data_offsets"), .index(1)], [0, 1, -1, 4, 1 << 40, 1 << 62]),
                     ([.key(name), .key("shape")], [[1, 64], [0], [], [-1, 16], [1 << 40, 1 << 40], [16, 16, 16], [4611686018427387904, 4]]),
                     ([.key(name), .key("dtype")], ["F16", "BF16", "I8", "F64", "Q4", "", 5])]
                }
                var newHeader = JSONMutator.mutate(header, &rng, targets: targets)
                while newHeader.count % 8 != 0 { newHeader.append(0x20) }
                let length = rng.chance(0.85) ? newHeader.count : newHeader.count + rng.pick([-1, 1, 8, -8, 1 << 20])
                var out = (0..<8).map { UInt8(truncatingIfNeeded: UInt64(bitPattern: Int64(length)) >> (8 * UInt64($0))) }
                out += newHeader + bytes[(8 + headerLength)...]
                bytes = out
            } else {
                ByteMutator.mutate(&bytes, &rng, focus: rng.chance(0.5) ? 0..<(8 + headerLength) : nil)
            }
            try write(bytes, to: url)
            return Case(arguments: rng.pick(modelCommands), mutatedFile: "model/model.safetensors")
        case .config:
            let url = model.appendingPathComponent("config.json")
            let keys = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                        "head_dim", "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_theta", "bos_token_id",
                        "eos_token_id", "tie_word_embeddings", "model_type", "rope_scaling", "sliding_window", "partial_rotary_factor"]
            let values: [Any] = Interesting.numbers + ["qwen3", "mistral", "gemma2", "llama", NSNull(),
                        ["rope_type": "llama3", "factor": 0, "low_freq_factor": 4, "high_freq_factor": 1, "original_max_position_embeddings": 0],
                        ["rope_type": "linear", "factor": -2], ["rope_type": "yarn", "factor": 1e30], ["type": "dynamic"]]
            let targets = keys.map { ([JSONMutator.Step.key($0)], values) }
            try write(JSONMutator.mutate(try read(seeds.model.appendingPathComponent("config.json")), &rng, targets: targets), to: url)
            return Case(arguments: rng.pick(modelCommands), mutatedFile: "model/config.json")
        case .tokenizer:
            let url = model.appendingPathComponent("tokenizer.json")
            let regexes: [Any] = ["(a+)+$", "(\\w+\\s?)*$", "(.*a){30}", "((a|aa)+)+b", "(?:(?:x*)*)*y", "[", "(?<=a+)b", "\\p{Bogus}",
                                  "(?i:", "a{99999999}", "(a|b|ab)*c", ".*.*.*.*.*.*.*.*=", "\\", "(?=(a+))\\1+$"]
            let bomb: [String: Any] = ["type": "Sequence", "normalizers": Array(repeating: ["type": "Replace", "pattern": ["String": "a"],
                                                                                     "content": String(repeating: "a", count: 1000)], count: 6)]
            let targets: [([JSONMutator.Step], [Any])] = [
                ([.key("pre_tokenizer"), .key("pretokenizers"), .index(0), .key("pattern")], regexes.map { ["Regex": $0] }),
                ([.key("normalizer")], [bomb, ["type": "Replace", "pattern": ["Regex": "(a+)+$"], "content": "b"],
                                        ["type": "Prepend", "prepend": String(repeating: "▁", count: 100000)], ["type": "NFKC"], ["type": "Nope"]]),
                ([.key("added_tokens"), .index(0), .key("id")], [5_000_000, -1, 899, 900, 1 << 40]),
                ([.key("added_tokens"), .index(1), .key("id")], [5_000_000, 0, 901]),
                ([.key("added_tokens"), .index(2), .key("content")], ["", "a", "<|im_start|>", String(repeating: "x", count: 100000)]),
                ([.key("post_processor")], [["type": "TemplateProcessing", "single": [["SpecialToken": ["id": "<s>", "type_id": 0]], ["Sequence": ["id": "A", "type_id": 0]]],
                                             "pair": [], "special_tokens": ["<s>": ["id": "<s>", "ids": [99999], "tokens": ["<s>"]]]],
                                            ["type": "RobertaProcessing", "sep": ["</s>", 1_000_000], "cls": ["<s>", -5]],
                                            ["type": "ByteLevel", "trim_offsets": "yes"]]),
                ([.key("model"), .key("type")], ["WordPiece", "Unigram", "BPE", "WordLevel", ""]),
                ([.key("model"), .key("byte_fallback")], [true, "x"]),
                ([.key("model"), .key("unk_token")], ["<unk>", "<|endoftext|>", 5]),
                ([.key("model"), .key("merges"), .index(0)], ["a", "a b c", ["a"], "Ġ Ġ", ""]),
                ([.key("model"), .key("vocab"), .key("a")], [5_000_000, -3, 0, "a"]),
                ([.key("decoder")], [["type": "Replace", "pattern": ["String": ""], "content": "x"], ["type": "Sequence", "decoders": [[String: Any]]()],
                                     ["type": "Strip", "content": " ", "start": 1 << 40, "stop": -1]]),
            ]
            try write(JSONMutator.mutate(try read(seeds.model.appendingPathComponent("tokenizer.json")), &rng, targets: targets), to: url)
            let texts = ["The quick brown fox", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!", "<|im_start|>user\nhi<|im_end|>", "🦜 naïve café 123"]
            let stdin = texts.map { "\"\($0.replacingOccurrences(of: "\n", with: "\\n"))\"" }.joined(separator: "\n") + "\n"
            let commands = modelCommands + [["tokenize", "--tokenizer", model.path], ["tokenize", "--tokenizer", model.path, "--add-special-tokens"]]
            return Case(arguments: rng.pick(commands), stdin: stdin, mutatedFile: "model/tokenizer.json")
        case .template:
            let url = model.appendingPathComponent("chat_template.jinja")
            let text = String(decoding: try read(seeds.model.appendingPathComponent("chat_template.jinja")), as: UTF8.self)
            var mutated = TextMutator.mutate(text, &rng, snippets: TextMutator.jinja)
            if rng.chance(0.3) { mutated = TextMutator.mutate(mutated, &rng, snippets: TextMutator.jinja) }
            try write(Array(mutated.utf8), to: url)
            let train = ["train", "--model", model.path, "--data", seeds.file("messages.jsonl").path, "--output", dir.appendingPathComponent("run").path,
                         "--max-steps", "1", "--batch-size", "2", "--lora-r", "2", "--max-length", "64"]
            return Case(arguments: rng.chance(0.7) ? modelCommands[2] : train, mutatedFile: "model/chat_template.jinja")
        case .gguf:
            let source = rng.chance(0.5) ? seeds.gguf : seeds.ggufQ8
            let url = dir.appendingPathComponent("model.gguf")
            var bytes = try read(source)
            GGUFFields.mutate(&bytes, &rng)
            try write(bytes, to: url)
            let commands = [["perplexity", "--model", url.path, "--data", eval],
                            ["generate", "--model", url.path, "--chat", "--prompt", "Hello", "--max-new-tokens", "3"],
                            ["tokenize", "--tokenizer", url.path]]
            return Case(arguments: rng.pick(commands), stdin: "\"hello world\"\n", mutatedFile: "model.gguf")
        case .data:
            let name = rng.pick(Seeds.dataFiles)
            let url = dir.appendingPathComponent(name)
            let text = String(decoding: try read(seeds.file(name)), as: UTF8.self)
            var mutated: String
            if name.hasSuffix(".jsonl") && rng.chance(0.5) {
                var lines = text.components(separatedBy: "\n").filter { !$0.isEmpty }
                let i = rng.below(lines.count)
                lines[i] = String(decoding: JSONMutator.mutate(Array(lines[i].utf8), &rng), as: UTF8.self)
                mutated = lines.joined(separator: rng.chance(0.2) ? "\r\n" : "\n") + "\n"
            } else if name.hasSuffix(".json") && rng.chance(0.5) {
                mutated = String(decoding: JSONMutator.mutate(Array(text.utf8), &rng), as: UTF8.self)
            } else {
                mutated = TextMutator.mutate(text, &rng, snippets: TextMutator.dataLines)
            }
            if rng.chance(0.05) { mutated = "\u{FEFF}" + mutated }
            var bytes = Array(mutated.utf8)
            if rng.chance(0.1) { bytes.insert(contentsOf: [0xC3, 0x28, 0xFF], at: rng.below(bytes.count + 1)) }
            try write(bytes, to: url)
            let method = name == "prefs.jsonl" ? "orpo" : "sft"
            return Case(arguments: ["train", "--model", seeds.model.path, "--method", method, "--data", url.path,
                                    "--output", dir.appendingPathComponent("run").path, "--max-steps", "1", "--batch-size", "2",
                                    "--lora-r", "2", "--max-length", "64"], mutatedFile: name)
        case .imatrix:
            // An importance matrix for a quantized export: the GGUF layout's fields, or the legacy layout's bytes.
            let legacy = rng.chance(0.4)
            let url = dir.appendingPathComponent(legacy ? "imatrix.dat" : "imatrix.gguf")
            var bytes = try read(legacy ? seeds.imatrixLegacy : seeds.imatrix)
            if legacy { ByteMutator.mutate(&bytes, &rng) } else { GGUFFields.mutate(&bytes, &rng) }
            try write(bytes, to: url)
            return Case(arguments: ["export", "--model", seeds.gguf.path, "--format", "gguf", "--quant", rng.pick(["q4_0", "q4_k_m", "q6_k"]),
                                    "--imatrix", url.path, "--output", dir.appendingPathComponent("out.gguf").path],
                        mutatedFile: url.lastPathComponent)
        case .yaml:
            let url = dir.appendingPathComponent("train.yaml")
            let text = String(decoding: try read(seeds.file("train.yaml")), as: UTF8.self)
                .replacingOccurrences(of: "MODEL", with: seeds.model.path)
                .replacingOccurrences(of: "DATA", with: seeds.file("prefs.jsonl").path)
                .replacingOccurrences(of: "OUTPUT", with: dir.appendingPathComponent("run").path)
            var mutated = TextMutator.mutate(text, &rng, snippets: TextMutator.yaml)
            if rng.chance(0.3) { mutated = TextMutator.mutate(mutated, &rng, snippets: TextMutator.yaml) }
            try write(Array(mutated.utf8), to: url)
            return Case(arguments: ["train", "--config", url.path], mutatedFile: "train.yaml")
        }
    }
}
