import Foundation
import FinchKernels
import FinchIO

/// A value of a parsed JSON file with its path (`pre_tokenizer.pretokenizers[1].type`), so
/// that every type error names the file and the field.
struct JSONField {
    let value: JSONValue
    let path: String
    let file: String

    static func parse(file: String) throws -> JSONField {
        guard let data = FileManager.default.contents(atPath: file) else {
            if !FileManager.default.fileExists(atPath: file) { throw TokenizerError.fileNotFound(path: file) }
            throw TokenizerError.unreadable(path: file, reason: "permission denied or not a regular file")
        }
        do {
            return JSONField(value: try JSONParser.parse(Array(data)), path: "", file: file)
        } catch let failure as JSONParser.Failure {
            throw TokenizerError.malformed(path: file, field: "JSON syntax", found: "\(failure.message) at byte \(failure.offset)", expected: "valid JSON")
        }
    }

    func child(path suffix: String, _ value: JSONValue) -> JSONField {
        JSONField(value: value, path: path.isEmpty ? suffix : path + (suffix.hasPrefix("[") ? "" : ".") + suffix, file: file)
    }

    func describe() -> String {
        switch value {
        case .null: return "null"
        case let .bool(b): return "\(b)"
        case let .int(v): return "the number \(v)"
        case let .double(v): return "the number \(v)"
        case let .string(s): return "the string \(TokenizerError.quoted(s.count > 60 ? String(s.prefix(60)) + "..." : s))"
        case .array: return "an array"
        case .object: return "an object"
        }
    }

    func malformed(_ expected: String) -> TokenizerError {
        .malformed(path: file, field: path.isEmpty ? "top level" : path, found: describe(), expected: expected)
    }

    /// The members, in file order.
    func members() throws -> [(key: String, value: JSONValue)] {
        guard case let .object(members) = value else { throw malformed("an object") }
        return members
    }

    /// The member `key` (the last one if repeated), or nil when absent or null.
    func optional(_ key: String) throws -> JSONField? {
        let members = try members()
        let keyBytes = Array(key.utf8)
        guard let member = members.last(where: { $0.key.utf8.elementsEqual(keyBytes) }) else { return nil }
        if case .null = member.value { return nil }
        return child(path: key, member.value)
    }

    func required(_ key: String) throws -> JSONField {
        guard let field = try optional(key) else {
            throw TokenizerError.malformed(path: file, field: path.isEmpty ? key : path + "." + key, found: "nothing", expected: "a value")
        }
        return field
    }

    func string() throws -> String {
        guard case let .string(s) = value else { throw malformed("a string") }
        return s
    }

    func bool() throws -> Bool {
        guard case let .bool(b) = value else { throw malformed("true or false") }
        return b
    }

    func int() throws -> Int {
        switch value {
        case let .int(v): return v
        case let .double(v): if let i = Int(exactly: v) { return i }
        default: break
        }
        throw malformed("an integer")
    }

    func double() throws -> Double {
        switch value {
        case let .int(v): return Double(v)
        case let .double(v): return v
        default: throw malformed("a number")
        }
    }

    func array() throws -> [JSONField] {
        guard case let .array(items) = value else { throw malformed("an array") }
        return items.enumerated().map { child(path: "[\($0.offset)]", $0.element) }
    }

    var isString: Bool { if case .string = value { return true } else { return false } }

    func optionalString(_ key: String) throws -> String? { try optional(key)?.string() }
    func optionalBool(_ key: String) throws -> Bool? { try optional(key)?.bool() }
    func optionalInt(_ key: String) throws -> Int? { try optional(key)?.int() }
}

/// Strings to ids compared by their exact UTF-8 bytes (not Swift's canonical equivalence).
struct ExactStringTable {
    private var table: ByteKeyTable

    init(capacity: Int = 16) { table = ByteKeyTable(capacity: capacity) }

    var count: Int { table.count }

    subscript(_ key: String) -> Int? {
        var key = key
        return key.withUTF8 { $0.isEmpty ? table.find([]) : table.find($0.baseAddress!, $0.count) }.map { Int($0) }
    }

    func find(_ bytes: [UInt8]) -> Int? { table.find(bytes).map { Int($0) } }

    /// Keeps the first id of a repeated key unless `replace`.
    mutating func insert(_ key: String, _ id: Int, replace: Bool = true) {
        if !replace, self[key] != nil { return }
        table.insert(Array(key.utf8), value: Int64(id))
    }
}
