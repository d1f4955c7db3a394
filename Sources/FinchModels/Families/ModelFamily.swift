import Foundation
import FinchKernels
import FinchIO

/// One family of decoder models: its names in each format, and how its particular keys of
/// `config.json` read and write. What all families share (sizes, RoPE, norms, token ids) is read
/// by `ModelConfig`; a family's file (Families/) holds the rest, and `ModelFamily.all` lists
/// them, so adding a family is its file plus an entry there, and an unknown `model_type` is an
/// error that lists these.
public struct ModelFamily: Sendable {
    /// `model_type` in config.json.
    public let modelType: String
    /// `architectures[0]` in config.json.
    public let hfArchitecture: String
    /// llama.cpp's `general.architecture`, or nil where Finch does not read or write it as GGUF.
    public let ggufArchitecture: String?
    /// Sets the family's own fields from config.json (after the shared ones are read).
    let readHF: @Sendable (inout ModelConfig, ConfigFields) throws -> Void
    /// Adds the family's own keys to a config.json.
    let writeHF: @Sendable (ModelConfig, inout [String: Any]) -> Void
    /// What every model of the family is, whatever its file says (set before `readHF` / `readGGUF`).
    let traits: @Sendable (inout ModelConfig) -> Void
    /// Sets the family's own fields from a GGUF's `<arch>.*` metadata (after the shared ones).
    let readGGUF: @Sendable (inout ModelConfig, GGUFFile) throws -> Void
    /// The family's own `<arch>.*` metadata keys for a GGUF written from `config`.
    package let writeGGUF: @Sendable (ModelConfig) -> [(key: String, value: GGUFValue)]
    /// llama.cpp's per-layer tensor names that differ from Llama's (`GGUFFile.layerModuleNames`),
    /// as (GGUF, HF) pairs: they are looked up first.
    package let ggufLayerNames: [(gguf: String, hf: String)]
    /// llama.cpp's converter permutes the rows of q and k for its RoPE layout (its LlamaModel and
    /// the families built on it): Finch undoes it on load and does it on export.
    package let ggufPermutesQueryKey: Bool

    init(modelType: String, hfArchitecture: String, ggufArchitecture: String?,
         traits: @escaping @Sendable (inout ModelConfig) -> Void = { _ in },
         readHF: @escaping @Sendable (inout ModelConfig, ConfigFields) throws -> Void = { _, _ in },
         writeHF: @escaping @Sendable (ModelConfig, inout [String: Any]) -> Void = { _, _ in },
         readGGUF: @escaping @Sendable (inout ModelConfig, GGUFFile) throws -> Void = { _, _ in },
         writeGGUF: @escaping @Sendable (ModelConfig) -> [(key: String, value: GGUFValue)] = { _ in [] },
         ggufLayerNames: [(gguf: String, hf: String)] = [], ggufPermutesQueryKey: Bool = false) {
        self.modelType = modelType; self.hfArchitecture = hfArchitecture; self.ggufArchitecture = ggufArchitecture
        self.traits = traits; self.readHF = readHF; self.writeHF = writeHF
        self.readGGUF = readGGUF; self.writeGGUF = writeGGUF; self.ggufLayerNames = ggufLayerNames
        self.ggufPermutesQueryKey = ggufPermutesQueryKey
    }

    /// Every family Finch reads, in the order errors list them.
    public static let all: [ModelFamily] = [.llama, .mistral, .qwen2, .qwen3, .smollm3, .gemma2, .gemma3, .phi3, .qwen3MoE, .mixtral, .olmoe]

    /// The family of `modelType`, or nil.
    public static func named(_ modelType: String) -> ModelFamily? { all.first { $0.modelType == modelType } }

    /// The llama.cpp architectures Finch reads and writes.
    public static var ggufArchitectures: [String] {
        all.compactMap(\.ggufArchitecture).reduce(into: []) { if !$0.contains($1) { $0.append($1) } }
    }

    /// The family a GGUF of `architecture` loads as: the one of that name (llama, not mistral).
    public static func reading(ggufArchitecture architecture: String) -> ModelFamily? {
        all.first { $0.ggufArchitecture == architecture && $0.modelType == architecture } ?? all.first { $0.ggufArchitecture == architecture }
    }
}

/// Typed reads of config.json keys; every failure names the file and the key.
public struct ConfigFields {
    let json: [String: Any]
    let path: String

    func int(_ key: String) throws -> Int {
        guard let value = json[key] else { throw LoadError.malformed(path: path, field: key, found: "nothing", expected: "an integer") }
        guard let number = value as? NSNumber, number.doubleValue == number.doubleValue.rounded(), abs(number.doubleValue) < 1e15 else {
            throw LoadError.malformed(path: path, field: key, found: "\(value)", expected: "an integer")
        }
        return number.intValue
    }

    func optionalInt(_ key: String) throws -> Int? {
        guard let value = json[key], !(value is NSNull) else { return nil }
        return try int(key)
    }

    func float(_ key: String, _ fallback: Float) throws -> Float {
        guard let value = json[key], !(value is NSNull) else { return fallback }
        guard let number = value as? NSNumber else { throw LoadError.malformed(path: path, field: key, found: "\(value)", expected: "a number") }
        return number.floatValue
    }

    func bool(_ key: String, _ fallback: Bool) -> Bool { (json[key] as? NSNumber)?.boolValue ?? fallback }

    /// A number that may be null: nil when the key is null, `absent` when it is missing.
    func nullableFloat(_ key: String, absent: Float?) throws -> Float? {
        guard let value = json[key] else { return absent }
        if value is NSNull { return nil }
        guard let number = value as? NSNumber else { throw LoadError.malformed(path: path, field: key, found: "\(value)", expected: "a number or null") }
        return number.floatValue
    }
}
