import Foundation
import FinchIO

/// A run's curves as one SVG page (what `finch plot` and the end of `finch train` write): the
/// training and evaluation loss, the learning rate, and the method's main metric (GRPO's mean
/// reward, the preference methods' reward accuracy, KTO's reward margin), each against the step.
/// Plain SVG 1.1 (lines, text, no scripts or fonts to fetch), so any browser or `rsvg-convert`
/// renders it.
public enum MetricsPlot {
    /// One panel: a title and its series (name, colour, (step, value) points).
    struct Panel {
        var title: String
        var series: [(name: String, colour: String, points: [(Double, Double)])]
    }

    /// The main metric of a run, by the first of these it logged.
    static let mainMetrics = ["reward", "rewards/accuracies", "rewards/margins", "mean_token_accuracy"]

    /// The panels of a run's logged lines (metrics.jsonl's objects: `step`, training keys, `eval_*` keys).
    static func panels(_ lines: [[String: Double]]) -> [Panel] {
        func points(_ key: String) -> [(Double, Double)] {
            lines.compactMap { line in
                guard let step = line["step"], let value = line[key], value.isFinite else { return nil }
                return (step, value)
            }
        }
        var panels = [Panel(title: "loss", series: [("train", "#1f77b4", points("loss")), ("eval", "#d62728", points("eval_loss"))])]
        panels.append(Panel(title: "learning rate", series: [("learning rate", "#2ca02c", points("learning_rate"))]))
        if let main = mainMetrics.first(where: { !points($0).isEmpty || !points("eval_" + $0).isEmpty }) {
            panels.append(Panel(title: main, series: [("train", "#9467bd", points(main)), ("eval", "#ff7f0e", points("eval_" + main))]))
        }
        return panels.map { panel in
            var p = panel
            p.series = p.series.filter { !$0.points.isEmpty }
            return p
        }.filter { !$0.series.isEmpty }
    }

    /// The SVG of `lines`, titled `title`.
    public static func svg(_ lines: [[String: Double]], title: String) -> String {
        let panels = panels(lines)
        let width = 720.0, panelHeight = 220.0, top = 40.0
        let height = top + Double(max(panels.count, 1)) * panelHeight + 10
        var out = """
            <?xml version="1.0" encoding="UTF-8"?>
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" \
            font-family="sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(Int(width / 2))" y="24" text-anchor="middle" font-size="15">\(escape(title))</text>

            """
        if panels.isEmpty {
            out += "<text x=\"\(Int(width / 2))\" y=\"\(Int(top + 40))\" text-anchor=\"middle\">no metrics logged</text>\n"
        }
        // One step axis for every panel, so the curves line up.
        let steps = panels.flatMap { $0.series.flatMap { $0.points.map(\.0) } }
        for (index, panel) in panels.enumerated() {
            out += self.panel(panel, steps: (steps.min() ?? 0, steps.max() ?? 1), x: 70, y: top + Double(index) * panelHeight + 20,
                              width: width - 110, height: panelHeight - 60)
        }
        return out + "</svg>\n"
    }

    static func panel(_ panel: Panel, steps: (Double, Double), x: Double, y: Double, width: Double, height: Double) -> String {
        let all = panel.series.flatMap(\.points)
        var (x0, x1) = steps
        var (y0, y1) = (all.map(\.1).min()!, all.map(\.1).max()!)
        if x1 == x0 { x0 -= 1; x1 += 1 }
        if y1 == y0 { let pad = max(abs(y0) * 0.1, 1e-3); y0 -= pad; y1 += pad }
        let padding = (y1 - y0) * 0.05
        y0 -= padding; y1 += padding
        func px(_ v: Double) -> Double { x + (v - x0) / (x1 - x0) * width }
        func py(_ v: Double) -> Double { y + height - (v - y0) / (y1 - y0) * height }
        func f(_ v: Double) -> String { String(format: "%.1f", v) }
        var s = "<g>\n<text x=\"\(f(x))\" y=\"\(f(y - 6))\" font-size=\"13\">\(escape(panel.title))</text>\n"
        s += "<rect x=\"\(f(x))\" y=\"\(f(y))\" width=\"\(f(width))\" height=\"\(f(height))\" fill=\"none\" stroke=\"#888\"/>\n"
        for i in 0...4 {
            let v = y0 + (y1 - y0) * Double(i) / 4, yy = py(v)
            s += "<line x1=\"\(f(x))\" y1=\"\(f(yy))\" x2=\"\(f(x + width))\" y2=\"\(f(yy))\" stroke=\"#eee\"/>\n"
            s += "<text x=\"\(f(x - 6))\" y=\"\(f(yy + 4))\" text-anchor=\"end\">\(label(v))</text>\n"
        }
        for step in stepTicks(x0, x1) {
            s += "<text x=\"\(f(px(step)))\" y=\"\(f(y + height + 16))\" text-anchor=\"middle\">\(Int(step))</text>\n"
        }
        s += "<text x=\"\(f(x + width / 2))\" y=\"\(f(y + height + 32))\" text-anchor=\"middle\" fill=\"#555\">step</text>\n"
        for (i, series) in panel.series.enumerated() {
            let path = series.points.map { "\(f(px($0.0))),\(f(py($0.1)))" }.joined(separator: " ")
            s += "<polyline fill=\"none\" stroke=\"\(series.colour)\" stroke-width=\"1.6\" points=\"\(path)\"/>\n"
            if series.points.count < 40 {
                for p in series.points { s += "<circle cx=\"\(f(px(p.0)))\" cy=\"\(f(py(p.1)))\" r=\"2.2\" fill=\"\(series.colour)\"/>\n" }
            }
            let lx = x + width - 110, ly = y + 14 + Double(i) * 16
            s += "<line x1=\"\(f(lx))\" y1=\"\(f(ly - 4))\" x2=\"\(f(lx + 18))\" y2=\"\(f(ly - 4))\" stroke=\"\(series.colour)\" stroke-width=\"2\"/>\n"
            s += "<text x=\"\(f(lx + 24))\" y=\"\(f(ly))\">\(escape(series.name))</text>\n"
        }
        return s + "</g>\n"
    }

    /// The step axis's ticks: whole steps at multiples of 1, 2 or 5 times a power of ten, at most
    /// six in [x0, x1], each labelled with its own step.
    static func stepTicks(_ x0: Double, _ x1: Double) -> [Double] {
        // 1, 2, 5, 10, 20, 50, ...: the first that leaves at most five intervals.
        var k = 0, unit = 1.0
        while (x1 - x0) / unit > 5 {
            k += 1
            unit = [1.0, 2, 5][k % 3] * pow(10, Double(k / 3))
        }
        let first = (x0 / unit).rounded(.up) * unit
        return stride(from: first, through: x1 + 1e-9, by: unit).map { $0 }
    }

    static func label(_ v: Double) -> String {
        if v == 0 { return "0" }
        let a = abs(v)
        if a >= 1e4 || a < 1e-2 { return String(format: "%.2g", v) }
        if a >= 100 { return String(format: "%.0f", v) }
        return String(format: "%.3g", v)
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }

    /// The numeric fields of each line of a metrics.jsonl file; a line that is not a JSON
    /// object is an error naming the file and line.
    public static func readMetrics(_ path: String) throws -> [[String: Double]] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw LoadError.fileNotFound(path: path) }
        return try text.split(separator: "\n", omittingEmptySubsequences: false).enumerated().compactMap { number, line in
            guard !line.trimmingCharacters(in: .whitespaces).isEmpty else { return nil }
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                throw LoadError.malformed(path: path, field: "line \(number + 1)", found: String(line.prefix(60)), expected: "a JSON object of metrics")
            }
            return object.compactMapValues { ($0 as? NSNumber)?.doubleValue }
        }
    }

    /// Writes the SVG of the run in `runDirectory` (its metrics.jsonl) to `output` (default
    /// `runDirectory/metrics.svg`) and returns the path.
    @discardableResult
    public static func write(runDirectory: String, output: String? = nil) throws -> String {
        let lines = try readMetrics((runDirectory as NSString).appendingPathComponent("metrics.jsonl"))
        let path = output ?? (runDirectory as NSString).appendingPathComponent("metrics.svg")
        let title = "Finch run " + (runDirectory as NSString).lastPathComponent
        do { try svg(lines, title: title).write(toFile: path, atomically: true, encoding: .utf8) } catch {
            throw SaveError.unwritable(path: path, reason: error.localizedDescription)
        }
        return path
    }
}
