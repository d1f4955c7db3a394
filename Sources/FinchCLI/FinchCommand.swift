import ArgumentParser
import Finch
import Foundation

@main
struct FinchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "finch",
        abstract: "Fine-tune language models fast on an ordinary machine.",
        subcommands: [PerplexityCommand.self, BenchCommand.self])
}

/// Prints a library error as one line and exits non-zero, instead of a trace.
func runReportingErrors(_ body: () throws -> Void) throws {
    do { try body() } catch let error as LoadError {
        FileHandle.standardError.write(Data("error: \(error)\n".utf8))
        throw ExitCode(1)
    } catch let error as SaveError {
        FileHandle.standardError.write(Data("error: \(error)\n".utf8))
        throw ExitCode(1)
    }
}
