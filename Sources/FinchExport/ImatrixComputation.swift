import Foundation
import FinchKernels
import FinchIO
import FinchModels

/// `finch imatrix`: an importance matrix of a model (plus adapter) on a calibration text, in the
/// GGUF layout llama.cpp's llama-imatrix writes, for `finch export --quant ... --imatrix` or
/// llama-quantize. As llama-imatrix: the text's tokens are cut into chunks of `chunkSize` (the
/// rest dropped), each chunk's first token replaced by BOS where the tokenizer adds one, and for
/// every projection of the decoder layers the squares of its inputs are summed per column, with
/// the rows counted (per expert for a mixture's experts).
public enum ImatrixComputation {
    /// What a computation evaluated and wrote.
    public struct Result: Sendable {
        /// Chunks evaluated.
        public var chunks: Int
        /// Entries written (weights observed).
        public var entries: Int
        /// Mean NLL per predicted token over the chunks (a check that the text suits the model).
        public var nll: Double
    }

    /// Evaluates `tokens` (the whole text, special tokens added) in chunks of `chunkSize`, at
    /// most `maxChunks`, `batchChunks` per forward, and writes the matrix to `output`
    /// (atomically). `bos`: the id that starts each chunk, nil where the tokenizer adds none.
    /// Throws when the text is shorter than one chunk.
    public static func compute(model: Transformer, tokens: [Int], bos: Int?, chunkSize: Int, maxChunks: Int? = nil,
                               batchChunks: Int = 4, dataset: String, output: String) throws -> Result {
        let available = tokens.count / chunkSize, chunks = min(available, maxChunks ?? available)
        guard chunks >= 1 else {
            throw LoadError.malformed(path: dataset, field: "tokens", found: "\(tokens.count)",
                                      expected: "at least one chunk of \(chunkSize) (--chunk-size)")
        }
        let collector = ImportanceCollector(model: model)
        defer { collector.stop() }
        var sum = 0.0, count = 0, start = 0
        while start < chunks {
            let rows = (start..<min(chunks, start + batchChunks)).map { c -> [Int] in
                var chunk = Array(tokens[c * chunkSize..<(c + 1) * chunkSize])
                if let bos { chunk[0] = bos }
                return chunk
            }
            let batch = TokenBatch(rows: rows)
            let labels = rows.flatMap { $0.map(Int32.init) }
            let r = model.negativeLogLikelihood(batch, targets: TokenBatch.shiftedTargets(labels: labels, batch: rows.count, seq: chunkSize))
            sum += r.sum
            count += r.count
            start += rows.count
        }
        try write(collector.entries, chunks: chunks, chunkSize: chunkSize, dataset: dataset, to: output)
        return Result(chunks: chunks, entries: collector.entries.count, nll: count > 0 ? sum / Double(count) : .nan)
    }

    /// llama-imatrix's GGUF layout: `general.type` imatrix, `imatrix.datasets`, `imatrix.chunk_count`,
    /// `imatrix.chunk_size`; per entry, in name order, `<name>.in_sum2` F32 [experts, columns] and
    /// `<name>.counts` F32 [experts, 1].
    static func write(_ entries: [String: ImportanceCollector.Entry], chunks: Int, chunkSize: Int, dataset: String, to path: String) throws {
        let names = entries.keys.sorted()
        var tensors: [GGUFWriter.Tensor] = [], values: [[Float]] = []
        for name in names {
            let entry = entries[name]!, experts = entry.counts.count
            tensors.append(GGUFWriter.Tensor(name: name + ".in_sum2", shape: [experts, entry.columns], dtype: .f32))
            tensors.append(GGUFWriter.Tensor(name: name + ".counts", shape: [experts, 1], dtype: .f32))
            values += [entry.sums, entry.counts.map(Float.init)]
        }
        let metadata: [(key: String, value: GGUFValue)] = [
            ("general.type", .string("imatrix")), ("imatrix.datasets", .array([.string(dataset)])),
            ("imatrix.chunk_count", .uint32(UInt32(chunks))), ("imatrix.chunk_size", .uint32(UInt32(chunkSize))),
        ]
        try GGUFWriter.write(path: path, metadata: metadata, tensors: tensors) { index, sink in
            try values[index].withUnsafeBytes { try sink($0) }
        }
    }
}
