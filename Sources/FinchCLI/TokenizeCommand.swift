import ArgumentParser
import Finch
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

struct TokenizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenize",
        abstract: "Token ids of text, or text of token ids: one JSON value per line of stdin.",
        discussion: """
            Each line of stdin is a JSON string; each output line is the JSON array of its ids.
            With --decode, each line is a JSON array of ids and each output line a JSON string.
            """)

    @Option(help: "An HF tokenizer folder (tokenizer.json), a tokenizer.json file, or a .gguf file.")
    var tokenizer: String

    @Flag(name: .customLong("add-special-tokens"), help: "Add the tokenizer's special tokens (such as BOS) when encoding.")
    var addSpecialTokens = false

    @Flag(help: "Read arrays of ids and print their text.")
    var decode = false

    @Flag(name: .customLong("skip-special-tokens"), help: "With --decode, leave special tokens out of the text.")
    var skipSpecialTokens = false

    @Option(name: .customLong("bench"), help: ArgumentHelp("Time encoding a UTF-8 text file; print tokens per second.", visibility: .hidden))
    var bench: String?

    @Option(name: .customLong("bench-repeats"), help: ArgumentHelp("Timed runs for --bench (best is reported).", visibility: .hidden))
    var benchRepeats = 3

    func run() throws {
        do {
            let tok = try Tokenizer.load(from: tokenizer)
            if let bench {
                try benchmark(tok, file: bench)
            } else {
                try processLines(tok)
            }
        } catch let error as TokenizerError {
            throw failure("\(error)")
        } catch let error as LoadError {
            throw failure("\(error)")
        } catch let error as InputError {
            throw failure(error.description)
        }
    }

    private func failure(_ message: String) -> ExitCode {
        FileHandle.standardError.write(Data("error: \(message)\n".utf8))
        return ExitCode(1)
    }

    struct InputError: Error, CustomStringConvertible {
        var line: Int
        var message: String
        var description: String { "stdin line \(line): \(message)" }
    }

    private func processLines(_ tok: Tokenizer) throws {
        var buffer: UnsafeMutablePointer<CChar>? = nil
        var capacity = 0
        defer { free(buffer) }
        var lineNumber = 0
        var out: [UInt8] = []
        while true {
            let length = getline(&buffer, &capacity, standardInput)
            if length < 0 { break }
            lineNumber += 1
            var bytes = UnsafeRawBufferPointer(start: buffer, count: length).bindMemory(to: UInt8.self)
            if let last = bytes.last, last == 0x0A { bytes = UnsafeBufferPointer(rebasing: bytes.dropLast()) }
            if let offset = UTF8Validation.firstInvalidOffset(in: bytes) {
                let bad = bytes[offset..<min(offset + 4, bytes.count)].map { String(format: "%02X", $0) }.joined(separator: " ")
                throw InputError(line: lineNumber, message: "invalid UTF-8 at byte \(offset) (\(bad)); expected UTF-8 text")
            }
            var parser = JSONLineParser(bytes: Array(bytes), line: lineNumber)
            out.removeAll(keepingCapacity: true)
            if decode {
                let ids = try parser.parseIDs(limit: tok.vocabularySize)
                appendJSONString(tok.decode(ids, skipSpecialTokens: skipSpecialTokens), to: &out)
            } else {
                let text = try parser.parseString()
                let ids = try tok.encode(text, addSpecialTokens: addSpecialTokens)
                out.append(UInt8(ascii: "["))
                for (i, id) in ids.enumerated() {
                    if i > 0 { out.append(UInt8(ascii: ",")) }
                    out.append(contentsOf: String(id).utf8)
                }
                out.append(UInt8(ascii: "]"))
            }
            out.append(0x0A)
            out.withUnsafeBytes { _ = fwrite($0.baseAddress, 1, $0.count, standardOutput) }
            flushOutput()
        }
    }

    private func benchmark(_ tok: Tokenizer, file: String) throws {
        guard let data = FileManager.default.contents(atPath: file) else { throw TokenizerError.fileNotFound(path: file) }
        let text = try UTF8Validation.string(from: data, source: file)
        // The first run starts with an empty word cache; later runs reuse it, as HF's do.
        let coldStart = DispatchTime.now().uptimeNanoseconds
        let warm = try tok.encode(text, addSpecialTokens: false)
        let cold = Double(DispatchTime.now().uptimeNanoseconds - coldStart) / 1e9
        var best = Double.infinity
        for _ in 0..<max(1, benchRepeats) {
            let start = DispatchTime.now().uptimeNanoseconds
            let ids = try tok.encode(text, addSpecialTokens: false)
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            precondition(ids.count == warm.count)
            best = min(best, seconds)
        }
        print(String(format: "{\"tokens\": %d, \"bytes\": %d, \"seconds\": %.4f, \"tokens_per_second\": %.0f, \"cold_seconds\": %.4f, \"cold_tokens_per_second\": %.0f}",
                     warm.count, data.count, best, Double(warm.count) / best, cold, Double(warm.count) / cold))
    }
}

/// The one JSON value of an input line: a string, or an array of ids.
private struct JSONLineParser {
    let bytes: [UInt8]
    let line: Int
    var i = 0

    init(bytes: [UInt8], line: Int) {
        self.bytes = bytes
        self.line = line
    }

    func error(_ message: String) -> TokenizeCommand.InputError { .init(line: line, message: message) }

    mutating func skipSpace() { while i < bytes.count, [0x20, 0x09, 0x0D, 0x0A].contains(bytes[i]) { i += 1 } }

    mutating func expectEnd(_ what: String) throws {
        skipSpace()
        if i < bytes.count { throw error("unexpected text after the \(what) at column \(i + 1)") }
    }

    mutating func parseString() throws -> String {
        skipSpace()
        guard i < bytes.count else { throw error("empty line; expected a JSON string such as \"Hello\"") }
        guard bytes[i] == UInt8(ascii: "\"") else {
            throw error("expected a JSON string such as \"Hello\", found '\(String(decoding: bytes[i..<min(i + 20, bytes.count)], as: UTF8.self))'")
        }
        i += 1
        var out: [UInt8] = []
        while true {
            guard i < bytes.count else { throw error("unterminated JSON string") }
            let c = bytes[i]
            i += 1
            if c == UInt8(ascii: "\"") { break }
            if c < 0x20 { throw error("control character 0x\(String(format: "%02X", c)) inside a JSON string at column \(i); escape it (\\n, \\t, \\u00XX)") }
            guard c == UInt8(ascii: "\\") else { out.append(c); continue }
            guard i < bytes.count else { throw error("unterminated escape at the end of the line") }
            let e = bytes[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var v = try hex4()
                if (0xD800..<0xDC00).contains(v) {
                    guard i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else {
                        throw error("lone surrogate \\u\(String(v, radix: 16, uppercase: true)) at column \(i - 5): not a Unicode character")
                    }
                    i += 2
                    let low = try hex4()
                    guard (0xDC00..<0xE000).contains(low) else {
                        throw error("\\u\(String(v, radix: 16, uppercase: true)) not followed by a low surrogate at column \(i - 5)")
                    }
                    v = 0x10000 + (v - 0xD800) << 10 + (low - 0xDC00)
                } else if (0xDC00..<0xE000).contains(v) {
                    throw error("lone surrogate \\u\(String(v, radix: 16, uppercase: true)) at column \(i - 5): not a Unicode character")
                }
                out.append(contentsOf: String(Unicode.Scalar(v)!).utf8)
            default:
                throw error("unknown escape '\\\(Character(Unicode.Scalar(e)))' at column \(i - 1)")
            }
        }
        try expectEnd("string")
        return String(decoding: out, as: UTF8.self)
    }

    mutating func hex4() throws -> UInt32 {
        guard i + 4 <= bytes.count, let v = UInt32(String(decoding: bytes[i..<(i + 4)], as: UTF8.self), radix: 16) else {
            throw error("expected four hex digits after \\u at column \(i + 1)")
        }
        i += 4
        return v
    }

    mutating func parseIDs(limit: Int) throws -> [Int] {
        skipSpace()
        guard i < bytes.count else { throw error("empty line; expected a JSON array of token ids such as [1, 2, 3]") }
        guard bytes[i] == UInt8(ascii: "[") else { throw error("expected a JSON array of token ids such as [1, 2, 3]") }
        i += 1
        var ids: [Int] = []
        skipSpace()
        if i < bytes.count && bytes[i] == UInt8(ascii: "]") {
            i += 1
            try expectEnd("array")
            return ids
        }
        while true {
            skipSpace()
            let start = i
            while i < bytes.count, (0x30...0x39).contains(bytes[i]) || bytes[i] == UInt8(ascii: "-") { i += 1 }
            let token = String(decoding: bytes[start..<i], as: UTF8.self)
            guard let id = Int(token) else {
                let found = start < bytes.count ? String(decoding: bytes[start..<min(start + 12, bytes.count)], as: UTF8.self) : "the end of the line"
                throw error("expected a token id at column \(start + 1), found '\(found)'")
            }
            guard id >= 0 && id < limit else { throw error("token id \(id) is outside the vocabulary (0..<\(limit))") }
            ids.append(id)
            skipSpace()
            guard i < bytes.count else { throw error("unterminated array") }
            if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
            if bytes[i] == UInt8(ascii: "]") { i += 1; break }
            throw error("expected ',' or ']' at column \(i + 1)")
        }
        try expectEnd("array")
        return ids
    }
}

/// Appends `s` as a JSON string (non-ASCII kept as UTF-8).
private func appendJSONString(_ s: String, to out: inout [UInt8]) {
    out.append(0x22)
    for b in s.utf8 {
        switch b {
        case 0x22: out.append(contentsOf: [0x5C, 0x22])
        case 0x5C: out.append(contentsOf: [0x5C, 0x5C])
        case 0x0A: out.append(contentsOf: [0x5C, UInt8(ascii: "n")])
        case 0x0D: out.append(contentsOf: [0x5C, UInt8(ascii: "r")])
        case 0x09: out.append(contentsOf: [0x5C, UInt8(ascii: "t")])
        case 0..<0x20: out.append(contentsOf: String(format: "\\u%04x", b).utf8)
        default: out.append(b)
        }
    }
    out.append(0x22)
}
