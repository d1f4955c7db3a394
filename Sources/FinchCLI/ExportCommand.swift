import ArgumentParser
import Finch
import Foundation

struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Merge a LoRA adapter into its model and write an HF folder or a GGUF file.",
        discussion: """
        --format hf writes config.json, model.safetensors (sharded past 2 GB, with an index), \
        generation_config.json and the tokenizer files; --format gguf writes one GGUF file with \
        its metadata, tokenizer and chat template. Without --adapter the model is only converted.
        """)

    @Option(help: "An HF model folder, a .gguf file, or a repo id in the Hugging Face cache.") var model: String
    @Option(help: "The branch, tag or commit of a --model given as a repo id (default: main).") var revision: String?
    @Option(help: "A PEFT LoRA adapter folder to merge (optional).") var adapter: String?
    @Option(help: "hf, gguf, or gguf-lora (the --adapter alone, as llama.cpp's LoRA adapter GGUF).") var format: String
    @Option(help: "f32, f16 or bf16; for gguf also any --quant type.") var dtype: String = "f32"
    @Option(help: ArgumentHelp("gguf: quantize as llama.cpp's quantizer does for this file type.",
                               discussion: "q8_0, q6_k, q5_k_m, q5_k_s, q4_k_m, q4_k_s, q3_k_l, q3_k_m, q3_k_s, q2_k, q5_0, q5_1, q4_0, q4_1, iq4_nl, iq4_xs. "
                                   + "_M/_S/_L mixtures keep the tensors llama.cpp protects in a higher type; rows that do not split "
                                   + "into 256-value blocks fall back as llama.cpp's do (Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0)."))
    var quant: String?
    @Option(help: ArgumentHelp("gguf with --quant: an importance matrix in llama.cpp's format (GGUF or legacy .dat).",
                               discussion: "As llama-quantize --imatrix: each weight's blocks are fit so that the columns that carry "
                                   + "the largest activations lose least (written by llama-imatrix or `finch imatrix`)."))
    var imatrix: String?
    @Flag(help: "gguf with --quant: every matrix in the type's base type, none protected (llama-quantize --pure).") var pure = false
    @Option(name: .customLong("output-tensor-type"), help: "gguf: the output matrix (and a tied embedding) in this GGML type, e.g. q8_0 or f16.")
    var outputTensorType: String?
    @Option(name: .customLong("token-embedding-type"), help: "gguf: the token embedding in this GGML type, e.g. q8_0 or f16.")
    var tokenEmbeddingType: String?
    @Option(help: "The folder (hf) or .gguf file (gguf) to create.") var output: String
    @Flag(help: "Replace an existing output (only once the new one is complete).") var overwrite = false
    @Flag(name: .customLong("allow-nonfinite"), help: "Load a model whose weights hold NaN or infinity (refused by default).")
    var allowNonFinite = false

    func run() throws {
        try runReportingErrors {
            guard let format = ExportFormat(rawValue: format.lowercased()) else {
                throw ValidationError("unknown --format '\(format)'; valid: \(ExportFormat.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            if quant != nil && dtype != "f32" { throw ValidationError("give --dtype or --quant, not both") }
            var options = ExportOptions(model: try HubCache.resolve(model, revision: revision), adapter: adapter, format: format, dtype: try ExportDType(parsing: quant ?? dtype),
                                        output: output, overwrite: overwrite)
            options.allowNonFinite = allowNonFinite
            options.imatrix = imatrix
            options.pure = pure
            func ggmlType(_ text: String?, _ flag: String) throws -> DType? {
                guard let text else { return nil }
                guard let type = DType.allCases.first(where: { $0.rawValue.lowercased() == text.lowercased() }) else {
                    throw ValidationError("unknown \(flag) '\(text)'; valid: \(DType.allCases.map { $0.rawValue.lowercased() }.joined(separator: ", "))")
                }
                return type
            }
            options.outputTensorType = try ggmlType(outputTensorType, "--output-tensor-type")
            options.tokenEmbeddingType = try ggmlType(tokenEmbeddingType, "--token-embedding-type")
            let start = Date()
            let summary = try Exporter.export(options)
            let merged = adapter == nil ? "no adapter"
                : format == .ggufLoRA ? "adapter of \(summary.mergedModules) LoRA modules, not merged" : "\(summary.mergedModules) LoRA modules merged"
            print(String(format: "wrote %@ (%@, %@, %d tensors, %.1f MB of weights, %@) in %.1f s",
                         summary.output, format.rawValue, options.dtype.rawValue, summary.tensorCount,
                         Double(summary.bytes) / 1e6, merged, Date().timeIntervalSince(start)))
            if let types = summary.tensorTypes { print("tensor types: \(types)") }
            if let (weighted, quantized) = summary.importanceWeighted {
                print("importance matrix: \(weighted) of \(quantized) quantized tensors weighted (the others have no entry in \(imatrix ?? "it"))")
            }
        }
    }
}
