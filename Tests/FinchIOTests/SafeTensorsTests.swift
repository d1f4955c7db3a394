import Foundation
import XCTest
import FinchTestSupport
@testable import FinchKernels
@testable import FinchIO

final class SafeTensorsTests: XCTestCase {
    var folder = ""

    override func setUp() { folder = IOTestSupport.temporaryFolder() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: folder) }

    private func path(_ name: String) -> String { (folder as NSString).appendingPathComponent(name) }

    private let sample: [(name: String, shape: [Int], values: [Float])] = [
        ("zeta.weight", [2, 3], [1, -2, 3.5, 0, -0.25, 1024]),
        ("alpha.bias", [3], [0.5, -1.5, 2]),
        ("scalar", [], [7]),
        ("empty", [0, 4], []),
    ]

    func testRoundTripF32() throws {
        let file = path("model.safetensors")
        try SafeTensors.write(path: file, tensors: sample, metadata: ["format": "pt", "note": "quote \" and \\ and \n"])
        let tensors = try SafeTensors.read(path: file)
        XCTAssertEqual(Set(tensors.keys), Set(sample.map(\.name)))
        for (name, shape, values) in sample {
            let tensor = try XCTUnwrap(tensors[name])
            XCTAssertEqual(tensor.dtype, .f32)
            XCTAssertEqual(tensor.shape, shape)
            XCTAssertEqual(tensor.name, name)
            XCTAssertEqual(dequantize(tensor), values, name)
        }
        XCTAssertEqual(try SafeTensors.metadata(path: file), ["format": "pt", "note": "quote \" and \\ and \n"])

        // Layout: header padded to 8 bytes with spaces, data in sorted name order.
        let bytes = try XCTUnwrap(FileManager.default.contents(atPath: file))
        let headerLength = bytes.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        XCTAssertEqual(headerLength % 8, 0)
        let header = try XCTUnwrap(String(data: bytes[8..<(8 + headerLength)], encoding: .utf8))
        XCTAssertFalse(header.trimmingCharacters(in: .whitespaces).hasSuffix(" "))
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(header.utf8)) as? [String: Any])
        let begins = ["alpha.bias", "empty", "scalar", "zeta.weight"].map {
            (((json[$0] as? [String: Any])?["data_offsets"] as? [Int]) ?? [-1])[0]
        }
        XCTAssertEqual(begins, [0, 12, 12, 16])
        XCTAssertEqual(bytes.count, 8 + headerLength + 40)
        // Other readers must find the same bytes: little-endian F32 of `alpha.bias` first.
        let firstValue = bytes[(8 + headerLength)..<(12 + headerLength)].enumerated().reduce(UInt32(0)) { $0 | UInt32($1.element) << (8 * UInt32($1.offset)) }
        XCTAssertEqual(Float(bitPattern: firstValue), 0.5)
    }

    func testRoundTripF16() throws {
        let file = path("half.safetensors")
        let values: [Float] = [1, -2, 0.5, 65504, 6.1035156e-05, 5.9604645e-08, 0.1, 1.0 / 3.0, -0.0, 70000]
        try SafeTensors.write(path: file, tensors: [("h", [2, 5], values)], dtype: .f16)
        let tensor = try XCTUnwrap(try SafeTensors.read(path: file)["h"])
        XCTAssertEqual(tensor.dtype, .f16)
        XCTAssertEqual(tensor.byteCount, 20)
        XCTAssertEqual(dequantize(tensor).map(\.bitPattern), values.map { Float(Float16($0)).bitPattern })
        XCTAssertEqual(Array(dequantize(tensor).prefix(6)), Array(values.prefix(6)), "representable values survive exactly")
        XCTAssertEqual(dequantize(tensor)[9], .infinity, "70000 overflows half")
    }

    func testRoundTripBF16() throws {
        let file = path("brain.safetensors")
        // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: ties go to even (1). 1 + 3 * 2^-8 rounds up.
        let values: [Float] = [1, -3.5, 1 + 1.0 / 256, 1 + 3.0 / 256, 3.0e38, Float(bitPattern: 0x0001_8234), .nan, -.infinity]
        try SafeTensors.write(path: file, tensors: [("b", [8], values)], dtype: .bf16)
        let tensor = try XCTUnwrap(try SafeTensors.read(path: file)["b"])
        XCTAssertEqual(tensor.dtype, .bf16)
        let back = dequantize(tensor)
        XCTAssertEqual(back[0], 1)
        XCTAssertEqual(back[1], -3.5)
        XCTAssertEqual(back[2], 1)
        XCTAssertEqual(back[3], 1 + 4.0 / 256)
        XCTAssertEqual(back[4], Float(bitPattern: 0x7F62_0000))
        XCTAssertEqual(back[5].bitPattern, 0x0002_0000, "subnormals round too")
        XCTAssertTrue(back[6].isNaN)
        XCTAssertEqual(back[7], -.infinity)
    }

    func testWriteReplacesAtomicallyAndLeavesNoTemporaryFiles() throws {
        let file = path("model.safetensors")
        try SafeTensors.write(path: file, tensors: sample)
        try SafeTensors.write(path: file, tensors: [("only", [1], [42])])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder), ["model.safetensors"])
        XCTAssertEqual(Array(try SafeTensors.read(path: file).keys), ["only"])
    }

    func testWriteRejectsMismatchedShapeAndDuplicateNames() {
        let file = path("bad.safetensors")
        XCTAssertThrowsError(try SafeTensors.write(path: file, tensors: [("w", [2, 2], [1, 2, 3])])) { error in
            XCTAssertTrue("\(error)".contains("'w'") && "\(error)".contains("[2, 2]"), "\(error)")
        }
        XCTAssertThrowsError(try SafeTensors.write(path: file, tensors: [("w", [1], [1]), ("w", [1], [2])]))
        XCTAssertThrowsError(try SafeTensors.write(path: file, tensors: [("w", [1], [1])], dtype: .q8_0))
        XCTAssertFalse(FileManager.default.fileExists(atPath: file))
        XCTAssertThrowsError(try SafeTensors.write(path: path("no/such/folder/x.safetensors"), tensors: [("w", [1], [1])])) { error in
            XCTAssertTrue("\(error)".contains("no/such/folder/x.safetensors"), "\(error)")
        }
    }

    func testTruncatedFile() throws {
        let file = path("truncated.safetensors")
        try SafeTensors.write(path: file, tensors: sample)
        var bytes = try XCTUnwrap(FileManager.default.contents(atPath: file))
        bytes.removeLast(5)
        try bytes.write(to: URL(fileURLWithPath: file))
        IOTestSupport.assertLoadError(try SafeTensors.read(path: file), mentions: [file, "zeta.weight", "data_offsets", "truncated"])

        IOTestSupport.writeBytes([1, 2, 3], to: file)
        IOTestSupport.assertLoadError(try SafeTensors.read(path: file), mentions: [file, "header length", "3 bytes"])
        IOTestSupport.writeBytes([], to: file)
        IOTestSupport.assertLoadError(try SafeTensors.read(path: file), mentions: [file, "header length", "0 bytes"])
    }

    func testOffsetsPastEndOfFile() {
        let file = path("offsets.safetensors")
        let header = #"{"w":{"dtype":"F32","shape":[100],"data_offsets":[0,400]}}"#
        IOTestSupport.writeBytes(IOTestSupport.rawSafeTensors(header: header, data: [UInt8](repeating: 0, count: 16)), to: file)
        IOTestSupport.assertLoadError(try SafeTensors.read(path: file), mentions: [file, "'w'", "data_offsets", "[0, 400]", "16 data bytes"])
    }

    /// Tensors must tile the data region exactly (issue 18: overlapping offsets and a header length
    /// one byte short were read as garbage, NaN, with exit 0).
    func testTensorsTileTheDataExactly() {
        let file = path("tiling.safetensors")
        let data = [UInt8](repeating: 0, count: 16)
        let overlap = #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#
        IOTestSupport.writeBytes(IOTestSupport.rawSafeTensors(header: overlap, data: [UInt8](repeating: 0, count: 12)), to: file)
        IOTestSupport.assertLoadError(try SafeTensors.read(path: file), mentions: [file, "'b'", "byte 4", "without gaps or overlaps"])
        let gap = #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}}"#
        IOTestSupport.writeBytes(IOTestSupport.rawSafeTensors(header: gap, data: data), to: file)
        IOTestSupport.assertLoadError(try SafeTensors.read(path: file), mentions: [file, "'b'", "byte 12"])
        let tail = #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#
        IOTestSupport.writeBytes(IOTestSupport.rawSafeTensors(header: tail, data: data), to: file)
        IOTestSupport.assertLoadError(try SafeTensors.read(path: file), mentions: [file, "byte 8 of 16", "header length"])
        // A header padded with a space, its length one byte short: still valid JSON, every tensor one byte off.
        let header = #"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}} "#
        IOTestSupport.writeBytes(IOTestSupport.rawSafeTensors(header: header, data: data, headerLength: UInt64(header.utf8.count - 1)), to: file)
        IOTestSupport.assertLoadError(try SafeTensors.read(path: file), mentions: [file, "16 of 17 data bytes"])
        IOTestSupport.writeBytes(IOTestSupport.rawSafeTensors(header: header, data: data), to: file)
        XCTAssertNoThrow(try SafeTensors.read(path: file))
    }

    func testOffsetsInconsistentWithShape() {
        let file = path("shape.safetensors")
        let header = #"{"w":{"dtype":"F16","shape":[2,3],"data_offsets":[0,16]}}"#
        IOTestSupport.writeBytes(IOTestSupport.rawSafeTensors(header: header, data: [UInt8](repeating: 0, count: 16)), to: file)
        IOTestSupport.assertLoadError(try SafeTensors.read(path: file), mentions: [file, "'w'", "16 bytes", "12 bytes", "[2, 3]", "F16"])

        let reversed = #"{"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#
        IOTestSupport.writeBytes(IOTestSupport.rawSafeTensors(header: reversed, data: [UInt8](repeating: 0, count: 16)), to: file)
        IOTestSupport.assertLoadError(try SafeTensors.read(path: file), mentions: [file, "'w'", "[8, 4]", "begin <= end"])

        let overflowing = #"{"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,4]}}"#
        IOTestSupport.writeBytes(IOTestSupport.rawSafeTensors(header: overflowing, data: [UInt8](repeating: 0, count: 16)), to: file)
        IOTestSupport.assertLoadError(try SafeTensors.read(path: file), mentions: [file, "'w'", "overflowing"])

        let negative = #"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#
        IOTestSupport.writeBytes(IOTestSupport.rawSafeTensors(header: negative, data: [UInt8](repeating: 0, count: 16)), to: file)
        IOTestSupport.assertLoadError(try SafeTensors.read(path: file), mentions: [file, "'w' shape", "non-negative"])
    }

    func testHeaderLengthPastEnd() {
        let file = path("long.safetensors")
        IOTestSupport.writeBytes(IOTestSupport.rawSafeTensors(header: "{}      ", data: [], headerLength: 1000), to: file)
        IOTestSupport.assertLoadError(try SafeTensors.read(path: file), mentions: [file, "header length", "1000 bytes", "at most the 8 bytes"])
        IOTestSupport.writeBytes(IOTestSupport.rawSafeTensors(header: "{}", data: [], headerLength: UInt64.max), to: file)
        IOTestSupport.assertLoadError(try SafeTensors.read(path: file), mentions: [file, "header length", "\(UInt64.max) bytes"])
    }

    func testGarbageJSON() {
        let file = path("garbage.safetensors")
        IOTestSupport.writeBytes(IOTestSupport.rawSafeTensors(header: "{not json at all", data: []), to: file)
        IOTestSupport.assertLoadError(try SafeTensors.read(path: file), mentions: [file, "JSON header", "invalid JSON", "{not json"])
        IOTestSupport.writeBytes(IOTestSupport.rawSafeTensors(header: "[1, 2]  ", data: []), to: file)
        IOTestSupport.assertLoadError(try SafeTensors.read(path: file), mentions: [file, "JSON header", "a JSON object"])
        IOTestSupport.writeBytes(IOTestSupport.rawSafeTensors(header: #"{"w": 3}"#, data: []), to: file)
        IOTestSupport.assertLoadError(try SafeTensors.read(path: file), mentions: [file, "'w'", "dtype, shape and data_offsets"])
    }

    func testUnsupportedDType() {
        let file = path("ints.safetensors")
        let header = #"{"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}"#
        IOTestSupport.writeBytes(IOTestSupport.rawSafeTensors(header: header, data: [UInt8](repeating: 0, count: 16)), to: file)
        IOTestSupport.assertLoadError(try SafeTensors.read(path: file), mentions: [file, "'ids'", "I64", "F32, F16, BF16"])
    }

    func testMissingFile() {
        let file = path("absent.safetensors")
        XCTAssertThrowsError(try SafeTensors.read(path: file)) { error in
            XCTAssertEqual(error as? LoadError, .fileNotFound(path: file))
        }
        IOTestSupport.assertLoadError(try MappedFile(path: folder), mentions: [folder, "directory"])
    }

    func testFolderWithSingleFile() throws {
        try SafeTensors.write(path: path("model.safetensors"), tensors: sample)
        let tensors = try loadSafeTensorsFolder(folder)
        XCTAssertEqual(tensors.count, sample.count)
        XCTAssertEqual(IOTestSupport.values(tensors["zeta.weight"]), sample[0].values)
    }

    func testShardedFolder() throws {
        try SafeTensors.write(path: path("model-00001-of-00002.safetensors"), tensors: [sample[0], sample[1]])
        try SafeTensors.write(path: path("model-00002-of-00002.safetensors"), tensors: [sample[2]])
        let index = """
        {"metadata": {"total_size": 40}, "weight_map": {
          "zeta.weight": "model-00001-of-00002.safetensors",
          "alpha.bias": "model-00001-of-00002.safetensors",
          "scalar": "model-00002-of-00002.safetensors"}}
        """
        _ = FileManager.default.createFile(atPath: path("model.safetensors.index.json"), contents: Data(index.utf8))
        let tensors = try loadSafeTensorsFolder(folder)
        XCTAssertEqual(Set(tensors.keys), ["zeta.weight", "alpha.bias", "scalar"])
        XCTAssertEqual(IOTestSupport.values(tensors["scalar"]), [7])
        XCTAssertEqual(IOTestSupport.values(tensors["alpha.bias"]), sample[1].values)

        // The index names a tensor its shard does not hold.
        let lying = index.replacingOccurrences(of: #""scalar": "#, with: #""ghost": "model-00002-of-00002.safetensors", "scalar": "#)
        _ = FileManager.default.createFile(atPath: path("model.safetensors.index.json"), contents: Data(lying.utf8))
        IOTestSupport.assertLoadError(try loadSafeTensorsFolder(folder), mentions: ["model-00002-of-00002.safetensors", "'ghost'", "missing"])

        // The index names a shard that does not exist.
        let absent = index.replacingOccurrences(of: "model-00002-of-00002", with: "model-00009-of-00009")
        _ = FileManager.default.createFile(atPath: path("model.safetensors.index.json"), contents: Data(absent.utf8))
        IOTestSupport.assertLoadError(try loadSafeTensorsFolder(folder), mentions: ["model-00009-of-00009.safetensors", "no such file"])

        _ = FileManager.default.createFile(atPath: path("model.safetensors.index.json"), contents: Data("{}".utf8))
        IOTestSupport.assertLoadError(try loadSafeTensorsFolder(folder), mentions: ["model.safetensors.index.json", "weight_map"])
    }

    func testFolderWithoutWeights() {
        IOTestSupport.assertLoadError(try loadSafeTensorsFolder(folder), mentions: [folder, "model.safetensors", "model.safetensors.index.json"])
        IOTestSupport.assertLoadError(try loadSafeTensorsFolder(path("nowhere")), mentions: [path("nowhere"), "no such file"])
    }

    func testReadsParityFixture() throws {
        let tensors = try SafeTensors.read(path: IOTestSupport.fixture("parity/llama_tied/model.safetensors"))
        let embed = try XCTUnwrap(tensors["model.embed_tokens.weight"])
        XCTAssertEqual(embed.dtype, .f32)
        XCTAssertEqual(embed.shape.count, 2)
        XCTAssertNil(tensors["lm_head.weight"])
    }
}
