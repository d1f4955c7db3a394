import Foundation
import FinchIO

/// TensorBoard event files (`events.out.tfevents.<seconds>.<host>`), as TensorFlow writes them:
/// TFRecord framing (length, masked CRC32C of the length, the record, masked CRC32C of the
/// record) around `Event` protobufs: a first event naming the file version, then per step a
/// `Summary` of scalars (`simple_value`) or text (the "text" plugin's string tensor). The few
/// protobuf fields these messages use are encoded here directly (field numbers from
/// tensorflow/core/util/event.proto and framework/summary.proto, tensor.proto).
public final class TensorBoardWriter {
    /// The event file being written.
    public let path: String
    private let handle: FileHandle

    /// Creates `directory` if needed and a new event file in it, and writes the version event.
    public init(directory: String, wallTime: Double = Date().timeIntervalSince1970) throws {
        do { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
            throw SaveError.unwritable(path: directory, reason: error.localizedDescription)
        }
        let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "localhost"
        path = (directory as NSString).appendingPathComponent("events.out.tfevents.\(Int(wallTime)).\(host).\(getpid())")
        guard FileManager.default.createFile(atPath: path, contents: nil), let handle = FileHandle(forWritingAtPath: path) else {
            throw SaveError.unwritable(path: path, reason: "cannot create the event file")
        }
        self.handle = handle
        var event = Protobuf()
        event.double(1, wallTime)
        event.bytes(3, Array("brain.Event:2".utf8))
        try write(event.data)
    }

    deinit { try? handle.close() }

    /// One event of `scalars` (tag → value) at `step`; tags in sorted order.
    public func add(scalars: [String: Double], step: Int, wallTime: Double = Date().timeIntervalSince1970) throws {
        var summary = Protobuf()
        for tag in scalars.keys.sorted() {
            var value = Protobuf()
            value.bytes(1, Array(tag.utf8))
            value.float(2, Float(scalars[tag]!))
            summary.bytes(1, value.data)
        }
        try write(Self.event(summary, step: step, wallTime: wallTime))
    }

    /// One event holding `text` under `tag` (TensorBoard's Text tab) at `step`.
    public func add(text: String, tag: String, step: Int, wallTime: Double = Date().timeIntervalSince1970) throws {
        var pluginData = Protobuf()
        pluginData.bytes(1, Array("text".utf8))
        var metadata = Protobuf()
        metadata.bytes(1, pluginData.data)
        var tensor = Protobuf()
        tensor.varint(1, 7)                 // DT_STRING
        tensor.bytes(2, [])                 // a scalar: a shape with no dimensions
        tensor.bytes(8, Array(text.utf8))   // string_val
        var value = Protobuf()
        value.bytes(1, Array(tag.utf8))
        value.bytes(9, metadata.data)
        value.bytes(8, tensor.data)
        var summary = Protobuf()
        summary.bytes(1, value.data)
        try write(Self.event(summary, step: step, wallTime: wallTime))
    }

    static func event(_ summary: Protobuf, step: Int, wallTime: Double) -> [UInt8] {
        var event = Protobuf()
        event.double(1, wallTime)
        event.varint(2, UInt64(bitPattern: Int64(step)))
        event.bytes(5, summary.data)
        return event.data
    }

    /// Appends one TFRecord and flushes it to the file (a run killed later keeps its events).
    private func write(_ record: [UInt8]) throws {
        var length = [UInt8](repeating: 0, count: 8)
        for i in 0..<8 { length[i] = UInt8(truncatingIfNeeded: UInt64(record.count) >> (8 * i)) }
        var frame = length
        frame += Self.littleEndian(CRC32C.masked(length))
        frame += record
        frame += Self.littleEndian(CRC32C.masked(record))
        do { try handle.write(contentsOf: Data(frame)) } catch {
            throw SaveError.unwritable(path: path, reason: error.localizedDescription)
        }
    }

    static func littleEndian(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }

    /// The records of an event file, each checked against its CRCs (nil for a damaged file).
    public static func records(_ data: [UInt8]) -> [[UInt8]]? {
        var out: [[UInt8]] = [], i = 0
        func u32(_ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(data[at + $1]) << (8 * $1) } }
        while i < data.count {
            guard i + 16 <= data.count else { return nil }   // the smallest record: an empty one
            let stored = (0..<8).reduce(UInt64(0)) { $0 | UInt64(data[i + $1]) << (8 * $1) }
            // A length past the end (up to 2^64 - 1 in a damaged file) is refused before it is an Int.
            guard CRC32C.masked(Array(data[i..<i + 8])) == u32(i + 8), stored <= UInt64(data.count - i - 16) else { return nil }
            let length = Int(stored)
            let record = Array(data[i + 12..<i + 12 + length])
            guard CRC32C.masked(record) == u32(i + 12 + length) else { return nil }
            out.append(record)
            i += 16 + length
        }
        return out
    }
}

/// The protobuf wire format, write side: varints, 64- and 32-bit fixed fields, length-delimited bytes.
struct Protobuf {
    var data: [UInt8] = []

    mutating func key(_ field: Int, _ wireType: UInt64) { rawVarint(UInt64(field) << 3 | wireType) }
    mutating func rawVarint(_ value: UInt64) {
        var v = value
        while v >= 0x80 { data.append(UInt8(v & 0x7f) | 0x80); v >>= 7 }
        data.append(UInt8(v))
    }
    mutating func varint(_ field: Int, _ value: UInt64) { key(field, 0); rawVarint(value) }
    mutating func double(_ field: Int, _ value: Double) {
        key(field, 1)
        let bits = value.bitPattern
        for i in 0..<8 { data.append(UInt8(truncatingIfNeeded: bits >> (8 * i))) }
    }
    mutating func float(_ field: Int, _ value: Float) {
        key(field, 5)
        let bits = value.bitPattern
        for i in 0..<4 { data.append(UInt8(truncatingIfNeeded: bits >> (8 * i))) }
    }
    mutating func bytes(_ field: Int, _ value: [UInt8]) {
        key(field, 2)
        rawVarint(UInt64(value.count))
        data += value
    }
}

/// CRC-32C (Castagnoli), as TFRecord uses it, and TensorFlow's masking of it.
enum CRC32C {
    static let table: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0x82F6_3B78 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for b in bytes { crc = table[Int((crc ^ UInt32(b)) & 0xff)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }

    static func masked(_ bytes: [UInt8]) -> UInt32 {
        let crc = checksum(bytes)
        return ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8
    }
}
