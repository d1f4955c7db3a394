import Foundation
import FinchKernels
import FinchIO
import FinchTokenizers
import FinchModels

/// What `finch export` writes: a Hugging Face folder or one GGUF file.
public enum ExportFormat: String, CaseIterable, Sendable {
    case hf
    case gguf
    /// The LoRA adapter alone as llama.cpp's adapter GGUF (`llama-cli --lora`), over an unchanged base.
    case ggufLoRA = "gguf-lora"
}

/// Element types of exported weights: a float type (HF and GGUF), or, for GGUF only, one of
/// llama.cpp's quantized file types under its names (`q4_k_m` is Q4_K with the tensors llama.cpp
/// protects in Q6_K; see `GGUFTensorTypes`).
public enum ExportDType: String, CaseIterable, Sendable {
    case f32, f16, bf16, q8_0
    case q4_0, q4_1, q5_0, q5_1, q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k, iq4_nl, iq4_xs

    /// Parses a user's spelling (case-insensitive), failing with the valid names.
    public init(parsing text: String) throws {
        guard let value = ExportDType(rawValue: text.lowercased()) else {
            throw ExportError.unknownDType(text)
        }
        self = value
    }

    /// The stored tensor encoding this export type writes for most matrices (its base type).
    public var dtype: DType {
        switch self {
        case .f32: .f32
        case .f16: .f16
        case .bf16: .bf16
        case .q8_0: .q8_0
        case .q4_0: .q4_0
        case .q4_1: .q4_1
        case .q5_0: .q5_0
        case .q5_1: .q5_1
        case .q2_k: .q2_K
        case .q3_k_s, .q3_k_m, .q3_k_l: .q3_K
        case .q4_k_s, .q4_k_m: .q4_K
        case .q5_k_s, .q5_k_m: .q5_K
        case .q6_k: .q6_K
        case .iq4_nl: .iq4_NL
        case .iq4_xs: .iq4_XS
        }
    }

    /// llama.cpp's `general.file_type` (enum llama_ftype) for this type.
    var ggufFileType: UInt32 {
        switch self {
        case .f32: 0
        case .f16: 1
        case .q4_0: 2
        case .q4_1: 3
        case .q8_0: 7
        case .q5_0: 8
        case .q5_1: 9
        case .q2_k: 10
        case .q3_k_s: 11
        case .q3_k_m: 12
        case .q3_k_l: 13
        case .q4_k_s: 14
        case .q4_k_m: 15
        case .q5_k_s: 16
        case .q5_k_m: 17
        case .q6_k: 18
        case .iq4_nl: 25
        case .iq4_xs: 30
        case .bf16: 32
        }
    }

    /// The dtypes `format` can hold: f32, f16 and bf16 for hf (and q8_0 for a gguf-lora); every one for gguf.
    public static func supported(by format: ExportFormat) -> [ExportDType] {
        switch format {
        case .hf: [.f32, .f16, .bf16]
        case .gguf: allCases
        case .ggufLoRA: [.f32, .f16, .bf16, .q8_0]
        }
    }
}

/// What `finch export` is asked to do: source model, optional adapter, format, dtype, destination.
public struct ExportOptions: Sendable {
    /// An HF model folder or a .gguf file.
    public var model: String
    /// A PEFT LoRA adapter folder to merge; nil converts the format only.
    public var adapter: String?
    /// An HF folder or one GGUF file.
    public var format: ExportFormat
    /// Element type of the written weights (default f32); must be in `ExportDType.supported(by: format)`.
    public var dtype: ExportDType
    /// The folder (hf) or file (gguf) to create.
    public var output: String
    /// Replace an existing `output`; without it, an existing path is an `ExportError.outputExists`.
    public var overwrite: Bool
    /// Load a model whose weights hold NaN or infinity (refused by default).
    public var allowNonFinite = false
    /// Safetensors shards stay at or below this many bytes (transformers' default is 5 GB; 2 GB here).
    public var maxShardBytes: Int
    /// An importance matrix in llama.cpp's format (`llama-imatrix` or `finch imatrix` output) for a
    /// quantized GGUF: each weight's blocks are fit to the columns that matter most, as
    /// `llama-quantize --imatrix` does. Nil quantizes as llama-quantize does without one.
    public var imatrix: String? = nil
    /// gguf: llama-quantize's `--pure`: every matrix in the `dtype`'s base type, none protected.
    public var pure = false
    /// gguf: the output matrix (and a tied embedding) in this type, as llama-quantize's `--output-tensor-type`.
    public var outputTensorType: DType? = nil
    /// gguf: the token embedding in this type, as llama-quantize's `--token-embedding-type`.
    public var tokenEmbeddingType: DType? = nil

    /// Options as `finch export` builds them; shards default to 2 GB.
    public init(model: String, adapter: String? = nil, format: ExportFormat, dtype: ExportDType = .f32, output: String,
                overwrite: Bool = false, maxShardBytes: Int = 2_000_000_000) {
        self.model = model; self.adapter = adapter; self.format = format; self.dtype = dtype
        self.output = output; self.overwrite = overwrite; self.maxShardBytes = maxShardBytes
    }
}

/// Why an export was refused. Each case names what was wrong and what would be accepted.
public enum ExportError: Error, CustomStringConvertible, Equatable {
    case unknownDType(String)
    case dtypeNotSupported(dtype: ExportDType, format: ExportFormat)
    case outputExists(path: String)
    /// The adapter's tensor does not fit the model's weight: it was made for another model.
    case adapterMismatch(adapter: String, tensor: String, found: [Int], expected: [Int])
    /// The adapter adapts a module the model does not have.
    case adapterModuleMissing(adapter: String, tensor: String, module: String)
    case adapterIncomplete(adapter: String, tensor: String, missing: String)
    /// The model cannot be written in this format (an architecture or feature the format's readers lack).
    case unsupported(format: ExportFormat, what: String, found: String, supported: [String])
    /// `--format gguf-lora` without `--adapter`.
    case adapterRequired(format: ExportFormat)

    public var description: String {
        switch self {
        case let .unknownDType(text):
            return "unknown dtype '\(text)'; valid: \(ExportDType.allCases.map(\.rawValue).joined(separator: ", ")) (hf takes f32, f16 and bf16; gguf takes every one)"
        case let .dtypeNotSupported(dtype, format):
            return "dtype \(dtype.rawValue) cannot be written as \(format.rawValue); valid for \(format.rawValue): \(ExportDType.supported(by: format).map(\.rawValue).joined(separator: ", "))"
        case let .outputExists(path):
            return "\(path): already exists; choose another --output or pass --overwrite"
        case let .adapterMismatch(adapter, tensor, found, expected):
            return "\(adapter): adapter tensor '\(tensor)' has shape \(found) but this model needs \(expected): the adapter was made for another model"
        case let .adapterModuleMissing(adapter, tensor, module):
            return "\(adapter): adapter tensor '\(tensor)' adapts '\(module)', which this model does not have: the adapter was made for another model"
        case let .adapterIncomplete(adapter, tensor, missing):
            return "\(adapter): adapter tensor '\(tensor)' has no partner '\(missing)'"
        case let .adapterRequired(format):
            return "--format \(format.rawValue) writes a LoRA adapter: give it with --adapter (and its base with --model)"
        case let .unsupported(format, what, found, supported):
            return "cannot export as \(format.rawValue): unsupported \(what) '\(found)'; supported: \(supported.joined(separator: ", "))"
        }
    }
}
