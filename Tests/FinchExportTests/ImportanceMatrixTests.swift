import Foundation
import XCTest
import FinchTestSupport
@testable import FinchKernels
@testable import FinchIO
@testable import FinchModels
@testable import FinchExport

/// `--imatrix`: llama.cpp's importance-matrix files read and normalised as llama-quantize does,
/// each tensor of a quantized export fit under its entry (each expert under its own slice), the
/// Q4_0 / Q5_0 mixture's extra rule, the keys llama-quantize records, and bad files refused by
/// name. (The blocks themselves equal ggml's: QuantizeTests; whole SmolLM2 exports equal
/// llama.cpp's tensor for tensor: reference/check_quantized_exports.py --imatrix.)
final class ImportanceMatrixTests: TemporaryDirectoryTestCase {
    typealias S = TestSupport

    func out(_ name: String) -> String { temporary.appendingPathComponent(name).path }
    func parity(_ name: String) -> String { S.fixtures.appendingPathComponent("parity/\(name)").path }

    /// A GGUF importance matrix as llama-imatrix writes it: per entry raw sums [experts, columns]
    /// and counts [experts, 1].
    func writeGGUF(_ path: String, entries: [(name: String, sums: [Float], counts: [Float])],
                   metadata: [(key: String, value: GGUFValue)]? = nil, countType: DType = .f32) throws {
        let keys = metadata ?? [("general.type", .string("imatrix")), ("imatrix.datasets", .array([.string("calibration.txt")])),
                                ("imatrix.chunk_count", .uint32(7)), ("imatrix.chunk_size", .uint32(512))]
        var tensors: [GGUFWriter.Tensor] = [], values: [[Float]] = []
        for entry in entries {
            let experts = entry.counts.count
            let shape = entry.sums.count % experts == 0 ? [experts, entry.sums.count / experts] : [entry.sums.count]
            tensors.append(GGUFWriter.Tensor(name: entry.name + ".in_sum2", shape: shape, dtype: .f32))
            tensors.append(GGUFWriter.Tensor(name: entry.name + ".counts", shape: [experts, 1], dtype: countType))
            values += [entry.sums, entry.counts]
        }
        try GGUFWriter.write(path: path, metadata: keys, tensors: tensors) { index, sink in
            var bytes = [UInt8](repeating: 0, count: tensors[index].byteCount)
            values[index].withUnsafeBufferPointer { v in bytes.withUnsafeMutableBytes { _ = encodeRow(v.baseAddress!, as: tensors[index].dtype, into: $0.baseAddress!, count: v.count) } }
            try bytes.withUnsafeBytes { try sink($0) }
        }
    }

    /// The legacy .dat layout: per entry name, calls, values (means times calls); then the trailer.
    func legacyBytes(_ entries: [(name: String, calls: Int32, values: [Float])], trailer: (Int32, String)? = (3, "wiki.txt")) -> [UInt8] {
        var bytes: [UInt8] = []
        func int32(_ v: Int32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
        int32(Int32(entries.count))
        for entry in entries {
            int32(Int32(entry.name.utf8.count)); bytes += Array(entry.name.utf8)
            int32(entry.calls); int32(Int32(entry.values.count))
            for v in entry.values { withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes += $0 } }
        }
        if let (chunks, name) = trailer { int32(chunks); int32(Int32(name.utf8.count)); bytes += Array(name.utf8) }
        return bytes
    }

    func testBothLayoutsReadAsLlamaQuantizeNormalisesThem() throws {
        let sums: [Float] = (0..<64).map { Float($0) * 0.5 }
        try writeGGUF(out("m.gguf"), entries: [("blk.0.ffn_down_exps.weight", sums, [4, 0]), ("blk.0.attn_q.weight", Array(sums[..<32]), [3])])
        let gguf = try ImportanceMatrix.read(path: out("m.gguf"))
        XCTAssertEqual(gguf.datasets, ["calibration.txt"])
        XCTAssertEqual(gguf.chunkCount, 7)
        // Expert 0: sums / 4; expert 1 saw no token: every column weighs 1.
        XCTAssertEqual(gguf.entries["blk.0.ffn_down_exps.weight"], sums[..<32].map { $0 / 4 } + [Float](repeating: 1, count: 32))
        XCTAssertEqual(gguf.entries["blk.0.attn_q.weight"], sums[..<32].map { $0 / 3 })
        // A count past any integer type (a damaged file) divides as a float, no trap.
        try writeGGUF(out("huge.gguf"), entries: [("blk.0.attn_q.weight", [1e30, 2e30], [1e30])])
        XCTAssertEqual(try ImportanceMatrix.read(path: out("huge.gguf")).entries["blk.0.attn_q.weight"], [1, 2])

        IOTestSupport.writeBytes(legacyBytes([("blk.0.attn_k.weight", 3, [3, 6, 1.5]), ("blk.1.attn_k.weight", 0, [2, 4])]), to: out("m.dat"))
        let legacy = try ImportanceMatrix.read(path: out("m.dat"))
        XCTAssertEqual(legacy.entries["blk.0.attn_k.weight"], [1, 2, 0.5])
        XCTAssertEqual(legacy.entries["blk.1.attn_k.weight"], [2, 4], "zero calls: the values as stored")
        XCTAssertEqual(legacy.datasets, ["wiki.txt"])
        XCTAssertEqual(legacy.chunkCount, 3)
        IOTestSupport.writeBytes(legacyBytes([("blk.0.attn_k.weight", 1, [3])], trailer: nil), to: out("bare.dat"))
        XCTAssertEqual(try ImportanceMatrix.read(path: out("bare.dat")).entries["blk.0.attn_k.weight"], [3], "the trailer is optional")
    }

    func testBadFilesAreRefusedNamingTheEntry() throws {
        let good: [Float] = [1, 2, 3, 4]
        try writeGGUF(out("nan.gguf"), entries: [("blk.0.attn_q.weight", [1, .nan, 3, 4], [1])])
        IOTestSupport.assertLoadError(try ImportanceMatrix.read(path: out("nan.gguf")), mentions: ["nan.gguf", "blk.0.attn_q.weight.in_sum2 value 1", "nan", "finite"])
        try writeGGUF(out("negative.gguf"), entries: [("blk.0.attn_q.weight", [1, -2, 3, 4], [1])])
        IOTestSupport.assertLoadError(try ImportanceMatrix.read(path: out("negative.gguf")), mentions: ["blk.0.attn_q.weight.in_sum2 value 1", "-2.0", ">= 0"])
        try writeGGUF(out("uneven.gguf"), entries: [("blk.0.attn_q.weight", [1, 2, 3], [1, 1])].map { ($0.0, $0.1 + [0], $0.2 + [1]) })
        IOTestSupport.assertLoadError(try ImportanceMatrix.read(path: out("uneven.gguf")), mentions: ["blk.0.attn_q.weight.in_sum2", "4 values for 3 counts"])
        try writeGGUF(out("f16.gguf"), entries: [("blk.0.attn_q.weight", good, [1])], countType: .f16)
        IOTestSupport.assertLoadError(try ImportanceMatrix.read(path: out("f16.gguf")), mentions: ["blk.0.attn_q.weight.counts", "F16", "expected F32"])
        try writeGGUF(out("bare.gguf"), entries: [("blk.0.attn_q.weight", good, [1])], metadata: [("general.type", .string("imatrix"))])
        IOTestSupport.assertLoadError(try ImportanceMatrix.read(path: out("bare.gguf")), mentions: ["imatrix.datasets", "found nothing"])
        // A model file given by mistake.
        IOTestSupport.assertLoadError(try ImportanceMatrix.read(path: parity("llama_tied") + "/model.safetensors"), mentions: ["model.safetensors", "of entry 1"])
        try Exporter.export(ExportOptions(model: parity("llama_tied"), format: .gguf, output: out("model.gguf")))
        IOTestSupport.assertLoadError(try ImportanceMatrix.read(path: out("model.gguf")), mentions: ["model.gguf", "no <name>.in_sum2 tensors", "general.type"])
        // Legacy: cut short inside the values, a name longer than the file, no entries.
        let bytes = legacyBytes([("blk.0.attn_k.weight", 1, good)], trailer: nil)
        IOTestSupport.writeBytes(Array(bytes.dropLast(5)), to: out("short.dat"))
        IOTestSupport.assertLoadError(try ImportanceMatrix.read(path: out("short.dat")), mentions: ["short.dat", "value count of blk.0.attn_k.weight", "4"])
        IOTestSupport.writeBytes([1, 0, 0, 0, 0xFF, 0xFF, 0, 0], to: out("name.dat"))
        IOTestSupport.assertLoadError(try ImportanceMatrix.read(path: out("name.dat")), mentions: ["name length of entry 1", "65535"])
        IOTestSupport.writeBytes([0, 0, 0, 0], to: out("empty.dat"))
        IOTestSupport.assertLoadError(try ImportanceMatrix.read(path: out("empty.dat")), mentions: ["entry count", "found 0"])
    }

    /// Importance for every quantizable tensor of `f32` but one (`skip`): exp(N(0, 1)) per column
    /// and expert, as raw sums with count 4 (so the normalised weights are exact), and count 0 for
    /// expert 1 of a stack (weights 1).
    func importanceEntries(for f32: GGUFFile, skip: String) -> (entries: [(name: String, sums: [Float], counts: [Float])], weights: [String: [Float]]) {
        var entries: [(name: String, sums: [Float], counts: [Float])] = [], weights: [String: [Float]] = [:]
        for (i, name) in f32.tensorNames.enumerated() where name.hasPrefix("blk.") && name != skip {
            let shape = f32.tensors[name]!.shape
            guard shape.count >= 2, !name.contains("norm"), !name.contains("ffn_gate_inp") else { continue }
            let experts = shape.count == 3 ? shape[0] : 1, columns = shape.last!
            let w = S.randomArray(columns * experts, seed: UInt64(100 + i)).map { Float(exp(Double($0))) }
            var counts = [Float](repeating: 4, count: experts), normalised = w
            if experts > 1 {
                counts[1] = 0
                for c in columns..<(2 * columns) { normalised[c] = 1 }
            }
            entries.append((name, w.map { $0 * 4 }, counts))
            weights[name] = normalised
        }
        return (entries, weights)
    }

    /// Every quantized tensor of a q4_k_m export with an importance matrix holds the blocks
    /// `encodeRows` writes for its f32 values under its entry (a stack: each expert under its own
    /// slice); the tensor without an entry holds the unweighted blocks; the keys llama-quantize
    /// records are there. Checked on a dense model and on Mixtral's stacked experts.
    func testExportFitsEachTensorUnderItsEntry() throws {
        for model in ["llama_tied", "mixtral_moe"] {
            let f32Path = out("\(model)-f32.gguf")
            try Exporter.export(ExportOptions(model: parity(model), format: .gguf, output: f32Path))
            let f32 = try GGUFFile(path: f32Path)
            let skip = "blk.1.attn_q.weight"
            let (entries, weights) = importanceEntries(for: f32, skip: skip)
            try writeGGUF(out("\(model).imatrix.gguf"), entries: entries)
            var options = ExportOptions(model: f32Path, format: .gguf, dtype: .q4_k_m, output: out("\(model)-q4_k_m.gguf"))
            options.imatrix = out("\(model).imatrix.gguf")
            let summary = try Exporter.export(options)
            let plain = try GGUFFile(path: try { () throws -> String in
                try Exporter.export(ExportOptions(model: f32Path, format: .gguf, dtype: .q4_k_m, output: out("\(model)-plain.gguf")))
                return out("\(model)-plain.gguf")
            }())
            let quantized = try GGUFFile(path: options.output)
            var weighted = 0, changed = 0, stacks = 0, unweighted = 0
            for name in quantized.tensorNames {
                let tensor = quantized.tensors[name]!
                guard tensor.dtype.isQuantized && tensor.dtype != .q8_0 else { continue }
                let values = dequantize(f32.tensors[name]!), columns = tensor.columns
                var expected = [UInt8](repeating: 0, count: tensor.byteCount)
                values.withUnsafeBufferPointer { v in
                    expected.withUnsafeMutableBytes { dst in
                        guard let w = weights[name] else {
                            _ = encodeRow(v.baseAddress!, as: tensor.dtype, into: dst.baseAddress!, count: v.count)
                            return
                        }
                        let experts = w.count / columns, rows = values.count / columns / experts, rowBytes = tensor.byteCount / (rows * experts)
                        w.withUnsafeBufferPointer { w in
                            for e in 0..<experts {
                                encodeRows(v.baseAddress! + e * rows * columns, as: tensor.dtype, into: dst.baseAddress! + e * rows * rowBytes,
                                           rows: rows, columns: columns, importance: w.baseAddress! + e * columns)
                            }
                        }
                    }
                }
                let got = Array(UnsafeRawBufferPointer(start: tensor.bytes, count: tensor.byteCount))
                XCTAssertEqual(got, expected, "\(model) \(name) \(tensor.dtype.rawValue)")
                if weights[name] != nil {
                    weighted += 1
                    if got != Array(UnsafeRawBufferPointer(start: plain.tensors[name]!.bytes, count: tensor.byteCount)) { changed += 1 }
                    if tensor.shape.count == 3 { stacks += 1 }
                } else {
                    // The tensor left out, and an untied model's token embedding (llama-imatrix does not see it).
                    XCTAssertTrue([skip, "token_embd.weight"].contains(name), name)
                    unweighted += 1
                }
            }
            XCTAssertGreaterThan(weighted, 4, model)
            XCTAssertEqual(changed, weighted, "\(model): every weighted tensor differs from the unweighted export")
            if model == "mixtral_moe" { XCTAssertGreaterThan(stacks, 0) }
            XCTAssertEqual(summary.importanceWeighted?.weighted, weighted, model)
            XCTAssertEqual(summary.importanceWeighted?.quantized, weighted + unweighted, model)
            XCTAssertGreaterThanOrEqual(unweighted, 1, model)
            XCTAssertEqual(quantized.metadata["quantize.imatrix.file"]?.string, options.imatrix)
            XCTAssertEqual(quantized.metadata["quantize.imatrix.dataset"]?.string, "calibration.txt")
            XCTAssertEqual(quantized.metadata["quantize.imatrix.entries_count"], .uint32(UInt32(entries.count)))
            XCTAssertEqual(quantized.metadata["quantize.imatrix.chunks_count"], .uint32(7))
        }
    }

    /// llama.cpp's has_imatrix rule: Q4_0 / Q5_0 files keep the first eighth of the layers'
    /// ffn_down in Q4_1 / Q5_1 (what its quantizer wrote for SmolLM2 with an imatrix: layers 0-2).
    func testQ4_0AndQ5_0KeepTheFirstFfnDownLayersWithAMin() {
        for (fileType, protected) in [(ExportDType.q4_0, DType.q4_1), (.q5_0, .q5_1)] {
            let with = GGUFTensorTypes(fileType: fileType, layerCount: 30, groupSize: 3, tiedEmbeddings: true, hasImportance: true)
            let without = GGUFTensorTypes(fileType: fileType, layerCount: 30, groupSize: 3, tiedEmbeddings: true)
            XCTAssertEqual((0..<30).filter { with.type(of: "blk.\($0).ffn_down.weight", shape: [576, 1536]) == protected }, [0, 1, 2])
            XCTAssertEqual((0..<30).filter { without.type(of: "blk.\($0).ffn_down.weight", shape: [576, 1536]) == protected }, [])
            XCTAssertEqual(with.type(of: "blk.0.ffn_up.weight", shape: [1536, 576]), fileType.dtype)
        }
        let km = GGUFTensorTypes(fileType: .q4_k_m, layerCount: 30, groupSize: 3, tiedEmbeddings: true, hasImportance: true)
        XCTAssertEqual(km.type(of: "blk.3.ffn_down.weight", shape: [576, 1536]), .q4_K, "the K mixtures are unchanged")
    }

    /// `finch imatrix`'s computation equals the reference (reference/make_imatrix_fixtures.py:
    /// transformers forward hooks, as llama-imatrix collects) on a dense model, on Phi-3's joined
    /// projections (one entry per joined weight) and on Mixtral's experts (each expert's routed
    /// rows): the same entries, counts exactly, sums within 1e-5 relative; written as llama-imatrix
    /// writes it and read back by `ImportanceMatrix`.
    func testComputedMatrixEqualsTheReference() throws {
        let ids = try JSONDecoder().decode([Int].self, from: Data(contentsOf: S.fixtures.appendingPathComponent("imatrix/ids.json")))
        for model in ["llama_tied", "phi3_short", "mixtral_moe"] {
            let reference = try GGUFFile(path: S.fixtures.appendingPathComponent("imatrix/\(model).gguf").path)
            let transformer = try Transformer(files: try ModelFiles.open(parity(model)))
            let result = try ImatrixComputation.compute(model: transformer, tokens: ids, bos: 1, chunkSize: 24, batchChunks: 2,
                                                        dataset: "ids.json", output: out("\(model).gguf"))
            XCTAssertEqual(result.chunks, 3, model)
            XCTAssertTrue(result.nll.isFinite && result.nll > 0, model)
            let ours = try GGUFFile(path: out("\(model).gguf"))
            XCTAssertEqual(ours.tensorNames.sorted(), reference.tensorNames.sorted(), model)
            for key in ["general.type", "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"] {
                XCTAssertEqual(ours.metadata[key], reference.metadata[key], "\(model) \(key)")
            }
            for name in reference.tensorNames {
                let expected = dequantize(reference.tensors[name]!), got = dequantize(ours.tensors[name]!)
                XCTAssertEqual(ours.tensors[name]!.shape, reference.tensors[name]!.shape, "\(model) \(name)")
                if name.hasSuffix(".counts") {
                    XCTAssertEqual(got, expected, "\(model) \(name)")
                } else {
                    XCTAssertLessThan(S.relativeL2(got, expected), 1e-5, "\(model) \(name)")
                }
            }
            if model == "mixtral_moe" {
                // Each token goes to 2 of 4 experts: the experts' rows add up to twice the tokens.
                let counts = dequantize(ours.tensors["blk.0.ffn_gate_exps.weight.counts"]!)
                XCTAssertEqual(counts.count, 4)
                XCTAssertEqual(counts.reduce(0, +), 2 * 72)
            }
            let read = try ImportanceMatrix.read(path: out("\(model).gguf"))
            XCTAssertEqual(read.entries.count, reference.tensorNames.count / 2)
            XCTAssertEqual(read.chunkCount, 3)
        }
    }

    func testExportRefusesAMismatchedMatrix() throws {
        let f32Path = out("f32.gguf")
        try Exporter.export(ExportOptions(model: parity("llama_tied"), format: .gguf, output: f32Path))
        var options = ExportOptions(model: f32Path, format: .gguf, dtype: .q4_0, output: out("q.gguf"))
        // An entry of another width (a matrix of another model).
        try writeGGUF(out("wide.gguf"), entries: [("blk.0.attn_q.weight", [Float](repeating: 1, count: 128), [1])])
        options.imatrix = out("wide.gguf")
        XCTAssertThrowsError(try Exporter.export(options)) { error in
            let text = "\(error)"
            for part in ["wide.gguf", "blk.0.attn_q.weight", "found 128 values", "expected 64"] { XCTAssertTrue(text.contains(part), text) }
        }
        // Entries that name nothing in this model.
        try writeGGUF(out("other.gguf"), entries: [("model.layers.0.q_proj", [Float](repeating: 1, count: 64), [1])])
        options.imatrix = out("other.gguf")
        XCTAssertThrowsError(try Exporter.export(options)) { error in
            XCTAssertTrue("\(error)".contains("none naming a tensor of this model"), "\(error)")
        }
        // A type that does not use one.
        options.imatrix = out("other.gguf")
        options.dtype = .f16
        XCTAssertThrowsError(try Exporter.export(options)) { error in
            XCTAssertTrue("\(error)".contains("--imatrix"), "\(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: options.output))
    }
}
