import XCTest
import FinchTestSupport
@testable import Finch
@testable import FinchKernels
@testable import FinchIO
@testable import FinchModels
@testable import FinchGeneration
@testable import FinchTraining
@testable import FinchExport

/// Qwen3-MoE, Mixtral and OLMoE against transformers + peft (fixtures `qwen3_moe`, `mixtral_moe`,
/// `olmoe_moe` of reference/make_parity_fixtures.py: 4 experts, top 2, Qwen3-MoE with a dense
/// layer, OLMoE without renormalising, every fixture with the load-balancing loss in its loss at
/// coefficient 0.1): logits, the loss with its auxiliary term, every full and LoRA gradient
/// (router and experts included, LoRA on the experts in PEFT's `target_parameters` layout), and
/// 32 greedy steps with the KV cache.
final class MixtureOfExpertsTests: TemporaryDirectoryTestCase {
    typealias S = TestSupport
    typealias Fixture = ParityTests.Fixture
    static let models = ["qwen3_moe", "mixtral_moe", "olmoe_moe"]

    func testConfigsReadAsTransformersReadsThem() throws {
        let q = try ModelFiles.open(Fixture("qwen3_moe").directory).config
        XCTAssertEqual(q.experts, MixtureOfExperts(expertCount: 4, topK: 2, intermediateSize: 32, normalizesTopK: true, routerAuxLossCoef: 0.1,
                                                   outputRouterLogits: true, denseLayers: [1], naming: .qwen))
        XCTAssertTrue(q.qkNorm)
        XCTAssertFalse(q.qkNormSpansHeads)
        let m = try ModelFiles.open(Fixture("mixtral_moe").directory).config
        XCTAssertEqual(m.experts?.naming, .mixtral)
        XCTAssertEqual(m.experts?.normalizesTopK, true)
        XCTAssertEqual(m.experts?.intermediateSize, 32)
        let o = try ModelFiles.open(Fixture("olmoe_moe").directory).config
        XCTAssertEqual(o.experts?.normalizesTopK, false)
        XCTAssertTrue(o.qkNormSpansHeads)
        for c in [q, m, o] { XCTAssertEqual(try ModelConfig(json: c.huggingFaceJSON(), path: "written"), c, c.modelType) }
        // Errors name the key.
        var json = q.huggingFaceJSON(); json["num_experts_per_tok"] = 5
        XCTAssertThrowsError(try ModelConfig(json: json, path: "c.json")) { XCTAssertTrue("\($0)".contains("num_experts_per_tok"), "\($0)") }
        json = m.huggingFaceJSON(); json["num_local_experts"] = 100_000
        XCTAssertThrowsError(try ModelConfig(json: json, path: "c.json")) { XCTAssertTrue("\($0)".contains("num_local_experts: found 100000"), "\($0)") }
        json = o.huggingFaceJSON(); json["clip_qkv"] = 8.0
        XCTAssertThrowsError(try ModelConfig(json: json, path: "c.json")) { XCTAssertTrue("\($0)".contains("clip_qkv"), "\($0)") }
    }

    func testBaseLogitsAndLossMatchTransformers() throws {
        for name in Self.models {
            let f = try Fixture(name)
            let model = try Transformer(files: ModelFiles.open(f.directory))
            XCTAssertLessThan(S.maxRelativeError(model.logits(f.batch), f.tensor("logits")), 1e-4, name)
            let nll = model.negativeLogLikelihood(f.batch, targets: f.targets)
            XCTAssertEqual(Float(nll.sum / Double(nll.count)), f.tensor("ce_loss")[0], accuracy: 1e-5 * f.tensor("ce_loss")[0], name)
        }
    }

    /// transformers' parameter (a 3D stack of the experts for gate_up_proj and down_proj, `mlp.gate`
    /// for the router) and the slice of it each of Finch's per-expert tensors is.
    func expected(_ f: Fixture, _ tensor: String, config: ModelConfig) -> [Float]? {
        let parts = tensor.split(separator: ".").map(String.init)
        guard let moe = config.experts, parts.count > 5, let l = Int(parts[2]) else { return f.tensor("grad.full." + tensor) }
        let p = "grad.full.model.layers.\(l).mlp."
        if tensor.hasSuffix(moe.routerModule + ".weight") { return f.tensor(p + "gate.weight") }
        guard tensor.contains(".experts."), let e = Int(parts[5]) else { return f.tensor("grad.full." + tensor) }
        let I = moe.intermediateSize, C = config.hiddenSize
        let which = moe.expertModules(e).firstIndex { tensor.hasSuffix($0 + ".weight") }!
        if which == 2 { return Array(f.tensor(p + "experts.down_proj")[(e * C * I)..<((e + 1) * C * I)]) }
        let stack = f.tensor(p + "experts.gate_up_proj"), start = e * 2 * I * C + which * I * C
        return Array(stack[start..<start + I * C])
    }

    func testFullFineTuningGradientsAndLoadBalancingLossMatchTransformers() throws {
        for name in Self.models {
            let f = try Fixture(name)
            let model = try Transformer(files: ModelFiles.open(f.directory), fineTuning: .full)
            XCTAssertEqual(model.routerAuxLossCoef, 0.1, name)
            let count = f.targets.filter { $0 >= 0 }.count
            let r = model.crossEntropyStep(f.batch, targets: f.targets, weight: 1 / Float(count))
            XCTAssertEqual(Float(r.sum / Double(r.count)), f.tensor("ce_loss")[0], accuracy: 1e-5 * f.tensor("ce_loss")[0], name)
            let aux = model.takeRouterAuxShare()
            XCTAssertEqual(Float(aux), f.tensor("aux_loss")[0], accuracy: 1e-5 * f.tensor("aux_loss")[0], name)
            XCTAssertEqual(Float(r.sum / Double(r.count) + 0.1 * aux), f.tensor("loss")[0], accuracy: 1e-5 * f.tensor("loss")[0], name)
            let gradients = model.weightsForSaving(gradients: true)
            let expectedCount = f.expected.keys.filter { $0.hasPrefix("grad.full.") }.count
            let moe = model.config.experts!
            let routed = (0..<model.config.layerCount).filter { moe.routes(layer: $0) }.count
            // Finch holds each expert's gate, up and down apart; transformers two stacks per layer.
            XCTAssertEqual(gradients.count, expectedCount + routed * (3 * moe.expertCount - 2), name)
            for (tensor, _, values) in gradients {
                let want = try XCTUnwrap(expected(f, tensor, config: model.config), "\(name) \(tensor)")
                XCTAssertLessThan(S.relativeL2(values, want), 1e-3, "\(name) \(tensor)")
            }
        }
    }

    func testLoRALogitsAndGradientsMatchPEFTWithExpertParameters() throws {
        for name in Self.models {
            let f = try Fixture(name)
            let adapter = f.directory + "/adapter"
            let config = try PEFTAdapter.config(directory: adapter)
            XCTAssertTrue(config.targets.contains("experts.gate_up_proj") && config.targets.contains("experts.down_proj"), name)
            let model = try Transformer(files: ModelFiles.open(f.directory), fineTuning: .lora(config))
            try PEFTAdapter.load(directory: adapter, into: model)
            XCTAssertLessThan(S.maxRelativeError(model.logits(f.batch), f.tensor("lora_logits")), 1e-4, name)
            let count = f.targets.filter { $0 >= 0 }.count
            let r = model.crossEntropyStep(f.batch, targets: f.targets, weight: 1 / Float(count))
            let loss = Float(r.sum / Double(r.count) + 0.1 * model.takeRouterAuxShare())
            XCTAssertEqual(loss, f.tensor("lora_loss")[0], accuracy: 1e-5 * f.tensor("lora_loss")[0], name)
            let parameters = model.parameters!
            XCTAssertEqual(parameters.entries.count, f.expected.keys.filter { $0.hasPrefix("grad.lora.") }.count, name)
            for entry in parameters.entries {
                XCTAssertLessThan(S.relativeL2(parameters.array(entry.name, gradient: true)!, f.tensor("grad.lora." + entry.name)), 1e-3,
                                  "\(name) \(entry.name)")
            }
        }
    }

    func testGreedyDecodingMatchesTransformers() throws {
        for name in Self.models { try ParityTests.assertGreedyMatchesTransformers(name) }
    }

    /// OLMoE as llama.cpp's `olmoe` GGUF: each layer's experts stacked as `ffn_{gate,up,down}_exps`
    /// [E, rows, columns], the router `ffn_gate_inp` in f32; read back (stacks split into each
    /// expert's rows), the NLL is the HF folder's; q8_0 stacks quantize by rows as any matrix.
    /// reference/check_moe_gguf.py checks such files against llama.cpp and transformers.
    func testGGUFStacksTheExpertsAndReadsBackToTheSameNLL() throws {
        for (name, arch) in [("olmoe_moe", "olmoe"), ("mixtral_moe", "llama")] {
            let f = try Fixture(name)
            let source = try ModelFiles.open(f.directory).config
            let hf = try Transformer(files: ModelFiles.open(f.directory)).negativeLogLikelihood(f.batch, targets: f.targets)
            for dtype in [ExportDType.f32, .q8_0] {
                let path = temporary.appendingPathComponent("\(name)-\(dtype).gguf").path
                let summary = try Exporter.export(ExportOptions(model: f.directory, format: .gguf, dtype: dtype, output: path))
                let gguf = try GGUFFile(path: path)
                XCTAssertEqual(gguf.metadata["general.architecture"]?.string, arch, name)
                XCTAssertEqual(gguf.metadata["\(arch).expert_count"]?.int, 4, name)
                XCTAssertEqual(gguf.metadata["\(arch).expert_used_count"]?.int, 2, name)
                XCTAssertEqual(gguf.tensors["blk.1.ffn_gate_exps.weight"]?.shape, [4, 32, 64], name)
                XCTAssertEqual(gguf.tensors["blk.1.ffn_down_exps.weight"]?.shape, [4, 64, 32], name)
                XCTAssertEqual(gguf.tensors["blk.1.ffn_gate_inp.weight"]?.dtype, .f32, name)
                XCTAssertEqual(gguf.tensors["blk.1.ffn_up_exps.weight"]?.dtype, dtype == .f32 ? .f32 : .q8_0, name)
                XCTAssertEqual(summary.tensorCount, gguf.tensors.count, name)
                let files = try ModelFiles.open(path)
                XCTAssertEqual(files.config.modelType, source.modelType, name)
                var expected = source.experts!
                expected.outputRouterLogits = false
                expected.routerAuxLossCoef = files.config.experts?.routerAuxLossCoef ?? -1
                XCTAssertEqual(files.config.experts, expected, name)
                let back = try Transformer(files: files).negativeLogLikelihood(f.batch, targets: f.targets)
                let (a, b) = (hf.sum / Double(hf.count), back.sum / Double(back.count))
                XCTAssertEqual(b, a, accuracy: (dtype == .f32 ? 1e-5 : 1e-2) * a, "\(name) \(dtype)")
            }
        }
        // llama.cpp's qwen3moe routes every layer and renormalises: Qwen3-MoE's fixture has a dense layer.
        XCTAssertThrowsError(try Exporter.export(ExportOptions(model: Fixture("qwen3_moe").directory, format: .gguf,
                                                               output: temporary.appendingPathComponent("q.gguf").path))) {
            XCTAssertTrue("\($0)".contains("mlp_only_layers"), "\($0)")
        }
    }

    /// An adapter with LoRA on the experts merges into each expert's matrices (gate and up from
    /// gate_up's pair): the merged HF folder gives PEFT's logits, and so does a merged GGUF; a
    /// GGUF adapter of expert pairs is refused (llama.cpp's LoRA format has no such tensors).
    func testAdaptersOnTheExpertsMergeIntoEachExpert() throws {
        for name in Self.models {
            let f = try Fixture(name)
            let folder = temporary.appendingPathComponent("\(name)-merged").path
            let summary = try Exporter.export(ExportOptions(model: f.directory, adapter: f.directory + "/adapter", format: .hf, output: folder))
            let config = try ModelFiles.open(f.directory).config, moe = try XCTUnwrap(config.experts)
            let routed = (0..<config.layerCount).filter { moe.routes(layer: $0) }.count
            XCTAssertEqual(summary.mergedModules, 4 * config.layerCount + 2 * routed, name)   // q, k, v, o; the two expert stacks
            let merged = try Transformer(files: ModelFiles.open(folder))
            XCTAssertLessThan(S.maxRelativeError(merged.logits(f.batch), f.tensor("lora_logits")), 1e-4, name)
        }
        let f = try Fixture("olmoe_moe")
        let path = temporary.appendingPathComponent("olmoe-merged.gguf").path
        try Exporter.export(ExportOptions(model: f.directory, adapter: f.directory + "/adapter", format: .gguf, output: path))
        XCTAssertLessThan(S.maxRelativeError(try Transformer(files: ModelFiles.open(path)).logits(f.batch), f.tensor("lora_logits")), 1e-4)
        XCTAssertThrowsError(try Exporter.export(ExportOptions(model: f.directory, adapter: f.directory + "/adapter", format: .ggufLoRA,
                                                               output: temporary.appendingPathComponent("a.gguf").path))) {
            XCTAssertTrue("\($0)".contains("target_parameters"), "\($0)")
        }
    }

    /// Saved again, an adapter on the experts keeps PEFT's names, layout and patterns
    /// (`target_parameters`, gate_up_proj's rank_pattern), and reads back to the same logits.
    /// (`FINCH_MOE_ADAPTER_OUT=DIR` keeps a copy of Qwen3-MoE's, for checking with peft.)
    func testAdapterOnTheExpertsRoundTripsInPEFTFormat() throws {
        for name in Self.models {
            let f = try Fixture(name)
            let config = try PEFTAdapter.config(directory: f.directory + "/adapter")
            let peft = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: f.directory + "/adapter/adapter_config.json"))) as! [String: Any]
            let patterns = peft["rank_pattern"] as? [String: Int] ?? [:]
            XCTAssertEqual(config.expertRanks, patterns.isEmpty ? [:] : ["experts.gate_up_proj": 8], name)   // PEFT doubles it for some models
            let model = try Transformer(files: ModelFiles.open(f.directory), fineTuning: .lora(config))
            try PEFTAdapter.load(directory: f.directory + "/adapter", into: model)
            let out = ProcessInfo.processInfo.environment["FINCH_MOE_ADAPTER_OUT"].flatMap { name == "qwen3_moe" ? $0 : nil }
                ?? temporary.appendingPathComponent(name).path
            try PEFTAdapter.save(model, to: out)
            let saved = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/adapter_config.json"))) as! [String: Any]
            XCTAssertEqual(saved["target_parameters"] as? [String], ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"], name)
            XCTAssertEqual(saved["rank_pattern"] as? [String: Int], patterns, name)
            let original = try SafeTensors.read(path: f.directory + "/adapter/adapter_model.safetensors")
            let written = try SafeTensors.read(path: out + "/adapter_model.safetensors")
            XCTAssertEqual(Set(written.keys), Set(original.keys), name)
            for (key, t) in original { XCTAssertEqual(dequantize(written[key]!), dequantize(t), "\(name) \(key)") }
            let again = try Transformer(files: ModelFiles.open(f.directory), fineTuning: .lora(PEFTAdapter.config(directory: out)))
            try PEFTAdapter.load(directory: out, into: again)
            XCTAssertEqual(again.logits(f.batch), model.logits(f.batch), name)
        }
    }

    /// Broken mixture-of-experts GGUFs are refused naming the tensor or key: a stack whose expert
    /// count disagrees with the metadata, more experts used than there are, a stack flattened to
    /// 2-D, a layer's router missing beside its experts, a stack missing.
    func testBrokenExpertGGUFsAreRefusedByName() throws {
        let f = try Fixture("olmoe_moe")
        let good = temporary.appendingPathComponent("o.gguf").path
        try Exporter.export(ExportOptions(model: f.directory, format: .gguf, output: good))
        let source = try GGUFFile(path: good)
        func variant(_ name: String, metadata change: [String: GGUFValue] = [:], tensors: (GGUFWriter.Tensor) -> GGUFWriter.Tensor? = { $0 }) throws -> String {
            let path = temporary.appendingPathComponent(name + ".gguf").path
            let metadata = source.metadataKeys.map { (key: $0, value: change[$0] ?? source.metadata[$0]!) }
            let kept = source.tensorNames.compactMap { n -> (GGUFWriter.Tensor, TensorData)? in
                let t = source.tensors[n]!
                return tensors(GGUFWriter.Tensor(name: n, shape: t.shape, dtype: t.dtype)).map { ($0, t) }
            }
            try GGUFWriter.write(path: path, metadata: metadata, tensors: kept.map(\.0)) { i, sink in
                try sink(UnsafeRawBufferPointer(start: kept[i].1.bytes, count: kept[i].1.byteCount))
            }
            return path
        }
        let cases: [(String, String)] = [
            (try variant("count", metadata: ["olmoe.expert_count": .uint32(3)]), "ffn_down_exps.weight' has shape [4, 64, 32], expected [3, 64, 32]"),
            (try variant("used", metadata: ["olmoe.expert_used_count": .uint32(9)]), "olmoe.expert_used_count: found 9"),
            (try variant("flat") { $0.name.contains("ffn_up_exps") ? GGUFWriter.Tensor(name: $0.name, shape: [128, 64], dtype: $0.dtype) : $0 },
             "ffn_up_exps.weight' has shape [128, 64]"),
            (try variant("router") { $0.name == "blk.1.ffn_gate_inp.weight" ? nil : $0 }, "which has no router"),
            (try variant("stack") { $0.name == "blk.0.ffn_down_exps.weight" ? nil : $0 }, "model.layers.0.mlp.experts.0.down_proj.weight' is missing"),
        ]
        for (path, message) in cases {
            XCTAssertThrowsError(try Transformer(files: ModelFiles.open(path))) { XCTAssertTrue("\($0)".contains(message), "\(path): \($0)") }
        }
    }
}
