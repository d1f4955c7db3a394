import Foundation
import FinchKernels
import FinchIO
import FinchTokenizers
import FinchModels
import FinchGeneration
import FinchDistributed

/// Rows of a dataset file: JSONL (one object per line), JSON (an array of objects) or CSV
/// (a header row, then one row per record; fields may be quoted with "" escapes).
public enum DataFile {
    /// One record, its fields as decoded JSON values (CSV fields are strings).
    public struct Row: @unchecked Sendable {
        /// Where the row came from, for error messages: "pairs.jsonl:12".
        public let location: String
        /// Field name to value: String, NSNumber, [Any] or [String: Any] as JSONSerialization gives them.
        public let fields: [String: Any]
        /// The row's JSON text (JSONL rows): read again in its own key order where order shows in
        /// the output (tool schemas and tool-call arguments through a chat template's `tojson`).
        public let text: String?

        /// A row from `location` with `fields`, and its JSON `text` when it has one.
        public init(location: String, fields: [String: Any], text: String? = nil) {
            self.location = location; self.fields = fields; self.text = text
        }
    }

    /// A data file that cannot be read, is malformed (with file and line), or has no rows.
    public enum Error: Swift.Error, CustomStringConvertible, Equatable {
        case unreadable(path: String, reason: String)
        case malformed(location: String, found: String, expected: String)
        case empty(path: String)

        public var description: String {
            switch self {
            case let .unreadable(path, reason): return "\(path): cannot read: \(reason)"
            case let .malformed(location, found, expected): return "\(location): found \(found), expected \(expected)"
            case let .empty(path): return "\(path): no rows"
            }
        }
    }

    /// Reads every row of `path`, the format chosen by its extension (.jsonl/.ndjson, .json, .csv).
    /// Throws for an unknown extension, bytes that are not UTF-8, a malformed row, or no rows.
    public static func read(_ path: String) throws -> [Row] {
        var skipped: [Error]?
        return try read(path, skipped: &skipped)
    }

    /// `read`, where with `skipped` non-nil a malformed row (invalid JSON, not an object, a CSV
    /// record with the wrong number of fields) is added to it instead of stopping the read.
    public static func read(_ path: String, skipped: inout [Error]?) throws -> [Row] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw Error.unreadable(path: path, reason: FileManager.default.fileExists(atPath: path) ? "permission denied" : "no such file")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            // Name the line of the first byte that is not UTF-8.
            let offset = UTF8Validation.firstInvalidOffset(in: data) ?? 0
            let line = data.prefix(offset).reduce(1) { $0 + ($1 == 0x0A ? 1 : 0) }
            throw Error.malformed(location: "\(path):\(line)", found: String(format: "a byte that is not UTF-8 (0x%02X)", data[data.startIndex + offset]),
                                  expected: "UTF-8 text")
        }
        let name = (path as NSString).lastPathComponent
        let rows: [Row]
        switch (path as NSString).pathExtension.lowercased() {
        case "jsonl", "ndjson": rows = try jsonLines(text, name: name, skipped: &skipped)
        case "json": rows = try jsonArray(data, name: name, skipped: &skipped)
        case "csv": rows = try csv(text, name: name, skipped: &skipped)
        default:
            throw Error.malformed(location: path, found: "extension '.\((path as NSString).pathExtension)'", expected: ".jsonl, .json or .csv")
        }
        guard !rows.isEmpty else { throw Error.empty(path: path) }
        return rows
    }

    /// `error`, thrown, or added to `skipped` when rows may be skipped.
    static func reject(_ error: Error, _ skipped: inout [Error]?) throws {
        guard skipped != nil else { throw error }
        skipped!.append(error)
    }

    static func jsonLines(_ text: String, name: String, skipped: inout [Error]?) throws -> [Row] {
        var rows: [Row] = []
        // "\r\n" is one Character in Swift, so a split on "\n" alone would not see CRLF line ends.
        for (i, line) in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }).enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespacesAndNewlines)
            if trimmed.isEmpty { continue }
            let location = "\(name):\(i + 1)"
            guard let object = try? JSONSerialization.jsonObject(with: Data(trimmed.utf8)) else {
                try reject(Error.malformed(location: location, found: "invalid JSON '\(trimmed.prefix(40))'", expected: "one JSON object per line"), &skipped)
                continue
            }
            guard let fields = object as? [String: Any] else {
                try reject(Error.malformed(location: location, found: "a JSON \(object is [Any] ? "array" : "value")", expected: "a JSON object"), &skipped)
                continue
            }
            rows.append(Row(location: location, fields: fields, text: trimmed))
        }
        return rows
    }

    static func jsonArray(_ data: Data, name: String, skipped: inout [Error]?) throws -> [Row] {
        guard let object = try? JSONSerialization.jsonObject(with: data) else {
            throw Error.malformed(location: name, found: "invalid JSON", expected: "a JSON array of objects")
        }
        guard let array = object as? [Any] else { throw Error.malformed(location: name, found: "a JSON object", expected: "a JSON array of objects") }
        var rows: [Row] = []
        for (i, element) in array.enumerated() {
            guard let fields = element as? [String: Any] else {
                try reject(Error.malformed(location: "\(name)[\(i)]", found: jsonKind(element), expected: "a JSON object"), &skipped)
                continue
            }
            rows.append(Row(location: "\(name)[\(i)]", fields: fields))
        }
        return rows
    }

    /// RFC 4180 CSV: quoted fields may hold commas, newlines and "" for a quote.
    static func csv(_ text: String, name: String, skipped: inout [Error]?) throws -> [Row] {
        var records: [(line: Int, fields: [String])] = []
        var field = "", fields: [String] = [], inQuotes = false, line = 1, recordLine = 1
        var iterator = Array(text.unicodeScalars).makeIterator()
        var pending: Unicode.Scalar? = nil
        func endRecord() {
            fields.append(field); field = ""
            if !(fields.count == 1 && fields[0].isEmpty) { records.append((recordLine, fields)) }
            fields = []
        }
        while let c = pending ?? iterator.next() {
            pending = nil
            if inQuotes {
                if c == "\"" {
                    if let next = iterator.next() {
                        if next == "\"" { field.unicodeScalars.append("\"") } else { inQuotes = false; pending = next }
                    } else { inQuotes = false }
                } else {
                    if c == "\n" { line += 1 }
                    field.unicodeScalars.append(c)
                }
            } else if c == "\"" && field.isEmpty {
                inQuotes = true
            } else if c == "," {
                fields.append(field); field = ""
            } else if c == "\n" {
                endRecord(); line += 1; recordLine = line
            } else if c != "\r" {
                field.unicodeScalars.append(c)
            }
        }
        if inQuotes { throw Error.malformed(location: "\(name):\(recordLine)", found: "an unterminated quoted field", expected: "a closing \"") }
        if !field.isEmpty || !fields.isEmpty { endRecord() }
        guard let header = records.first else { return [] }
        var rows: [Row] = []
        for record in records.dropFirst() {
            guard record.fields.count == header.fields.count else {
                try reject(Error.malformed(location: "\(name):\(record.line)", found: "\(record.fields.count) fields",
                                           expected: "\(header.fields.count) (\(header.fields.joined(separator: ", ")))"), &skipped)
                continue
            }
            rows.append(Row(location: "\(name):\(record.line)", fields: Dictionary(zip(header.fields, record.fields.map { $0 as Any }), uniquingKeysWith: { a, _ in a })))
        }
        return rows
    }
}

/// How a JSON value is named in an error: by its JSON kind, never by a Foundation class name.
func jsonKind(_ value: Any) -> String {
    switch value {
    case is NSNull: return "null"
    case let n as NSNumber:
        // JSONSerialization's booleans are NSNumbers of C type char ("c"), true and false only.
        let isBool = String(cString: n.objCType) == "c" && (n.int8Value == 0 || n.int8Value == 1) && "\(type(of: n))".contains("Bool")
        return isBool ? "a boolean (\(n.boolValue))" : "a number (\(n))"
    case is String: return "a string"
    case is [Any]: return "a list"
    case is [String: Any]: return "an object"
    default: return "a JSON value"
    }
}
