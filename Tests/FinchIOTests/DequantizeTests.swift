import Foundation
import XCTest
import FinchTestSupport
@testable import FinchKernels
@testable import FinchIO

final class DequantizeTests: XCTestCase {
    /// Blocks quantized by gguf-py with their expected values (`<TYPE>.bytes` are byte values stored as F32).
    func testMatchesGGUFPyFixtures() throws {
        let fixture = try SafeTensors.read(path: IOTestSupport.fixture("gguf/quant_blocks.safetensors"))
        for dtype in DType.allCases where dtype.isQuantized {
            let bytes = dequantize(try XCTUnwrap(fixture["\(dtype.rawValue).bytes"], dtype.rawValue)).map { UInt8($0) }
            let expected = dequantize(try XCTUnwrap(fixture["\(dtype.rawValue).values"], dtype.rawValue))
            XCTAssertEqual(bytes.count / dtype.blockBytes * dtype.blockSize, expected.count, dtype.rawValue)
            let got = run(dtype, bytes)
            XCTAssertEqual(got.count, expected.count)
            for i in 0..<expected.count where got[i] != expected[i] {
                XCTFail("\(dtype.rawValue) value \(i): \(got[i]) != \(expected[i])")
                break
            }
        }
    }

    func testHalfConversionIsExactForEveryBitPattern() {
        for bits in 0...UInt16.max {
            let expected = Float(Float16(bitPattern: bits))
            let got = floatFromHalf(bits)
            if expected.isNaN {
                XCTAssertTrue(got.isNaN, "half \(bits)")
            } else if got.bitPattern != expected.bitPattern {
                XCTFail("half 0x\(String(bits, radix: 16)): \(got) != \(expected)")
                return
            }
        }
    }

    func testPlainFloatTypes() {
        let values: [Float] = [0, -0.0, 1, -2.5, 65504, 6.1035156e-05, 5.9604645e-08, .infinity]
        var f16: [UInt8] = [0xFF]  // odd offset: sources need not be aligned
        var bf16: [UInt8] = [0xFF]
        var f32: [UInt8] = [0xFF]
        for v in values {
            let h = Float16(v).bitPattern
            f16 += [UInt8(h & 0xFF), UInt8(h >> 8)]
            let b = UInt16(v.bitPattern >> 16)
            bf16 += [UInt8(b & 0xFF), UInt8(b >> 8)]
            withUnsafeBytes(of: v.bitPattern.littleEndian) { f32 += $0 }
        }
        XCTAssertEqual(run(.f16, Array(f16.dropFirst()), offset: 1, padded: f16), values)
        XCTAssertEqual(run(.bf16, Array(bf16.dropFirst()), offset: 1, padded: bf16), values.map { Float(bitPattern: $0.bitPattern & 0xFFFF_0000) })
        XCTAssertEqual(run(.f32, Array(f32.dropFirst()), offset: 1, padded: f32), values)
    }

    /// Random blocks (scales drawn as finite halves) against the naive per-element definitions below.
    func testQuantizedTypesAgainstNaiveDefinitions() {
        var rng = SplitMix(seed: 7)
        for dtype in DType.allCases where dtype.isQuantized {
            let blocks = 9
            var bytes = (0..<(blocks * dtype.blockBytes)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            for b in 0..<blocks {
                let base = b * dtype.blockBytes
                let scaleOffsets: [Int]
                switch dtype {
                case .q4_1, .q5_1, .q4_K, .q5_K: scaleOffsets = [0, 2]
                case .q2_K: scaleOffsets = [80, 82]
                case .q3_K: scaleOffsets = [108]
                case .q6_K: scaleOffsets = [208]
                default: scaleOffsets = [0]
                }
                for offset in scaleOffsets {
                    let h = Float16(Float(Int(rng.next() % 2001) - 1000) / 997).bitPattern
                    bytes[base + offset] = UInt8(h & 0xFF)
                    bytes[base + offset + 1] = UInt8(h >> 8)
                }
            }
            let expected = naive(dtype, bytes)
            let got = run(dtype, bytes)
            XCTAssertEqual(got.count, blocks * dtype.blockSize)
            for i in 0..<got.count where got[i].bitPattern != expected[i].bitPattern {
                XCTFail("\(dtype.rawValue) value \(i): \(got[i]) != \(expected[i])")
                break
            }
            // Blocks at an odd address give the same values.
            XCTAssertEqual(run(dtype, bytes, offset: 3, padded: [1, 2, 3] + bytes), got, dtype.rawValue)
        }
    }

    func testRowsAndWholeTensor() {
        // A 3 x 64 Q8_0 matrix: row r holds values r * 100 + column, scale 1 (bits 0x3C00).
        var bytes: [UInt8] = []
        for r in 0..<3 {
            for block in 0..<2 {
                bytes += [0x00, 0x3C] + (0..<32).map { UInt8(truncatingIfNeeded: Int8(r * 40 + block * 32 + $0 - 60)) }
            }
        }
        bytes.withUnsafeBytes { raw in
            let tensor = TensorData(name: "m", dtype: .q8_0, shape: [3, 64], bytes: raw.baseAddress!, byteCount: raw.count, owner: self)
            let all = dequantize(tensor)
            XCTAssertEqual(all.count, 192)
            XCTAssertEqual(all[64 + 5], Float(40 + 5 - 60))
            var middle = [Float](repeating: .nan, count: 128)
            middle.withUnsafeMutableBufferPointer { dequantizeRows(tensor, 1..<3, into: $0.baseAddress!) }
            XCTAssertEqual(middle, Array(all[64...]))
        }
    }

    // MARK: - Helpers

    /// ggml's kvalues_iq4nl.
    static let iq4Levels: [Float] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]

    private func run(_ dtype: DType, _ bytes: [UInt8], offset: Int = 0, padded: [UInt8]? = nil) -> [Float] {
        let source = padded ?? bytes
        let count = bytes.count / dtype.blockBytes * dtype.blockSize
        var out = [Float](repeating: .nan, count: count)
        source.withUnsafeBytes { raw in
            out.withUnsafeMutableBufferPointer { dequantizeRow(dtype, raw.baseAddress! + offset, $0.baseAddress!, count: count) }
        }
        return out
    }

    private func half(_ b: [UInt8], _ at: Int) -> Float { Float(Float16(bitPattern: UInt16(b[at]) | UInt16(b[at + 1]) << 8)) }

    /// ggml's definitions written per element (value i of each block), independent of the kernels' loop structure.
    private func naive(_ dtype: DType, _ bytes: [UInt8]) -> [Float] {
        var out: [Float] = []
        for b in 0..<(bytes.count / dtype.blockBytes) {
            let x = Array(bytes[(b * dtype.blockBytes)..<((b + 1) * dtype.blockBytes)])
            for i in 0..<dtype.blockSize {
                switch dtype {
                case .q8_0:
                    out.append(Float(Int8(bitPattern: x[2 + i])) * half(x, 0))
                case .q4_0:
                    let nibble = i < 16 ? x[2 + i] & 15 : x[2 + i - 16] >> 4
                    out.append(Float(Int(nibble) - 8) * half(x, 0))
                case .q4_1:
                    let nibble = i < 16 ? x[4 + i] & 15 : x[4 + i - 16] >> 4
                    out.append(Float(nibble) * half(x, 0) + half(x, 2))
                case .q4_K:
                    let sub = i / 32  // 8 sub-blocks of 32, each with a 6-bit scale and min
                    let s = Array(x[4..<16])
                    let scale = sub < 4 ? s[sub] & 63 : (s[sub + 4] & 15) | ((s[sub - 4] >> 6) << 4)
                    let min = sub < 4 ? s[sub + 4] & 63 : (s[sub + 4] >> 4) | ((s[sub] >> 6) << 4)
                    let byte = x[16 + (i / 64) * 32 + i % 32]
                    let nibble = sub % 2 == 0 ? byte & 15 : byte >> 4
                    out.append(half(x, 0) * Float(scale) * Float(nibble) - half(x, 2) * Float(min))
                case .q6_K:
                    let n = i / 128, quarter = (i % 128) / 32, l = i % 32
                    let low = x[n * 64 + l + (quarter % 2) * 32]
                    let low4 = quarter < 2 ? low & 15 : low >> 4
                    let high2 = (x[128 + n * 32 + l] >> (2 * quarter)) & 3
                    let q = Int(low4 | high2 << 4) - 32
                    let scale = Int8(bitPattern: x[192 + n * 8 + l / 16 + 2 * quarter])
                    out.append(half(x, 208) * Float(scale) * Float(q))
                case .q5_0, .q5_1:
                    let header = dtype == .q5_0 ? 2 : 4
                    let qh = UInt32(x[header]) | UInt32(x[header + 1]) << 8 | UInt32(x[header + 2]) << 16 | UInt32(x[header + 3]) << 24
                    let nibble = i < 16 ? x[header + 4 + i] & 15 : x[header + 4 + i - 16] >> 4
                    let q = Int(nibble) | Int((qh >> UInt32(i)) & 1) << 4
                    out.append(dtype == .q5_0 ? Float(q - 16) * half(x, 0) : Float(q) * half(x, 0) + half(x, 2))
                case .q2_K, .q3_K:
                    // 2 halves of 128; in each, 4 shifts x 2 runs of 16 values, one scale per run.
                    let n = i / 128, shift = (i % 128) / 32, run = (i % 32) / 16, l = i % 16
                    let qsStart = dtype == .q2_K ? 16 : 32
                    let low = Int((x[qsStart + n * 32 + run * 16 + l] >> (2 * shift)) & 3)
                    let scaleIndex = n * 8 + shift * 2 + run
                    if dtype == .q2_K {
                        let sc = x[scaleIndex]
                        out.append(half(x, 80) * Float(sc & 15) * Float(low) - half(x, 82) * Float(sc >> 4))
                    } else {
                        // ggml's unpacking of the 12 scale bytes as three little-endian words.
                        func word(_ k: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(x[96 + 4 * k + $1]) << (8 * $1) } }
                        let (a0, a1, tmp) = (word(0), word(1), word(2))
                        let aux = [(a0 & 0x0f0f_0f0f) | ((tmp & 0x0303_0303) << 4), (a1 & 0x0f0f_0f0f) | (((tmp >> 2) & 0x0303_0303) << 4),
                                   ((a0 >> 4) & 0x0f0f_0f0f) | (((tmp >> 4) & 0x0303_0303) << 4), ((a1 >> 4) & 0x0f0f_0f0f) | (((tmp >> 6) & 0x0303_0303) << 4)]
                        let scale = Int(Int8(bitPattern: UInt8((aux[scaleIndex / 4] >> (8 * UInt32(scaleIndex % 4))) & 0xFF))) - 32
                        let highBitSet = (x[run * 16 + l] >> (n * 4 + shift)) & 1 == 1
                        out.append(half(x, 108) * Float(scale) * Float(low - (highBitSet ? 0 : 4)))
                    }
                case .q5_K:
                    let sub = i / 32, group = i / 64, l = i % 32
                    let s = Array(x[4..<16])
                    let scale = sub < 4 ? s[sub] & 63 : (s[sub + 4] & 15) | ((s[sub - 4] >> 6) << 4)
                    let min = sub < 4 ? s[sub + 4] & 63 : (s[sub + 4] >> 4) | ((s[sub] >> 6) << 4)
                    let byte = x[48 + group * 32 + l]
                    let q = Int(sub % 2 == 0 ? byte & 15 : byte >> 4) + 16 * Int((x[16 + l] >> sub) & 1)
                    out.append(half(x, 0) * Float(scale) * Float(q) - half(x, 2) * Float(min))
                case .iq4_NL:
                    let nibble = i < 16 ? x[2 + i] & 15 : x[2 + i - 16] >> 4
                    out.append(half(x, 0) * Self.iq4Levels[Int(nibble)])
                case .iq4_XS:
                    let sub = i / 32, r = i % 32
                    let byte = x[8 + sub * 16 + r % 16]
                    let nibble = r < 16 ? byte & 15 : byte >> 4
                    let scalesHigh = Int(x[2]) | Int(x[3]) << 8
                    let ls = Int((x[4 + sub / 2] >> (4 * (sub % 2))) & 15) | ((scalesHigh >> (2 * sub)) & 3) << 4
                    out.append(half(x, 0) * Float(ls - 32) * Self.iq4Levels[Int(nibble)])
                default:
                    fatalError("naive: \(dtype)")
                }
            }
        }
        return out
    }
}
