import Foundation
import FinchIO

extension ModelFamily {
    /// SmolLM3: Llama's layout with some layers' attention taking no RoPE (`no_rope_layers[l]`
    /// is 1 where layer l uses it; by default every `no_rope_layer_interval`-th layer, the 4th,
    /// 8th, ..., does not, as transformers builds it). GGUF `smollm3` is written as llama.cpp's
    /// converter writes it (Llama's tensors, q/k rows permuted); llama.cpp has no key for the
    /// layers without RoPE and takes every 4th, so Finch also writes `smollm3.no_rope_layers`
    /// (config.json's list) and reads it where present, llama.cpp's rule where not.
    static let smollm3 = ModelFamily(modelType: "smollm3", hfArchitecture: "SmolLM3ForCausalLM", ggufArchitecture: "smollm3",
                                     readHF: { config, fields in
        let layers = config.layerCount
        let flags: [Int]
        if let list = fields.json["no_rope_layers"] {
            guard let numbers = list as? [NSNumber], numbers.count == layers, numbers.allSatisfy({ $0.intValue == 0 || $0.intValue == 1 }) else {
                throw LoadError.malformed(path: fields.path, field: "no_rope_layers", found: "\(list)", expected: "\(layers) values, each 0 or 1")
            }
            flags = numbers.map(\.intValue)
        } else {
            let interval = try fields.optionalInt("no_rope_layer_interval") ?? 4
            guard interval > 0 else {
                throw LoadError.malformed(path: fields.path, field: "no_rope_layer_interval", found: "\(interval)", expected: "a positive integer")
            }
            flags = (0..<layers).map { ($0 + 1) % interval != 0 ? 1 : 0 }
        }
        config.layersWithoutRope = Set(flags.indices.filter { flags[$0] == 0 })
        if fields.bool("use_sliding_window", false) {
            throw LoadError.unsupported(path: fields.path, what: "use_sliding_window", found: "true", supported: ["false"])
        }
    }, writeHF: { config, json in
        json["no_rope_layers"] = (0..<config.layerCount).map { config.layersWithoutRope.contains($0) ? 0 : 1 }
    }, readGGUF: { config, gguf in
        let layers = config.layerCount
        guard let value = gguf.metadata["smollm3.no_rope_layers"] else {
            config.layersWithoutRope = Set((0..<layers).filter { ($0 + 1) % 4 == 0 })
            return
        }
        guard let flags = value.array?.compactMap(\.int), flags.count == layers, flags.allSatisfy({ $0 == 0 || $0 == 1 }) else {
            throw LoadError.malformed(path: gguf.path, field: "smollm3.no_rope_layers", found: "\(value)", expected: "\(layers) integers, each 0 or 1")
        }
        config.layersWithoutRope = Set(flags.indices.filter { flags[$0] == 0 })
    }, writeGGUF: { config in
        [("smollm3.no_rope_layers", .array((0..<config.layerCount).map { .int32(config.layersWithoutRope.contains($0) ? 0 : 1) }))]
    }, ggufPermutesQueryKey: true)
}
