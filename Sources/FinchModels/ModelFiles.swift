import Foundation
import FinchKernels
import FinchIO

/// A model's configuration and weights, under Hugging Face tensor names and layout, from
/// either an HF folder (`config.json` + safetensors) or a single GGUF file.
public struct ModelFiles: Sendable {
    /// The shape read from `config.json`, or derived from the GGUF metadata.
    public let config: ModelConfig
    /// HF names (`model.layers.0.self_attn.q_proj.weight`); shapes row-major, `[out, in]` for linear weights.
    public let tensors: [String: TensorData]
    /// The folder or file the model was opened from.
    public let source: String
    /// The GGUF file when the model came from one (its metadata also holds the tokenizer).
    package let gguf: GGUFFile?

    init(config: ModelConfig, tensors: [String: TensorData], source: String, gguf: GGUFFile? = nil) {
        self.config = config
        self.tensors = tensors
        self.source = source
        self.gguf = gguf
    }

    /// Opens `path`: a folder holding `config.json` and `model.safetensors` (or a sharded
    /// index), or a `.gguf` file. A NaN or infinite weight is an error unless `allowNonFinite`.
    public static func open(_ path: String, allowNonFinite: Bool = false) throws -> ModelFiles {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw LoadError.fileNotFound(path: path)
        }
        let files: ModelFiles
        if isDirectory.boolValue {
            let config = try ModelConfig.load(path: (path as NSString).appendingPathComponent("config.json"))
            files = ModelFiles(config: config, tensors: try loadSafeTensorsFolder(path), source: path)
        } else if path.lowercased().hasSuffix(".gguf") {
            let gguf = try GGUFFile(path: path)
            files = ModelFiles(config: try gguf.modelConfig(), tensors: try gguf.hfTensors(), source: path, gguf: gguf)
        } else {
            let ext = (path as NSString).pathExtension
            throw LoadError.unsupported(path: path, what: "model location", found: ext.isEmpty ? "a file without extension" : "a .\(ext) file",
                                        supported: ["a Hugging Face folder with config.json and *.safetensors", "a .gguf file"])
        }
        let embedName = "model.embed_tokens.weight"
        guard let embed = files.tensors[embedName] else { throw LoadError.missingTensor(path: path, name: embedName) }
        let expected = [files.config.vocabSize, files.config.hiddenSize]
        guard embed.shape == expected else {
            throw LoadError.shapeMismatch(path: path, name: embedName, found: embed.shape, expected: expected)
        }
        // Layers the weights hold beyond the configured count would be ignored in silence.
        let prefix = "model.layers."
        let deepest = files.tensors.keys.compactMap { name -> Int? in
            guard name.hasPrefix(prefix) else { return nil }
            return Int(name.dropFirst(prefix.count).prefix { $0.isNumber })
        }.max()
        if let deepest, deepest >= files.config.layerCount {
            throw LoadError.malformed(path: path, field: files.gguf == nil ? "num_hidden_layers" : "block_count",
                                      found: "\(files.config.layerCount), but the weights hold layer \(deepest) (\(prefix)\(deepest).*)",
                                      expected: "a layer count covering every layer in the weights")
        }
        if !allowNonFinite { try files.checkFinite() }
        return files
    }
}
