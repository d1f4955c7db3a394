import ArgumentParser
import Finch
import Foundation

@main
struct FinchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "finch",
        abstract: "Fine-tune language models fast on an ordinary machine.",
        subcommands: [TrainCommand.self, GenerateCommand.self, ChatCommand.self, PerplexityCommand.self, TokenizeCommand.self, TemplateCommand.self, ExportCommand.self,
                      PlotCommand.self, ImatrixCommand.self, BenchCommand.self])
}

/// Prints a library error as one line and exits non-zero, instead of a trace. Usage errors
/// go on to ArgumentParser, which prints them with the help text.
func runReportingErrors(_ body: () throws -> Void) throws {
    do { try body() } catch let error as ValidationError {
        throw error
    } catch let error as ExitCode {
        throw error
    } catch {
        FileHandle.standardError.write(Data("error: \(error)\n".utf8))
        throw ExitCode(1)
    }
}
