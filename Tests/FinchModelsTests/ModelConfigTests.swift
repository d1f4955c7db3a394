import Foundation
import XCTest
import FinchTestSupport
@testable import FinchKernels
@testable import FinchIO
@testable import FinchModels

final class ModelConfigTests: XCTestCase {
    private let base: [String: Any] = [
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 1, "vocab_size": 160, "rms_norm_eps": 1e-5,
        "bos_token_id": 1, "eos_token_id": 0, "max_position_embeddings": 512, "tie_word_embeddings": false,
    ]

    private func config(_ changes: [String: Any?]) throws -> ModelConfig {
        var json = base
        for (key, value) in changes { json[key] = value }
        return try ModelConfig(json: json, path: "test/config.json")
    }

    func testParsesFields() throws {
        let c = try config([:])
        XCTAssertEqual(c.modelType, "llama")
        XCTAssertEqual(c.hiddenSize, 64)
        XCTAssertEqual(c.intermediateSize, 128)
        XCTAssertEqual(c.layerCount, 2)
        XCTAssertEqual(c.headCount, 4)
        XCTAssertEqual(c.kvHeadCount, 1, "1 is an integer, not a boolean")
        XCTAssertEqual(c.headDim, 16)
        XCTAssertEqual(c.vocabSize, 160)
        XCTAssertEqual(c.bosTokenId, 1)
        XCTAssertEqual(c.eosTokenIds, [0])
        XCTAssertEqual(c.maxPositionEmbeddings, 512)
        XCTAssertEqual(c.ropeTheta, 10000)
        XCTAssertEqual(c.ropeScaling, RopeScaling.none)
        XCTAssertFalse(c.attentionBias)
        XCTAssertEqual(try config(["head_dim": 32]).headDim, 32)
        XCTAssertEqual(try config(["num_key_value_heads": nil]).kvHeadCount, 4)
        XCTAssertEqual(try config(["eos_token_id": [2, 7]]).eosTokenIds, [2, 7])
        XCTAssertTrue(try config(["model_type": "qwen2"]).attentionBias)
        XCTAssertTrue(try config(["model_type": "qwen3"]).qkNorm)
        XCTAssertTrue(try config(["tie_word_embeddings": true]).tieWordEmbeddings)
    }

    func testMissingHiddenSizeIsNamed() {
        IOTestSupport.assertLoadError(try config(["hidden_size": nil]), mentions: ["test/config.json", "hidden_size", "nothing", "integer"])
        IOTestSupport.assertLoadError(try config(["hidden_size": "64"]), mentions: ["test/config.json", "hidden_size", "integer"])
    }

    /// Sizes and numbers that crashed or were accepted silently (issue 18): each a one-line error
    /// naming the file and the field.
    func testInsaneSizesAndNumbersAreNamed() {
        let cases: [([String: Any?], String)] = [
            (["head_dim": -16], "head_dim"), (["head_dim": 100_000_000_000_000], "head_dim"), (["head_dim": 15], "head_dim"),
            (["num_hidden_layers": 0], "num_hidden_layers"), (["num_hidden_layers": 2_147_483_648], "num_hidden_layers"),
            (["num_key_value_heads": 3], "num_key_value_heads"), (["rms_norm_eps": -1.0], "rms_norm_eps"),
            (["rope_theta": 0], "rope_theta"), (["max_position_embeddings": 0], "max_position_embeddings"),
            (["bos_token_id": 160], "bos_token_id"), (["eos_token_id": [0, 99999]], "eos_token_id"),
            (["vocab_size": 1 << 30], "vocab_size"),
        ]
        for (change, field) in cases {
            IOTestSupport.assertLoadError(try config(change), mentions: ["test/config.json", field])
        }
        XCTAssertNoThrow(try config(["head_dim": 32]))
    }

    func testUnsupportedModelTypeListsSupported() {
        IOTestSupport.assertLoadError(try config(["model_type": "gpt_neox"]),
                                      mentions: ["test/config.json", "model_type", "gpt_neox"] + ModelConfig.supportedModelTypes)
        IOTestSupport.assertLoadError(try config(["model_type": nil]), mentions: ["test/config.json", "model_type"])
    }

    /// transformers 4.x writes `rope_theta` + `rope_scaling`; 5.x writes `rope_parameters`.
    func testRopeParametersAndRopeThetaForms() throws {
        let llama3: [String: Any] = ["factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192]
        var old = llama3
        old["rope_type"] = "llama3"
        let fromOld = try config(["rope_theta": 500000.0, "rope_scaling": old])
        var new = llama3
        new["rope_type"] = "llama3"
        new["rope_theta"] = 500000.0
        let fromNew = try config(["rope_parameters": new])
        XCTAssertEqual(fromOld, fromNew)
        XCTAssertEqual(fromNew.ropeTheta, 500000)
        XCTAssertEqual(fromNew.ropeScaling, .llama3(factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192))

        let plain = try config(["rope_parameters": ["rope_type": "default", "rope_theta": 1_000_000.0]])
        XCTAssertEqual(plain.ropeTheta, 1_000_000)
        XCTAssertEqual(plain.ropeScaling, RopeScaling.none)
        XCTAssertEqual(try config(["rope_theta": 250000.0]).ropeTheta, 250000)
        XCTAssertEqual(try config(["rope_scaling": ["type": "linear", "factor": 2.0]]).ropeScaling, .linear(factor: 2))
        XCTAssertEqual(try config(["rope_scaling": NSNull()]).ropeScaling, RopeScaling.none)

        IOTestSupport.assertLoadError(try config(["rope_parameters": ["rope_type": "yarn", "rope_theta": 10000.0]]),
                                      mentions: ["test/config.json", "yarn", "llama3"])
        IOTestSupport.assertLoadError(try config(["rope_scaling": ["rope_type": "llama3", "factor": 8.0]]),
                                      mentions: ["test/config.json", "low_freq_factor"])
    }

    func testLoadsParityConfigs() throws {
        for name in ["llama_scaled", "llama_tied", "qwen2_bias", "qwen3_qknorm"] {
            let c = try ModelConfig.load(path: IOTestSupport.fixture("parity/\(name)/config.json"))
            XCTAssertEqual(c.bosTokenId, 1, name)
            XCTAssertGreaterThan(c.hiddenSize, 0, name)
        }
        XCTAssertEqual(try ModelConfig.load(path: IOTestSupport.fixture("parity/llama_scaled/config.json")).ropeScaling,
                       .llama3(factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 64))
    }

    func testFileErrors() throws {
        let folder = IOTestSupport.temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let file = (folder as NSString).appendingPathComponent("config.json")
        IOTestSupport.assertLoadError(try ModelConfig.load(path: file), mentions: [file, "no such file"])
        IOTestSupport.writeBytes(Array("{\"model_type\": ".utf8), to: file)
        IOTestSupport.assertLoadError(try ModelConfig.load(path: file), mentions: [file, "JSON"])
        IOTestSupport.writeBytes(Array("[1]".utf8), to: file)
        IOTestSupport.assertLoadError(try ModelConfig.load(path: file), mentions: [file, "JSON object"])
    }

    /// Each family of the registry reads its config.json and writes one that reads back the
    /// same, naming its architecture; an unknown model_type names every family.
    func testEveryFamilyRoundTripsThroughConfigJSON() throws {
        for family in ModelFamily.all {
            let minimal: [String: Any] = ["model_type": family.modelType, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 8,
                                          "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128]
            let config = try ModelConfig(json: minimal, path: "config.json")
            let json = config.huggingFaceJSON()
            XCTAssertEqual((json["architectures"] as? [String])?.first, family.hfArchitecture)
            let text = try JSONSerialization.data(withJSONObject: json)
            XCTAssertEqual(try ModelConfig(json: JSONSerialization.jsonObject(with: text) as! [String: Any], path: "config.json"), config, family.modelType)
        }
        XCTAssertEqual(try ModelConfig(json: ["model_type": "smollm3", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 8,
                                              "num_attention_heads": 4, "vocab_size": 128], path: "c").layersWithoutRope, [3, 7])
        XCTAssertThrowsError(try ModelConfig(json: ["model_type": "gemma9"], path: "c")) {
            XCTAssertEqual("\($0)".contains(ModelFamily.all.map(\.modelType).joined(separator: ", ")), true, "\($0)")
        }
    }
}
