import FinchKernels
import FinchIO

/// Weights that are NaN or infinite make every output NaN, silently; a file holding them is
/// refused at load, naming the tensor and the element (`--allow-nonfinite` loads it anyway).
extension DType {
    /// Byte offsets of the f16 scales inside one block of a quantized type (the only fields of a
    /// block that can hold a non-finite number); for float types, the element itself.
    var scaleOffsets: [Int] {
        switch self {
        case .f32, .f16, .bf16: return [0]
        case .q8_0, .q4_0, .q5_0, .iq4_NL, .iq4_XS: return [0]
        case .q4_1, .q5_1, .q4_K, .q5_K: return [0, 2]
        case .q2_K: return [80, 82]
        case .q3_K: return [108]
        case .q6_K: return [208]
        }
    }
}

extension TensorData {
    /// The index of the first non-finite element (for quantized types, the first element of the
    /// first block whose scale is not finite) and its value, or nil.
    func firstNonFinite() -> (element: Int, value: Float)? {
        let blocks = byteCount / dtype.blockBytes
        let p = bytes
        func f16(_ bits: UInt16) -> Float { Float(Float16(bitPattern: bits)) }
        switch dtype {
        case .f32:
            for i in 0..<blocks {
                let bits = p.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)
                if bits & 0x7F80_0000 == 0x7F80_0000 { return (i, Float(bitPattern: bits)) }
            }
        case .bf16:
            for i in 0..<blocks {
                let bits = p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)
                if bits & 0x7F80 == 0x7F80 { return (i, Float(bitPattern: UInt32(bits) << 16)) }
            }
        case .f16:
            for i in 0..<blocks {
                let bits = p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)
                if bits & 0x7C00 == 0x7C00 { return (i, f16(bits)) }
            }
        case .q8_0, .q4_0, .q4_1, .q5_0, .q5_1, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .iq4_NL, .iq4_XS:
            let offsets = dtype.scaleOffsets, blockBytes = dtype.blockBytes
            for b in 0..<blocks {
                for o in offsets {
                    let bits = p.loadUnaligned(fromByteOffset: b * blockBytes + o, as: UInt16.self)
                    if bits & 0x7C00 == 0x7C00 { return (b * dtype.blockSize, f16(bits)) }
                }
            }
        }
        return nil
    }
}

extension ModelFiles {
    /// Throws `LoadError.nonFinite` for the first tensor (in name order) holding a NaN or an
    /// infinity. Tensors are scanned in parallel: about a second per few GB.
    func checkFinite() throws {
        let names = tensors.keys.sorted()
        var found = [(element: Int, value: Float)?](repeating: nil, count: names.count)
        let tensors = self.tensors
        found.withUnsafeMutableBufferPointer { out in
            let results = UncheckedSendable(out.baseAddress!)
            concurrentPerform(iterations: names.count) { i in results.value[i] = tensors[names[i]]!.firstNonFinite() }
        }
        if let i = found.firstIndex(where: { $0 != nil }), let (element, value) = found[i] {
            throw LoadError.nonFinite(path: source, name: names[i], element: element, value: "\(value)")
        }
    }
}
