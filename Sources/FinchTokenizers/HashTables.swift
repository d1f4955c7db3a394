#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import FinchKernels
import FinchIO

/// Open-addressing hash tables for the tokenizer's hot paths: byte strings to values (the
/// vocabulary, the word cache) and token-id pairs to merges. Swift's Dictionary hashes with
/// SipHash and needs a String or Array key; these take a pointer and a length.

@inline(__always)
func hashBytes(_ p: UnsafePointer<UInt8>, _ n: Int) -> UInt64 {
    var h: UInt64 = 0x9E37_79B9_7F4A_7C15 ^ UInt64(truncatingIfNeeded: n)
    var i = 0
    let raw = UnsafeRawPointer(p)
    while i + 8 <= n {
        h = (h ^ raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)) &* 0xFF51_AFD7_ED55_8CCD
        h ^= h >> 32
        i += 8
    }
    if i < n {
        var w: UInt64 = 0, shift: UInt64 = 0
        while i < n { w |= UInt64(p[i]) << shift; shift += 8; i += 1 }
        h = (h ^ w) &* 0xC4CE_B9FE_1A85_EC53
        h ^= h >> 29
    }
    return h &* 0x9E37_79B9_7F4A_7C15
}

/// Byte strings to Int64 values. Keys are copied into one arena.
struct ByteKeyTable {
    private struct Slot {
        var offset: Int32
        var length: Int32   // -1: empty
        var hash: UInt32
        var value: Int64
    }
    private var slots: [Slot]
    private var mask: Int
    private(set) var arena: [UInt8] = []
    private(set) var count = 0

    init(capacity: Int = 16) {
        var size = 16
        while size < capacity * 2 { size <<= 1 }
        slots = Array(repeating: Slot(offset: 0, length: -1, hash: 0, value: 0), count: size)
        mask = size - 1
    }

    /// Bytes held in the arena, to bound a cache.
    var arenaBytes: Int { arena.count }

    func find(_ p: UnsafePointer<UInt8>, _ n: Int) -> Int64? {
        let h = hashBytes(p, n)
        let tag = UInt32(truncatingIfNeeded: h >> 32)
        var i = Int(truncatingIfNeeded: h) & mask
        return slots.withUnsafeBufferPointer { slots -> Int64? in
            arena.withUnsafeBufferPointer { arena -> Int64? in
                while true {
                    let slot = slots[i]
                    if slot.length < 0 { return nil }
                    if slot.hash == tag, Int(slot.length) == n,
                       n == 0 || memcmp(arena.baseAddress! + Int(slot.offset), p, n) == 0 {
                        return slot.value
                    }
                    i = (i + 1) & mask
                }
            }
        }
    }

    func find(_ bytes: [UInt8]) -> Int64? {
        bytes.withUnsafeBufferPointer { find($0.baseAddress ?? UnsafePointer(bitPattern: 1)!, $0.count) }
    }

    /// Inserts or replaces; returns the previous value.
    @discardableResult
    mutating func insert(_ p: UnsafePointer<UInt8>, _ n: Int, value: Int64) -> Int64? {
        if (count + 1) * 2 > slots.count { grow() }
        let h = hashBytes(p, n)
        let tag = UInt32(truncatingIfNeeded: h >> 32)
        var i = Int(truncatingIfNeeded: h) & mask
        while true {
            let slot = slots[i]
            if slot.length < 0 { break }
            if slot.hash == tag, Int(slot.length) == n,
               n == 0 || arena.withUnsafeBufferPointer({ memcmp($0.baseAddress! + Int(slot.offset), p, n) }) == 0 {
                slots[i].value = value
                return slot.value
            }
            i = (i + 1) & mask
        }
        let offset = arena.count
        arena.append(contentsOf: UnsafeBufferPointer(start: p, count: n))
        slots[i] = Slot(offset: Int32(offset), length: Int32(n), hash: tag, value: value)
        count += 1
        return nil
    }

    @discardableResult
    mutating func insert(_ bytes: [UInt8], value: Int64) -> Int64? {
        bytes.withUnsafeBufferPointer { insert($0.baseAddress ?? UnsafePointer(bitPattern: 1)!, $0.count, value: value) }
    }

    mutating func removeAll() {
        for i in slots.indices { slots[i].length = -1 }
        arena.removeAll(keepingCapacity: true)
        count = 0
    }

    private mutating func grow() {
        let old = slots
        slots = Array(repeating: Slot(offset: 0, length: -1, hash: 0, value: 0), count: old.count * 2)
        mask = slots.count - 1
        arena.withUnsafeBufferPointer { arena in
            for slot in old where slot.length >= 0 {
                let h = hashBytes(arena.baseAddress! + Int(slot.offset), Int(slot.length))
                var i = Int(truncatingIfNeeded: h) & mask
                while slots[i].length >= 0 { i = (i + 1) & mask }
                slots[i] = slot
            }
        }
    }
}

/// (left id, right id) to (rank, merged id): the BPE merge table.
struct PairTable {
    private var keys: [UInt64]
    private var values: [UInt64]
    private var mask: Int
    private var shift: UInt64
    private(set) var count = 0
    private static let empty = UInt64.max

    init(capacity: Int) {
        var size = 16, bits: UInt64 = 4
        while size < capacity * 2 { size <<= 1; bits += 1 }
        keys = Array(repeating: Self.empty, count: size)
        values = Array(repeating: 0, count: size)
        mask = size - 1
        shift = 64 - bits
    }

    @inline(__always)
    static func key(_ a: Int32, _ b: Int32) -> UInt64 { UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b)) }

    /// Inserts or replaces (a later merge of the same pair wins, as in HF tokenizers).
    mutating func insert(_ a: Int32, _ b: Int32, rank: Int32, merged: Int32) {
        if (count + 1) * 2 > keys.count { grow() }
        let key = Self.key(a, b)
        var i = Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> shift)
        while keys[i] != Self.empty && keys[i] != key { i = (i + 1) & mask }
        if keys[i] == Self.empty { count += 1 }
        keys[i] = key
        values[i] = UInt64(UInt32(bitPattern: rank)) << 32 | UInt64(UInt32(bitPattern: merged))
    }

    /// The merge of `a` then `b` as `rank << 32 | merged`, or nil.
    @inline(__always)
    func find(_ a: Int32, _ b: Int32) -> UInt64? {
        let key = Self.key(a, b)
        var i = Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> shift)
        return keys.withUnsafeBufferPointer { keys in
            while true {
                let k = keys[i]
                if k == key { return values.withUnsafeBufferPointer { $0[i] } }
                if k == Self.empty { return nil }
                i = (i + 1) & mask
            }
        }
    }

    private mutating func grow() {
        let oldKeys = keys, oldValues = values
        keys = Array(repeating: Self.empty, count: oldKeys.count * 2)
        values = Array(repeating: 0, count: oldKeys.count * 2)
        mask = keys.count - 1
        shift -= 1
        for j in oldKeys.indices where oldKeys[j] != Self.empty {
            var i = Int(truncatingIfNeeded: (oldKeys[j] &* 0x9E37_79B9_7F4A_7C15) >> shift)
            while keys[i] != Self.empty { i = (i + 1) & mask }
            keys[i] = oldKeys[j]
            values[i] = oldValues[j]
        }
    }
}
