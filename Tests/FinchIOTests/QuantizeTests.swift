import Foundation
import XCTest
import FinchTestSupport
@testable import FinchKernels
@testable import FinchIO

/// Finch's quantizers write the blocks llama.cpp's quantizers write: byte for byte against
/// gguf-py (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and llama.cpp itself (the K types, IQ4_NL, IQ4_XS; with
/// and without an importance matrix), and every written type dequantizes back within its precision.
final class QuantizeTests: XCTestCase {
    static let writable: [DType] = [.q8_0, .q4_0, .q4_1, .q5_0, .q5_1, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .iq4_NL, .iq4_XS]

    func encode(_ values: [Float], as type: DType) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: values.count / type.blockSize * type.blockBytes)
        values.withUnsafeBufferPointer { src in
            bytes.withUnsafeMutableBytes { XCTAssertEqual(encodeRow(src.baseAddress!, as: type, into: $0.baseAddress!, count: values.count), $0.count) }
        }
        return bytes
    }

    func decode(_ bytes: [UInt8], as type: DType) -> [Float] {
        var values = [Float](repeating: .nan, count: bytes.count / type.blockBytes * type.blockSize)
        bytes.withUnsafeBytes { raw in values.withUnsafeMutableBufferPointer { dequantizeRow(type, raw.baseAddress!, $0.baseAddress!, count: $0.count) } }
        return values
    }

    /// reference/make_quantize_fixture.py: the same inputs through gguf-py's and llama.cpp's quantizers.
    func testBlocksEqualTheReferenceQuantizers() throws {
        let fixture = try SafeTensors.read(path: IOTestSupport.fixture("gguf/quantize_blocks.safetensors"))
        var checked: [String] = []
        for type in Self.writable {
            guard let input = fixture["\(type.rawValue).input"], let expectedBytes = fixture["\(type.rawValue).bytes"] else { continue }
            let expected = dequantize(expectedBytes).map { UInt8($0) }
            let got = encode(dequantize(input), as: type)
            XCTAssertEqual(got.count, expected.count, type.rawValue)
            if let i = zip(got, expected).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
                XCTFail("\(type.rawValue): byte \(i) (block \(i / type.blockBytes), offset \(i % type.blockBytes)) is \(got[i]), the reference wrote \(expected[i])")
            }
            checked.append(type.rawValue)
        }
        XCTAssertEqual(Set(checked), Set(Self.writable.map(\.rawValue)), "checked \(checked)")
    }

    /// With an importance matrix, every type but Q8_0 (which ignores one, as in ggml) writes the
    /// blocks of ggml's importance-weighted quantizers (reference/make_quantize_fixture.py
    /// --llama-cpp: ggml_quantize_chunk of llama-cpp-python 0.3.36), zero-weight columns and a
    /// zero-weight block included; and those bytes differ from the unweighted ones.
    func testImportanceWeightedBlocksEqualGgml() throws {
        let fixture = try SafeTensors.read(path: IOTestSupport.fixture("gguf/quantize_blocks.safetensors"))
        var checked: [String] = []
        for type in Self.writable where type != .q8_0 {
            let name = type.rawValue
            let input = try XCTUnwrap(fixture["\(name).input"], name), weights = dequantize(try XCTUnwrap(fixture["\(name).importance"], name))
            let expected = dequantize(try XCTUnwrap(fixture["\(name).weighted_bytes"], name)).map { UInt8($0) }
            let values = dequantize(input), columns = weights.count, rows = values.count / columns
            var got = [UInt8](repeating: 0, count: expected.count)
            values.withUnsafeBufferPointer { src in
                weights.withUnsafeBufferPointer { w in
                    got.withUnsafeMutableBytes {
                        XCTAssertEqual(encodeRows(src.baseAddress!, as: type, into: $0.baseAddress!, rows: rows, columns: columns, importance: w.baseAddress!), $0.count)
                    }
                }
            }
            if let i = zip(got, expected).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
                XCTFail("\(name): byte \(i) (block \(i / type.blockBytes), offset \(i % type.blockBytes)) is \(got[i]), ggml wrote \(expected[i])")
            }
            XCTAssertNotEqual(got, encode(values, as: type), "\(name): the importance changed nothing")
            checked.append(name)
        }
        XCTAssertEqual(checked.count, Self.writable.count - 1)
    }

    /// Every type Finch writes decodes to the input within its precision (relative RMS error per
    /// row of N(0, 1)), and all-zero input to zeros.
    func testRoundTripErrorPerType() {
        // About 1.1x what each type gives here (a level step / sqrt(12) of a block's range): a
        // wrongly packed level or scale gives errors of order 1.
        let bounds: [DType: Double] = [.q8_0: 0.006, .q6_K: 0.02, .q5_0: 0.048, .q5_1: 0.043, .q5_K: 0.04, .q4_0: 0.095,
                                       .q4_1: 0.087, .q4_K: 0.08, .q3_K: 0.17, .q2_K: 0.33, .iq4_NL: 0.085, .iq4_XS: 0.085]
        let values = TestSupport.randomArray(4 * 512, seed: 17)
        for type in Self.writable {
            let back = decode(encode(values, as: type), as: type)
            let error = TestSupport.relativeL2(back, values)
            XCTAssertLessThan(error, bounds[type]!, type.rawValue)
            XCTAssertGreaterThan(error, 0, "\(type.rawValue) is not lossless")
            XCTAssertEqual(decode(encode([Float](repeating: 0, count: 512), as: type), as: type), [Float](repeating: 0, count: 512), type.rawValue)
        }
    }
}
