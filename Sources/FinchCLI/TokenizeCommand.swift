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
            let input = try JSONLine(bytes: Array(bytes), line: lineNumber, expected: decode ? JSONLine.expectedIDs : JSONLine.expectedString)
            out.removeAll(keepingCapacity: true)
            if decode {
                let ids = try input.ids(limit: tok.vocabularySize)
                out.append(contentsOf: jsonQuote(tok.decode(ids, skipSpecialTokens: skipSpecialTokens), ensureASCII: false).utf8)
            } else {
                let text = try input.string()
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

/// The one JSON value of an input line (the tokenizers' JSON parser): a string, or an array of ids.
private struct JSONLine {
    let value: JSONValue
    let line: Int

    static let expectedString = "a JSON string such as \"Hello\"", expectedIDs = "a JSON array of token ids such as [1, 2, 3]"

    /// `expected` names what the line should hold, for the error when it is not JSON at all.
    init(bytes: [UInt8], line: Int, expected: String) throws {
        self.line = line
        guard bytes.contains(where: { ![0x20, 0x09, 0x0D, 0x0A].contains($0) }) else {
            throw TokenizeCommand.InputError(line: line, message: "empty line; expected \(expected)")
        }
        do { value = try JSONParser.parse(bytes) } catch let failure as JSONParser.Failure {
            throw TokenizeCommand.InputError(line: line, message: "\(failure.message) at column \(failure.offset + 1); expected \(expected)")
        }
    }

    func string() throws -> String {
        guard case let .string(text) = value else {
            throw TokenizeCommand.InputError(line: line, message: "expected \(Self.expectedString), found \(value.kindName)")
        }
        return text
    }

    func ids(limit: Int) throws -> [Int] {
        guard case let .array(items) = value else {
            throw TokenizeCommand.InputError(line: line, message: "expected \(Self.expectedIDs), found \(value.kindName)")
        }
        return try items.enumerated().map { index, item in
            guard case let .int(id) = item else {
                throw TokenizeCommand.InputError(line: line, message: "element \(index) is \(item.kindName); expected a token id (an integer)")
            }
            guard id >= 0 && id < limit else {
                throw TokenizeCommand.InputError(line: line, message: "token id \(id) is outside the vocabulary (0..<\(limit))")
            }
            return id
        }
    }
}
