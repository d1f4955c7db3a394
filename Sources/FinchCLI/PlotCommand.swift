import ArgumentParser
import Finch
import Foundation

struct PlotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plot",
        abstract: "Draw a run's loss, learning rate and main metric per step as an SVG (from its metrics.jsonl).")

    @Argument(help: "The run folder (finch train's --output).") var runDirectory: String
    @Option(help: "Where to write the SVG (default: RUN/metrics.svg).") var output: String?

    func run() throws {
        try runReportingErrors {
            print(try MetricsPlot.write(runDirectory: runDirectory, output: output))
        }
    }
}
