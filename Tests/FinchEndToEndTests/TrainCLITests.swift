import XCTest
import FinchTestSupport
@testable import Finch
@testable import FinchKernels
@testable import FinchIO
@testable import FinchTokenizers
@testable import FinchModels
@testable import FinchGeneration
@testable import FinchDistributed
@testable import FinchTraining
@testable import FinchExport

/// `finch train` end to end on a tiny model: outputs, bad input, and a crash then --resume
/// ending at the same adapter bytes as an uninterrupted run.
final class TrainCLITests: TemporaryDirectoryTestCase {
    func model() throws -> String { try tinyChatModel() }

    func preferenceData(rows: Int = 12) throws -> String {
        let path = temporary.appendingPathComponent("pairs.jsonl").path
        let animals = ["cat", "dog", "owl", "fox", "bee", "elk"]
        let lines = (0..<rows).map { i -> String in
            let a = animals[i % animals.count]
            return #"{"prompt": "What does a \#(a) say? (\#(i))", "chosen": "A \#(a) makes its own sound.", "rejected": "I am not sure what a \#(a) would say, it depends a lot."}"#
        }
        try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func run(_ arguments: [String], environment: [String: String] = [:]) throws -> FinchProcess.Result {
        try FinchProcess.run(arguments, environment: environment)
    }

    func trainArguments(model: String, data: String, output: String) -> [String] {
        ["train", "--method", "orpo", "--model", model, "--data", data, "--output", output, "--max-steps", "6",
         "--batch-size", "2", "--grad-accum", "2", "--save-steps", "2", "--lora-r", "4", "--lora-dropout", "0.1",
         "--lr", "1e-3", "--seed", "3", "--warmup-steps", "2"]
    }

    func testTrainWritesAdapterMetricsAndRunRecord() throws {
        let output = temporary.appendingPathComponent("run").path
        let result = try run(trainArguments(model: try model(), data: try preferenceData(), output: output))
        XCTAssertEqual(result.status, 0, result.err)
        let files = try FileManager.default.contentsOfDirectory(atPath: output)
        for name in ["adapter_config.json", "adapter_model.safetensors", "metrics.jsonl", "run.json", "checkpoint-4"] {
            XCTAssertTrue(files.contains(name), "\(name) missing from \(files)")
        }
        let lines = try String(contentsOfFile: output + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 6)
        let first = try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as! [String: Any]
        for key in ["step", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_second", "nll_loss", "rewards/accuracies", "log_odds_ratio"] {
            XCTAssertNotNil(first[key], "metrics.jsonl lacks \(key)")
        }
        let record = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: output + "/run.json"))) as! [String: Any]
        XCTAssertEqual(record["status"] as? String, "finished")
        XCTAssertEqual((record["sha256"] as? [String: String])?.count, 2)
        // The adapter is a PEFT adapter Finch reads back.
        XCTAssertEqual(try PEFTAdapter.config(directory: output).rank, 4)

        let again = try run(trainArguments(model: temporary.appendingPathComponent("model").path,
                                           data: temporary.appendingPathComponent("pairs.jsonl").path, output: output))
        XCTAssertEqual(again.status, 1, "an existing run is not overwritten")
        XCTAssertTrue(again.err.contains("--overwrite"), again.err)
    }

    /// A mixture of experts through the command line: a random Qwen3-MoE (4 experts, top 2) with the
    /// tiny tokenizer, SFT with accumulation and LoRA on the experts (`aux_loss` logged, TRL's
    /// default coefficient from config.json), the adapter in PEFT's `target_parameters` form,
    /// a merged export that generates, and ORPO leaving the auxiliary loss out unless the config
    /// sets output_router_logits (TRL's ORPO), or a flag asks for it.
    func testMixtureOfExpertsTrainsExportsAndGenerates() throws {
        let folder = temporary.appendingPathComponent("moe")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        var json = ["model_type": "qwen3_moe", "hidden_size": 32, "intermediate_size": 64, "moe_intermediate_size": 32, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 512, "num_experts": 4,
                    "num_experts_per_tok": 2, "norm_topk_prob": true, "router_aux_loss_coef": 0.01, "tie_word_embeddings": true,
                    "max_position_embeddings": 256, "bos_token_id": 1, "eos_token_id": 2] as [String: Any]
        let config = try ModelConfig(json: json, path: "config.json")
        let files = ModelFiles.random(config: config, seed: 5)
        try SafeTensors.write(path: folder.appendingPathComponent("model.safetensors").path,
                              tensors: Transformer.tensorLayout(config).map { ($0.name, $0.shape, dequantize(files.tensors[$0.name]!)) })
        json["architectures"] = ["Qwen3MoeForCausalLM"]
        try JSONSerialization.data(withJSONObject: json).write(to: folder.appendingPathComponent("config.json"))
        let tokenizer = TestSupport.fixtures.appendingPathComponent("trainers/tokenizer")
        for name in ["tokenizer.json", "tokenizer_config.json"] {
            try FileManager.default.copyItem(at: tokenizer.appendingPathComponent(name), to: folder.appendingPathComponent(name))
        }
        let data = try preferenceData()
        let sftData = try write("sft.jsonl", (0..<8).map { #"{"prompt": "What does animal \#($0) say?", "completion": "It makes its own sound."}"# }
                                    .joined(separator: "\n") + "\n")
        let sft = temporary.appendingPathComponent("sft").path
        let trained = try run(["train", "--method", "sft", "--model", folder.path, "--data", sftData, "--output", sft, "--max-steps", "2",
                               "--batch-size", "1", "--grad-accum", "2", "--lora-r", "4",
                               "--lora-targets", "q_proj,k_proj,v_proj,o_proj,experts.gate_up_proj,experts.down_proj"])
        XCTAssertEqual(trained.status, 0, trained.err)
        let metrics = try String(contentsOfFile: sft + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        let last = try JSONSerialization.jsonObject(with: Data(metrics.last!.utf8)) as! [String: Any]
        XCTAssertGreaterThanOrEqual(last["aux_loss"] as? Double ?? 0, 1, "\(last)")
        let adapter = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: sft + "/adapter_config.json"))) as! [String: Any]
        XCTAssertEqual(adapter["target_parameters"] as? [String], ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])
        let merged = temporary.appendingPathComponent("merged").path
        let exported = try run(["export", "--model", folder.path, "--adapter", sft, "--format", "hf", "--output", merged])
        XCTAssertEqual(exported.status, 0, exported.err)
        XCTAssertTrue(exported.out.contains("12 LoRA modules merged"), exported.out)
        let generated = try run(["generate", "--model", merged, "--prompt", "What does a cat say?", "--max-new-tokens", "4", "--json"])
        XCTAssertEqual(generated.status, 0, generated.err)
        XCTAssertEqual((try JSONSerialization.jsonObject(with: Data(generated.out.utf8)) as? [String: Any])?["completion_tokens"] as? Int, 4)
        for (flags, expectAux) in [([String](), false), (["--router-aux-loss-coef", "0.02"], true)] {
            let out = temporary.appendingPathComponent("orpo\(flags.count)").path
            let orpo = try run(["train", "--method", "orpo", "--model", folder.path, "--data", data, "--output", out, "--max-steps", "1",
                                "--batch-size", "2", "--lora-r", "4"] + flags)
            XCTAssertEqual(orpo.status, 0, orpo.err)
            let line = try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").last!
            XCTAssertEqual((try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any])["aux_loss"] != nil, expectAux, "\(flags)")
        }
    }

    /// Options from YAML (flags win), evaluation with sampled generations, and --full writing an HF folder.
    func testYAMLConfigEvaluationGenerationsAndFullWeights() throws {
        let model = try model(), data = try preferenceData()
        let output = temporary.appendingPathComponent("full").path
        let yaml = temporary.appendingPathComponent("train.yaml").path
        try """
        method: sft
        model: \(model)
        data: \(data)
        eval_data: \(data)
        output: \(output)
        max_steps: 2
        batch_size: 4
        eval_steps: 1
        generate_during_eval: 2
        lr: 0.5
        full: true
        """.write(toFile: yaml, atomically: true, encoding: .utf8)
        // The pairs' prompt/chosen fields read as an SFT prompt + completion once named so.
        let sftData = temporary.appendingPathComponent("sft.jsonl").path
        let rows = try String(contentsOfFile: data, encoding: .utf8).replacingOccurrences(of: "\"chosen\"", with: "\"completion\"")
            .replacingOccurrences(of: #", "rejected": "[^"]*""#, with: "", options: .regularExpression)
        try rows.write(toFile: sftData, atomically: true, encoding: .utf8)
        let result = try run(["train", "--config", yaml, "--data", sftData, "--eval-data", sftData, "--lr", "1e-3"])
        XCTAssertEqual(result.status, 0, result.err)
        let run = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: output + "/run.json"))) as! [String: Any]
        let trainer = (run["config"] as! [String: Any])["trainer"] as! [String: Any]
        XCTAssertEqual((trainer["learningRate"] as! NSNumber).doubleValue, 1e-3, accuracy: 1e-9, "the flag wins over the YAML value")
        let metrics = try String(contentsOfFile: output + "/metrics.jsonl", encoding: .utf8)
        XCTAssertEqual(metrics.components(separatedBy: "eval_loss").count - 1, 3, "eval at steps 0, 1 and 2")
        let generations = try String(contentsOfFile: output + "/generations.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(generations.count, 6, "2 completions per evaluation")
        // Full fine-tuning writes an HF folder Finch loads back.
        let files = try ModelFiles.open(output)
        XCTAssertEqual(files.config.hiddenSize, 32)
        XCTAssertNotNil(files.tensors["model.layers.1.mlp.down_proj.weight"])
    }

    func testCrashThenResumeEndsAtTheSameAdapterBytes() throws {
        let model = try model(), data = try preferenceData()
        let straight = temporary.appendingPathComponent("straight").path
        XCTAssertEqual(try run(trainArguments(model: model, data: data, output: straight)).status, 0)

        let crashed = temporary.appendingPathComponent("crashed").path
        let crash = try run(trainArguments(model: model, data: data, output: crashed), environment: ["FINCH_TEST_CRASH_AFTER_STEP": "3"])
        XCTAssertNotEqual(crash.status, 0, "the run was meant to die at step 3")
        XCTAssertFalse(FileManager.default.fileExists(atPath: crashed + "/adapter_model.safetensors"))
        let resumed = try run(trainArguments(model: model, data: data, output: crashed) + ["--resume"])
        XCTAssertEqual(resumed.status, 0, resumed.err)
        XCTAssertTrue(resumed.out.contains("resuming at step 2"), resumed.out)
        let a = try Data(contentsOf: URL(fileURLWithPath: straight + "/adapter_model.safetensors"))
        let b = try Data(contentsOf: URL(fileURLWithPath: crashed + "/adapter_model.safetensors"))
        XCTAssertEqual(a, b, "resumed adapter bytes differ from the uninterrupted run's")
        let steps = try String(contentsOfFile: crashed + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["step"] as? Int
        }
        XCTAssertEqual(steps, [1, 2, 3, 4, 5, 6])
    }

    func testBadInputGivesOneClearLine() throws {
        let model = try model()
        let bad = temporary.appendingPathComponent("bad.jsonl").path
        try "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n{\"prompt\": \"a\", \"chosen\": \"b\"\n".write(toFile: bad, atomically: true, encoding: .utf8)
        let r = try run(["train", "--method", "orpo", "--model", model, "--data", bad, "--output", temporary.appendingPathComponent("x").path])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.contains("bad.jsonl:2"), r.err)
        let missing = try run(["train", "--model", model, "--data", bad])
        XCTAssertTrue(missing.err.contains("--output"), missing.err)
        let sftOnPairs = try run(["train", "--method", "sft", "--model", model, "--data", try preferenceData(), "--output", temporary.appendingPathComponent("y").path])
        XCTAssertTrue(sftOnPairs.err.contains("cannot train on preference rows"), sftOnPairs.err)
        // Flags come from TrainConfig.options: a misspelt one, a value missing, a wrong kind of value.
        let out = temporary.appendingPathComponent("z").path
        let typo = try run(["train", "--model", model, "--data", bad, "--output", out, "--lr-rate", "1e-4"])
        XCTAssertEqual(typo.status, 1)
        XCTAssertTrue(typo.err.contains("unknown option '--lr-rate'") && typo.err.contains("--lr,"), typo.err)
        let noValue = try run(["train", "--model", model, "--data", bad, "--output", out, "--max-steps"])
        XCTAssertTrue(noValue.err.contains("--max-steps: max_steps: found 'nothing', expected a value (<int>)"), noValue.err)
        let word = try run(["train", "--model", model, "--data", bad, "--output", out, "--max-steps=many"])
        XCTAssertTrue(word.err.contains("--max-steps: max_steps: found 'many', expected a whole number"), word.err)
    }

    /// `finch train --method kto` on unpaired rows: the adapter, TRL's KTO metrics, and one-line
    /// errors for a row without a usable label and a loss type of another method.
    func testKTOTrainsOnUnpairedRowsAndNamesBadLabels() throws {
        let model = try model()
        let data = temporary.appendingPathComponent("unpaired.jsonl").path
        let animals = ["cat", "dog", "owl", "fox", "bee", "elk"]
        // One window holds every row (2 x 2), so each step sees both labels.
        let rows = (0..<4).map { i -> String in
            let a = animals[i % animals.count]
            return i % 2 == 0 ? #"{"prompt": "What does a \#(a) say?", "completion": " A \#(a) makes its own sound.", "label": true}"#
                              : #"{"prompt": "What does a \#(a) say?", "completion": " Not sure, it depends.", "label": false}"#
        }
        try (rows.joined(separator: "\n") + "\n").write(toFile: data, atomically: true, encoding: .utf8)
        let output = temporary.appendingPathComponent("kto").path
        let result = try run(["train", "--method", "kto", "--model", model, "--data", data, "--output", output, "--max-steps", "2",
                              "--batch-size", "2", "--grad-accum", "2", "--lora-r", "4", "--lr", "1e-3", "--undesirable-weight", "1.2"])
        XCTAssertEqual(result.status, 0, result.err)
        XCTAssertEqual(try PEFTAdapter.config(directory: output).rank, 4)
        // (A window without undesirable rows would log no rejected figures, as TRL.)
        let logged = try String(contentsOfFile: output + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").map {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
        }
        XCTAssertEqual(logged.count, 2)
        for key in ["loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
                    "logits/chosen", "logits/rejected", "entropy", "num_tokens"] {
            XCTAssertTrue(logged.contains { $0[key] != nil }, "metrics.jsonl lacks \(key)")
        }
        XCTAssertTrue(logged.allSatisfy { ($0["kl"] as? Double ?? -1) >= 0 }, "the KL estimate is clamped at 0")

        let bad = temporary.appendingPathComponent("bad-label.jsonl").path
        try (rows[0] + "\n" + #"{"prompt": "p", "completion": "c", "label": "maybe"}"# + "\n").write(toFile: bad, atomically: true, encoding: .utf8)
        let badLabel = try run(["train", "--method", "kto", "--model", model, "--data", bad, "--output", temporary.appendingPathComponent("b").path])
        XCTAssertEqual(badLabel.status, 1)
        XCTAssertTrue(badLabel.err.contains("bad-label.jsonl:2") && badLabel.err.contains("label") && badLabel.err.contains("true (desirable)"),
                      badLabel.err)
        let wrongLoss = try run(["train", "--method", "kto", "--model", model, "--data", data, "--output", temporary.appendingPathComponent("c").path,
                                 "--loss-type", "ipo"])
        XCTAssertEqual(wrongLoss.status, 1)
        XCTAssertTrue(wrongLoss.err.contains("loss_type") && wrongLoss.err.contains("apo_zero_unpaired"), wrongLoss.err)
    }

    /// GRPO from the command line: prompt-only rows, a built-in reward and a reward command
    /// (repeated flags), TRL's metrics in metrics.jsonl; a reward command that fails, a dataset
    /// without prompts and a group of one are clear errors, and a failure leaves the last
    /// checkpoint as it was.
    func testGRPOTrainsFromRewardsAndNamesWhatFails() throws {
        let model = try model()
        let data = temporary.appendingPathComponent("prompts.jsonl").path
        let rows = (0..<4).map { i in #"{"prompt": [{"role": "user", "content": "Count to \#(i + 2)."}], "answer": "\#(i + 2)"}"# }
        try (rows.joined(separator: "\n") + "\n").write(toFile: data, atomically: true, encoding: .utf8)
        let output = temporary.appendingPathComponent("grpo").path
        // The command scores each completion by its length in characters (jq-free: awk on the JSON line).
        let command = "awk '{ print length($0) % 7 }'"
        let common = ["train", "--method", "grpo", "--model", model, "--data", data, "--num-generations", "3", "--max-completion-length", "6",
                      "--batch-size", "2", "--lora-r", "4", "--lr", "1e-3", "--seed", "3"]
        let result = try run(common + ["--output", output, "--max-steps", "2", "--reward-function", "exact_match", "--reward-command", command,
                                       "--reward-function", "length_penalty:2", "--reward-weights", "1,0.5,0.1", "--beta", "0.04",
                                       "--save-steps", "1", "--report-to", "jsonl,tensorboard"])
        XCTAssertEqual(result.status, 0, result.err)
        // TensorBoard events and the SVG of the curves (reward panel included) beside metrics.jsonl.
        let events = try FileManager.default.contentsOfDirectory(atPath: output + "/tensorboard")
        XCTAssertEqual(events.filter { $0.hasPrefix("events.out.tfevents.") }.count, 1, "\(events)")
        let svg = try String(contentsOfFile: output + "/metrics.svg", encoding: .utf8)
        XCTAssertTrue(svg.contains(">reward</text>") && svg.contains("<polyline"), svg)
        let plotted = temporary.appendingPathComponent("curves.svg").path
        let plot = try run(["plot", output, "--output", plotted])
        XCTAssertEqual(plot.status, 0, plot.err)
        XCTAssertEqual(try String(contentsOfFile: plotted, encoding: .utf8), svg)
        // The same run from YAML: reward_function as a list.
        let yaml = try write("grpo.yaml", """
            method: grpo
            model: \(model)
            data: \(data)
            output: \(temporary.appendingPathComponent("yaml").path)
            num_generations: 2
            max_completion_length: 4
            max_steps: 1
            reward_function:
              - exact_match
              - "format:[0-9]+"
            """)
        let fromYAML = try run(["train", "--config", yaml])
        XCTAssertEqual(fromYAML.status, 0, fromYAML.err)
        let yamlLog = try String(contentsOfFile: temporary.appendingPathComponent("yaml/metrics.jsonl").path, encoding: .utf8)
        XCTAssertTrue(yamlLog.contains("rewards\\/format\\/mean") && yamlLog.contains("rewards\\/exact_match\\/mean"), yamlLog)
        XCTAssertTrue(result.out.contains("reward "), result.out)
        XCTAssertTrue(result.out.contains("generation "), result.out)
        let logged = try String(contentsOfFile: output + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").map {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
        }
        XCTAssertEqual(logged.count, 2)
        for key in ["loss", "reward", "reward_std", "frac_reward_zero_std", "rewards/exact_match/mean", "rewards/awk/mean",
                    "rewards/length_penalty/std", "completions/mean_length", "completions/clipped_ratio", "completions/max_length",
                    "kl", "entropy", "clip_ratio/region_mean", "num_tokens", "time/generation"] {
            XCTAssertNotNil(logged[0][key], "metrics.jsonl lacks \(key): \(logged[0].keys.sorted())")
        }
        XCTAssertLessThanOrEqual(logged[0]["completions/max_length"] as? Double ?? 99, 6)
        XCTAssertEqual(try PEFTAdapter.config(directory: output).rank, 4)

        // A reward command that fails on its second call: the run stops naming it and its stderr,
        // and the step-1 checkpoint is still whole.
        let counter = temporary.appendingPathComponent("calls").path
        let failing = "n=$(cat \(counter) 2>/dev/null || echo 0); echo $((n+1)) > \(counter); "
            + "if [ $n -ge 1 ]; then echo 'reward server unreachable' >&2; exit 4; fi; awk '{ print 1 }'"
        let stopped = temporary.appendingPathComponent("stopped").path
        let failure = try run(common + ["--output", stopped, "--max-steps", "3", "--reward-command", failing, "--save-steps", "1"])
        XCTAssertEqual(failure.status, 1)
        XCTAssertTrue(failure.err.contains("exited with status 4") && failure.err.contains("reward server unreachable"), failure.err)
        let checkpoints = try FileManager.default.contentsOfDirectory(atPath: stopped)
        XCTAssertEqual(checkpoints.filter { $0.hasPrefix("checkpoint-") }.sorted(), ["checkpoint-1"], "\(checkpoints)")
        let resumed = try run(common + ["--output", stopped, "--max-steps", "2", "--reward-command", "awk '{ print 1 }'", "--resume"])
        XCTAssertEqual(resumed.status, 0, resumed.err)
        XCTAssertTrue(resumed.out.contains("resuming at step 1"), resumed.out)

        let noPrompt = temporary.appendingPathComponent("no-prompt.jsonl").path
        try #"{"question": "What is 2 + 2?", "answer": "4"}"#.write(toFile: noPrompt, atomically: true, encoding: .utf8)
        let missing = try run(["train", "--method", "grpo", "--model", model, "--data", noPrompt, "--output", temporary.appendingPathComponent("m").path,
                               "--reward-function", "exact_match"])
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.err.contains("no-prompt.jsonl:1") && missing.err.contains("field 'prompt'") && missing.err.contains("question"), missing.err)
        let single = try run(common + ["--output", temporary.appendingPathComponent("s").path, "--num-generations", "1", "--reward-function", "format"])
        XCTAssertEqual(single.status, 1)
        XCTAssertTrue(single.err.contains("num_generations") && single.err.contains("no group to normalise over"), single.err)
    }

    /// `--model owner/name` trains from the Hugging Face cache (HF_HUB_CACHE), offline.
    func testTrainsAModelNamedByRepoIDFromTheCache() throws {
        let cache = temporary.appendingPathComponent("hub")
        let snapshot = cache.appendingPathComponent("models--finch-test--chat/snapshots/" + String(repeating: "c", count: 40))
        try FileManager.default.createDirectory(at: snapshot.deletingLastPathComponent(), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: try model(), toPath: snapshot.path)
        try FileManager.default.createDirectory(at: cache.appendingPathComponent("models--finch-test--chat/refs"), withIntermediateDirectories: true)
        try String(repeating: "c", count: 40).write(to: cache.appendingPathComponent("models--finch-test--chat/refs/main"), atomically: true, encoding: .utf8)
        let output = temporary.appendingPathComponent("by-id").path
        let result = try run(["train", "--method", "orpo", "--model", "finch-test/chat", "--data", try preferenceData(), "--output", output,
                              "--max-steps", "1", "--lora-r", "4"], environment: ["HF_HUB_CACHE": cache.path])
        XCTAssertEqual(result.status, 0, result.err)
        let adapter = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: output + "/adapter_config.json"))) as! [String: Any]
        XCTAssertEqual(adapter["base_model_name_or_path"] as? String, "finch-test/chat", "the adapter names the repo id, as PEFT's do")
        let missing = try run(["train", "--model", "finch-test/none", "--data", try preferenceData(), "--output", temporary.appendingPathComponent("m").path],
                              environment: ["HF_HUB_CACHE": cache.path])
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.err.contains("not in the Hugging Face cache"), missing.err)
    }

    /// `--field` reads rows whose fields have other names (question / answer) as prompt / completion.
    func testFieldMappingOnTheCommandLine() throws {
        let data = temporary.appendingPathComponent("qa.jsonl").path
        try (0..<4).map { #"{"question": "What is \#($0) + 1?", "answer": " \#($0 + 1)."}"# }.joined(separator: "\n")
            .appending("\n").write(toFile: data, atomically: true, encoding: .utf8)
        let output = temporary.appendingPathComponent("qa").path
        let ok = try run(["train", "--method", "sft", "--model", try model(), "--data", data, "--output", output, "--max-steps", "1",
                          "--lora-r", "4", "--field", "prompt=question,completion=answer"])
        XCTAssertEqual(ok.status, 0, ok.err)
        let unmapped = try run(["train", "--method", "sft", "--model", try model(), "--data", data, "--output", temporary.appendingPathComponent("u").path])
        XCTAssertEqual(unmapped.status, 1)
        XCTAssertTrue(unmapped.err.contains("qa.jsonl:1") && unmapped.err.contains("cannot tell the dataset format"), unmapped.err)
    }

    /// Malformed rows of several kinds: each stops a run naming its file and line (and field),
    /// and with --skip-bad-rows the run counts them, names the first ones, and trains on the rest;
    /// --validation-split holds out a share of the rows for evaluation.
    func testBadRowsAreNamedOrSkippedAndAValidationSplit() throws {
        let good = (0..<6).map { #"{"prompt": "Say \#($0).", "completion": " \#($0)."}"# }
        let bad = [
            "not json at all",
            "[1, 2, 3]",
            "42",
            "null",
            #""a string line""#,
            #"{"prompt": "no completion"}"#,
            #"{"prompt": 3, "completion": "x"}"#,
            #"{"prompt": "a", "completion": null}"#,
            #"{"prompt": {"a": 1}, "completion": "x"}"#,
            #"{"prompt": ["a"], "completion": "mixed"}"#,
            #"{"messages": [{"role": "user"}]}"#,
            #"{"messages": "hi"}"#,
            #"{"messages": [{"role": 1, "content": "x"}]}"#,
            #"{"conversations": [{"from": "human"}]}"#,
            #"{"instruction": "x", "output": 3}"#,
            #"{"instruction": 5, "output": "x"}"#,
            #"{"text": 7}"#,
            #"{"text": null}"#,
            #"{"text": ["a"]}"#,
            #"{}"#,
            #"{"unknown": 1}"#,
            #"{"chosen": "a", "rejected": "b"}"#,
        ]
        let lines = good.prefix(3) + bad + good.suffix(3)
        let data = temporary.appendingPathComponent("mixed.jsonl").path
        try (lines.joined(separator: "\n") + "\n").write(toFile: data, atomically: true, encoding: .utf8)
        for (i, row) in bad.enumerated() {
            let one = temporary.appendingPathComponent("bad\(i).jsonl").path
            try (good[0] + "\n" + row + "\n").write(toFile: one, atomically: true, encoding: .utf8)
            let r = try run(["train", "--method", "sft", "--model", try model(), "--data", one, "--output", temporary.appendingPathComponent("o\(i)").path])
            XCTAssertEqual(r.status, 1, row)
            XCTAssertTrue(r.err.contains("bad\(i).jsonl:2"), "\(row): \(r.err)")
        }
        let output = temporary.appendingPathComponent("skip").path
        let r = try run(["train", "--method", "sft", "--model", try model(), "--data", data, "--output", output, "--max-steps", "2",
                         "--lora-r", "4", "--skip-bad-rows", "--validation-split", "0.34"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("\(bad.count) skipped as unreadable"), r.out)
        XCTAssertTrue(r.out.contains("skipped: mixed.jsonl:4"), r.out)
        let metrics = try String(contentsOfFile: output + "/metrics.jsonl", encoding: .utf8)
        XCTAssertTrue(metrics.contains("eval_loss"), "the held-out rows are evaluated")
        let both = try run(["train", "--model", try model(), "--data", data, "--output", temporary.appendingPathComponent("b").path,
                            "--validation-split", "0.2", "--eval-data", data])
        XCTAssertTrue(both.err.contains("validation_split") && both.err.contains("eval_data"), both.err)
    }

    func losses(_ run: String) throws -> [Double] {
        try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").compactMap {
            (try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["loss"] as? Double
        }
    }

    /// `--precision` is recorded with its reason; fp32 gives the same losses with the kernels
    /// limited to AVX2 (FINCH_ISA=avx2) as on the native path, and bf16 stays close to fp32.
    func testPrecisionChoiceAndISAOverride() throws {
        let model = try model(), data = try preferenceData()
        func train(_ name: String, _ precision: String, environment: [String: String] = [:]) throws -> String {
            let output = temporary.appendingPathComponent(name).path
            let r = try run(trainArguments(model: model, data: data, output: output) + ["--precision", precision], environment: environment)
            XCTAssertEqual(r.status, 0, r.err)
            if precision != "auto" { XCTAssertTrue(r.out.contains("precision: \(precision) ("), r.out) }
            return output
        }
        let native = try train("native", "fp32"), avx2 = try train("avx2", "fp32", environment: ["FINCH_ISA": "avx2"])
        let (a, b) = (try losses(native), try losses(avx2))
        XCTAssertEqual(a.count, 6)
        for (x, y) in zip(a, b) { XCTAssertEqual(x, y, accuracy: 1e-5 * abs(y), "fp32 losses differ between the native and AVX2 paths") }
        let record = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: avx2 + "/run.json"))) as! [String: Any]
        let precision = record["precision"] as? [String: String]
        XCTAssertEqual(precision?["chosen"], "fp32")
        XCTAssertTrue(precision?["cpu"]?.contains("FINCH_ISA=avx2") == true, "\(String(describing: precision))")

        // Without oneDNN (the path a machine without libdnnl takes): OpenBLAS, the same losses.
        let openBLAS = try losses(try train("openblas", "fp32", environment: ["FINCH_GEMM": "openblas"]))
        for (x, y) in zip(openBLAS, a) { XCTAssertEqual(x, y, accuracy: 1e-5 * abs(y), "fp32 losses differ between OpenBLAS and oneDNN") }
        let bf16 = try losses(try train("bf16", "bf16"))
        for (x, y) in zip(bf16, a) { XCTAssertEqual(x, y, accuracy: 2e-2 * abs(y), "bf16 loss far from fp32") }
        XCTAssertNotEqual(bf16, a, "bf16 products changed nothing")
        let auto = try train("auto", "auto", environment: ["FINCH_ISA": "avx2"])
        let autoRecord = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: auto + "/run.json"))) as! [String: Any]
        XCTAssertEqual((autoRecord["precision"] as? [String: String])?["chosen"], "fp32", "auto under FINCH_ISA=avx2 has no native bf16")
    }

    /// A diverging run stops at the first step whose loss or gradient is not finite, or whose
    /// model collapsed to uniform predictions, naming the step; earlier checkpoints stay loadable
    /// (issue 18: --lr 1e6 saved a collapsed model with exit 0, --lr 1e30 a NaN adapter).
    func testDivergenceStopsNamingTheStep() throws {
        let model = try model(), data = try preferenceData()
        for lr in ["1e6", "1e30"] {
            let output = temporary.appendingPathComponent("lr\(lr)").path
            var arguments = trainArguments(model: model, data: data, output: output)
            arguments[arguments.firstIndex(of: "--lr")! + 1] = lr
            arguments[arguments.firstIndex(of: "--save-steps")! + 1] = "1"
            arguments[arguments.firstIndex(of: "--warmup-steps")! + 1] = "0"
            let r = try run(arguments + ["--max-grad-norm", "0"])
            XCTAssertEqual(r.status, 1, "lr \(lr): \(r.out)")
            XCTAssertTrue(r.err.contains("step ") && (r.err.contains("not finite") || r.err.contains("collapsed")), "lr \(lr): \(r.err)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: output + "/adapter_model.safetensors"), "lr \(lr): a final adapter was saved")
            let checkpoints = try FileManager.default.contentsOfDirectory(atPath: output).filter { $0.hasPrefix("checkpoint-") }
            for c in checkpoints { XCTAssertNoThrow(try PEFTAdapter.config(directory: output + "/" + c), c) }
        }
    }

    /// `--nan-policy skip-step`: a non-finite step leaves the adapter exactly as it was (the
    /// checkpoints of skipped steps hold the same bytes), says so, and a run that never recovers
    /// stops after 10 skipped steps in a row, naming the step.
    func testNaNPolicySkipStep() throws {
        let model = try model(), data = try preferenceData()
        let output = temporary.appendingPathComponent("skip").path
        var arguments = trainArguments(model: model, data: data, output: output)
        arguments[arguments.firstIndex(of: "--lr")! + 1] = "1e30"
        arguments[arguments.firstIndex(of: "--save-steps")! + 1] = "1"
        arguments[arguments.firstIndex(of: "--warmup-steps")! + 1] = "0"
        let r = try run(arguments + ["--max-grad-norm", "0", "--nan-policy", "skip-step", "--max-steps", "40"])
        XCTAssertEqual(r.status, 1, r.out)
        XCTAssertTrue(r.err.contains("not finite"), r.err)
        let skipped = r.out.split(separator: "\n").filter { $0.contains("skipped without updating") }
        XCTAssertEqual(skipped.count, 9, "9 skipped, the 10th in a row stops: \(r.out)")
        let firstSkipped = try XCTUnwrap(skipped.first.flatMap { Int($0.dropFirst(5).prefix { $0.isNumber }) })
        func adapter(_ step: Int) throws -> Data {
            try Data(contentsOf: URL(fileURLWithPath: output + "/checkpoint-\(step)/adapter_model.safetensors"))
        }
        if firstSkipped > 1 {
            XCTAssertEqual(try adapter(firstSkipped), try adapter(firstSkipped - 1), "a skipped step changed the adapter")
            XCTAssertEqual(try adapter(firstSkipped + 8), try adapter(firstSkipped - 1))
        }
        let metrics = try String(contentsOfFile: output + "/metrics.jsonl", encoding: .utf8)
        XCTAssertTrue(metrics.contains("\"skipped_steps\":9"), metrics)
    }
}
