import XCTest
import FinchTestSupport
@testable import FinchTraining

/// TensorBoard event files (TFRecord framing, masked CRC32C, Event / Summary protobufs) and the
/// SVG of a run's curves. `reference/check_tensorboard.py` reads a real run's files with the
/// tensorboard package.
final class ReportingTests: TemporaryDirectoryTestCase {
    /// The protobuf fields of one message: field number → values (varints and fixed as UInt64, bytes as [UInt8]).
    static func fields(_ data: [UInt8]) -> [Int: [Any]] {
        var out: [Int: [Any]] = [:], i = 0
        func varint() -> UInt64 {
            var v: UInt64 = 0, shift: UInt64 = 0
            while true { let b = data[i]; i += 1; v |= UInt64(b & 0x7f) << shift; if b < 0x80 { return v }; shift += 7 }
        }
        while i < data.count {
            let key = varint(), field = Int(key >> 3)
            switch key & 7 {
            case 0: out[field, default: []].append(varint())
            case 1: out[field, default: []].append((0..<8).reduce(UInt64(0)) { $0 | UInt64(data[i + $1]) << (8 * $1) }); i += 8
            case 5: out[field, default: []].append((0..<4).reduce(UInt64(0)) { $0 | UInt64(data[i + $1]) << (8 * $1) }); i += 4
            default:
                let n = Int(varint())
                out[field, default: []].append(Array(data[i..<i + n])); i += n
            }
        }
        return out
    }

    func testCRC32CKnownValues() {
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
    }

    func testEventFileHoldsScalarsAndText() throws {
        let writer = try TensorBoardWriter(directory: temporary.appendingPathComponent("tb").path, wallTime: 1000)
        try writer.add(scalars: ["train/loss": 2.5, "train/learning_rate": 1e-4], step: 3, wallTime: 1001)
        try writer.add(text: "**prompt:** hi", tag: "eval/generation_0", step: 3, wallTime: 1002)
        XCTAssertTrue((writer.path as NSString).lastPathComponent.hasPrefix("events.out.tfevents.1000."))
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: writer.path)))
        let records = try XCTUnwrap(TensorBoardWriter.records(bytes), "a CRC or length does not check")
        XCTAssertEqual(records.count, 3)
        let version = Self.fields(records[0])
        XCTAssertEqual(version[3]?.first as? [UInt8], Array("brain.Event:2".utf8))
        XCTAssertEqual(Double(bitPattern: version[1]?.first as! UInt64), 1000)

        let event = Self.fields(records[1])
        XCTAssertEqual(event[2]?.first as? UInt64, 3)
        let values = Self.fields(event[5]!.first as! [UInt8])[1]!.map { Self.fields($0 as! [UInt8]) }
        let scalars = Dictionary(uniqueKeysWithValues: values.map {
            (String(decoding: $0[1]!.first as! [UInt8], as: UTF8.self), Float(bitPattern: UInt32($0[2]!.first as! UInt64)))
        })
        XCTAssertEqual(scalars, ["train/loss": 2.5, "train/learning_rate": Float(1e-4)])

        let text = Self.fields(Self.fields(Self.fields(records[2])[5]!.first as! [UInt8])[1]!.first as! [UInt8])
        XCTAssertEqual(String(decoding: text[1]!.first as! [UInt8], as: UTF8.self), "eval/generation_0")
        let tensor = Self.fields(text[8]!.first as! [UInt8])
        XCTAssertEqual(tensor[1]?.first as? UInt64, 7, "DT_STRING")
        XCTAssertEqual(String(decoding: tensor[8]!.first as! [UInt8], as: UTF8.self), "**prompt:** hi")
        let plugin = Self.fields(Self.fields(text[9]!.first as! [UInt8])[1]!.first as! [UInt8])
        XCTAssertEqual(plugin[1]?.first as? [UInt8], Array("text".utf8))

        // A flipped bit anywhere is caught by the CRCs.
        var damaged = bytes
        damaged[bytes.count / 2] ^= 0x10
        XCTAssertNil(TensorBoardWriter.records(damaged))
        // Cut short, or a length field of 2^64 - 1 (with its CRC made to match): refused, no trap.
        XCTAssertNil(TensorBoardWriter.records(Array(bytes.dropLast(3))))
        var huge = [UInt8](repeating: 0xff, count: 8)
        huge += TensorBoardWriter.littleEndian(CRC32C.masked(huge)) + [0, 0, 0, 0]
        XCTAssertNil(TensorBoardWriter.records(huge))
    }

    func testPlotHasThePanelsOfTheRun() throws {
        var lines: [[String: Double]] = []
        for step in 1...6 {
            let x = Double(step)
            lines.append(["step": x, "loss": 3 - 0.3 * x, "learning_rate": 1e-4, "reward": 0.1 * x])
        }
        lines.append(["step": 3, "eval_loss": 2.4])
        lines.append(["step": 6, "eval_loss": 1.9])
        let svg = MetricsPlot.svg(lines, title: "run <a>")
        XCTAssertTrue(svg.hasPrefix("<?xml"))
        XCTAssertTrue(svg.contains("run &lt;a&gt;"))
        XCTAssertEqual(svg.components(separatedBy: "<polyline").count - 1, 4, "train and eval loss, learning rate, reward")
        XCTAssertTrue(svg.contains(">reward</text>"))
        // The train loss polyline has a point per logged step, left to right.
        let first = try XCTUnwrap(svg.components(separatedBy: "points=\"").dropFirst().first?.split(separator: "\"").first)
        let xs = first.split(separator: " ").map { Double($0.split(separator: ",")[0])! }
        XCTAssertEqual(xs.count, 6)
        XCTAssertEqual(xs, xs.sorted())
        XCTAssertTrue(MetricsPlot.svg([], title: "empty").contains("no metrics logged"))
        // Step ticks are whole steps placed where those steps are (a tick labelled "2" once sat at 1.5).
        XCTAssertEqual(MetricsPlot.stepTicks(0, 6), [0, 2, 4, 6])
        XCTAssertEqual(MetricsPlot.stepTicks(1, 6), [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(MetricsPlot.stepTicks(0, 1), [0, 1])
        XCTAssertEqual(MetricsPlot.stepTicks(3, 1000), [200, 400, 600, 800, 1000])
        XCTAssertEqual(MetricsPlot.stepTicks(0, 120), [0, 50, 100])
        XCTAssertEqual(MetricsPlot.stepTicks(-1, 1), [-1, 0, 1])
        let labels = svg.components(separatedBy: "text-anchor=\"middle\">").dropFirst().compactMap { Double($0.prefix { $0 != "<" }) }
        XCTAssertEqual(Array(labels.prefix(6)), [1, 2, 3, 4, 5, 6], "the first panel's step labels")
        // Each label sits over its step: the same x as the train loss point of that step.
        let tickXs = svg.components(separatedBy: "<text x=\"").dropFirst().compactMap { part -> Double? in
            part.contains("text-anchor=\"middle\">") && !part.contains(">step<") ? Double(part.prefix { $0 != "\"" }) : nil
        }
        XCTAssertEqual(Array(tickXs.prefix(6)), xs)

        let run = temporary.appendingPathComponent("run").path
        try FileManager.default.createDirectory(atPath: run, withIntermediateDirectories: true)
        try "{\"step\": 1, \"loss\": 2}\nnot json\n".write(toFile: run + "/metrics.jsonl", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try MetricsPlot.write(runDirectory: run)) { XCTAssertTrue("\($0)".contains("line 2"), "\($0)") }
    }
}
