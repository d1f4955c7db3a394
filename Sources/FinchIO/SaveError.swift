import FinchKernels

/// Why a file could not be written. Like `LoadError`, each case names the file.
public enum SaveError: Error, CustomStringConvertible, Equatable {
    case unwritable(path: String, reason: String)
    /// The caller handed over something the format cannot hold (a bad name, a shape that
    /// does not match the number of values, an unsupported dtype).
    case invalidTensor(path: String, name: String, problem: String)
    /// A metadata value the format cannot hold (GGUF: a key given twice, an array of mixed types).
    case invalidMetadata(path: String, key: String, problem: String)

    public var description: String {
        switch self {
        case let .unwritable(path, reason):
            return "\(path): cannot write: \(reason)"
        case let .invalidTensor(path, name, problem):
            return "\(path): cannot write tensor '\(name)': \(problem)"
        case let .invalidMetadata(path, key, problem):
            return "\(path): cannot write metadata '\(key)': \(problem)"
        }
    }
}
