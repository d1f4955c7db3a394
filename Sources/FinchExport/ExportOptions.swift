import Foundation
import FinchKernels
import FinchIO
import FinchTokenizers
import FinchModels

/// What `finch export` writes: a Hugging Face folder or one GGUF file.
public enum ExportFormat: String, CaseIterable, Sendable {
    case hf
    case gguf
}

/// Element types of exported weights. Q8_0 exists in GGUF only.
public enum ExportDType: String, CaseIterable, Sendable {
    case f32, f16, bf16, q8_0

    /// Parses a user's spelling (case-insensitive), failing with the valid names.
    public init(parsing text: String) throws {
        guard let value = ExportDType(rawValue: text.lowercased()) else {
            throw ExportError.unknownDType(text)
        }
        self = value
    }

    /// The stored tensor encoding this export type writes.
    public var dtype: DType {
        switch self {
        case .f32: return .f32
        case .f16: return .f16
        case .bf16: return .bf16
        case .q8_0: return .q8_0
        }
    }

    /// The dtypes `format` can hold: f32, f16 and bf16 for hf; also q8_0 for gguf.
    public static func supported(by format: ExportFormat) -> [ExportDType] {
        format == .hf ? [.f32, .f16, .bf16] : [.f32, .f16, .bf16, .q8_0]
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

    public var description: String {
        switch self {
        case let .unknownDType(text):
            return "unknown dtype '\(text)'; valid: \(ExportDType.allCases.map(\.rawValue).joined(separator: ", ")) (q8_0 for gguf only)"
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
        case let .unsupported(format, what, found, supported):
            return "cannot export as \(format.rawValue): unsupported \(what) '\(found)'; supported: \(supported.joined(separator: ", "))"
        }
    }
}
