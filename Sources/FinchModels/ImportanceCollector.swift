import Foundation
import FinchKernels
import FinchIO

/// Collects an importance matrix while a model runs forward, as llama.cpp's llama-imatrix does:
/// for every projection of the decoder layers (router and each expert included), the sum over
/// the rows that entered it of each input column's square, and the number of those rows; for a
/// layer's experts, per expert (the rows routed to it). Entries are keyed by the GGUF tensor
/// name the weight is exported under (`blk.3.attn_q.weight`, `blk.3.ffn_down_exps.weight`), so
/// that `finch export --imatrix` and llama-quantize find them. Sums accumulate in f32, a row at a
/// time, as llama-imatrix's do.
package final class ImportanceCollector {
    /// One weight's statistics: `sums` [experts * columns], `counts` [experts] (1 expert for a dense weight).
    package struct Entry {
        package var sums: [Float]
        package var counts: [Int]
        package let columns: Int
    }

    /// Per GGUF tensor name.
    package private(set) var entries: [String: Entry] = [:]
    private var observed: [Linear] = []

    /// Starts observing every projection of `model`'s decoder layers; `stop()` ends it.
    package init(model: Transformer) {
        let config = model.config
        var names: [String: (stack: String, expert: Int)] = [:]
        if let moe = config.experts {
            for l in 0..<config.layerCount where moe.routes(layer: l) {
                for e in 0..<moe.expertCount {
                    for (module, stack) in zip(moe.expertModules(e), MixtureOfExperts.ggufStacks) {
                        names["model.layers.\(l).\(module)"] = ("blk.\(l).\(stack).weight", e)
                    }
                }
            }
        }
        for layer in model.layers {
            for linear in layer.allLinears {
                let target: (name: String, expert: Int, experts: Int)
                if let (stack, e) = names[linear.name] {
                    target = (stack, e, config.experts!.expertCount)
                } else if let name = Self.ggufName(of: linear.name, config) {
                    // A joined module (Phi-3's qkv_proj) is one weight of one input: its first part counts it.
                    guard entries[name] == nil else { continue }
                    target = (name, 0, 1)
                } else {
                    continue
                }
                let columns = linear.inFeatures
                if entries[target.name] == nil {
                    entries[target.name] = Entry(sums: [Float](repeating: 0, count: target.experts * columns),
                                                 counts: [Int](repeating: 0, count: target.experts), columns: columns)
                }
                linear.inputObserver = { [unowned self] x, rows in self.add(target.name, expert: target.expert, x, rows: rows) }
                observed.append(linear)
            }
        }
    }

    /// Stops observing (the model runs as before).
    package func stop() {
        for linear in observed { linear.inputObserver = nil }
        observed = []
    }

    deinit { stop() }

    /// The GGUF name of a projection's weight: its module's, or for a family that stores joined
    /// projections (Phi-3), the joined module's.
    static func ggufName(of module: String, _ config: ModelConfig) -> String? {
        if config.fusedProjections, let last = module.split(separator: ".").last,
           let joined = LoRAConfig.joinedModules.first(where: { $0.parts.contains(String(last)) }) {
            let prefix = module.dropLast(last.count)
            return GGUFFile.ggufName(prefix + joined.name + ".weight", family: config.family)
        }
        return GGUFFile.ggufName(module + ".weight", family: config.family)
    }

    private func add(_ name: String, expert: Int, _ x: UnsafePointer<Float>, rows: Int) {
        entries[name]!.counts[expert] += rows
        let columns = entries[name]!.columns
        entries[name]!.sums.withUnsafeMutableBufferPointer { sums in
            let acc = sums.baseAddress! + expert * columns
            for r in 0..<rows {
                let row = x + r * columns
                for j in 0..<columns { acc[j] += row[j] * row[j] }
            }
        }
    }
}
