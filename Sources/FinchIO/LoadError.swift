import FinchKernels

/// Why a model, adapter or weight file could not be read. Each case names the file and
/// says what was found and what was expected, so that the message alone tells the user
/// what to fix.
public enum LoadError: Error, CustomStringConvertible, Equatable {
    case fileNotFound(path: String)
    case unreadable(path: String, reason: String)
    /// The file's bytes do not follow its format: `field` says where, `found` and `expected` what.
    case malformed(path: String, field: String, found: String, expected: String)
    case unsupported(path: String, what: String, found: String, supported: [String])
    case missingTensor(path: String, name: String)
    case shapeMismatch(path: String, name: String, found: [Int], expected: [Int])
    /// A weight that is NaN or infinite (`element`: its index in the flattened tensor).
    case nonFinite(path: String, name: String, element: Int, value: String)

    public var description: String {
        switch self {
        case let .fileNotFound(path):
            return "\(path): no such file or directory"
        case let .unreadable(path, reason):
            return "\(path): cannot read: \(reason)"
        case let .malformed(path, field, found, expected):
            return "\(path): \(field): found \(found), expected \(expected)"
        case let .unsupported(path, what, found, supported):
            return "\(path): unsupported \(what) '\(found)'; supported: \(supported.joined(separator: ", "))"
        case let .missingTensor(path, name):
            return "\(path): tensor '\(name)' is missing"
        case let .shapeMismatch(path, name, found, expected):
            return "\(path): tensor '\(name)' has shape \(found), expected \(expected)"
        case let .nonFinite(path, name, element, value):
            return "\(path): tensor '\(name)' holds \(value) at element \(element), expected finite weights (--allow-nonfinite loads it anyway)"
        }
    }
}
