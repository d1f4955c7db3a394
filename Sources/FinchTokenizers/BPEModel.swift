import FinchKernels
import FinchIO

/// Byte-pair encoding of one pre-tokenized word, as HF tokenizers' BPE model does it
/// (models/bpe/word.rs `merge_all`: repeatedly merge the adjacent pair with the lowest
/// merge rank, leftmost first), or, for GGUF `llama` vocabularies, as SentencePiece and
/// llama.cpp's `llm_tokenizer_spm` do it: merge the adjacent pair whose concatenation is
/// the vocabulary entry with the highest score.
final class BPEModel: @unchecked Sendable {
    enum Priority {
        /// HF / GGUF `gpt2`: (left id, right id) → (rank, merged id).
        case mergeRanks(PairTable)
        /// GGUF `llama`: any adjacent pair whose text is a token; higher score first.
        /// `mergeable[id]` says whether a token may be produced by merging.
        case scores([Float], mergeable: [Bool])
    }

    /// Token bytes to id. With `byteLevel`, keys are the raw bytes a token stands for
    /// (GPT-2's byte-to-character mapping undone), so words are never re-encoded.
    let vocab: ByteKeyTable
    let priority: Priority
    /// Words are raw bytes and each byte is one initial symbol (ByteLevel pre-tokenizer).
    let byteLevel: Bool
    /// Characters missing from the vocabulary become `<0xXX>` byte tokens.
    let byteFallback: Bool
    let unkID: Int32
    let fuseUnknown: Bool
    /// A word that is itself a token is not merged (Llama 3).
    let ignoreMerges: Bool
    /// With `byteLevel`: the id of each byte's token; with `byteFallback`: of `<0xXX>`; else -1.
    let byteTokens: [Int32]
    /// Ids of one-byte (ASCII) tokens, -1 when absent: the common initial-symbol lookup.
    private let asciiTokens: [Int32]

    init(vocab: ByteKeyTable, priority: Priority, byteLevel: Bool, byteFallback: Bool, unkID: Int32?,
         fuseUnknown: Bool, ignoreMerges: Bool, byteTokens: [Int32]) {
        self.vocab = vocab
        self.priority = priority
        self.byteLevel = byteLevel
        self.byteFallback = byteFallback
        self.unkID = unkID ?? -1
        self.fuseUnknown = fuseUnknown
        self.ignoreMerges = ignoreMerges
        self.byteTokens = byteTokens
        var ascii = [Int32](repeating: -1, count: 128)
        for b in 0..<128 {
            var byte = UInt8(b)
            if let id = vocab.find(&byte, 1) { ascii[b] = Int32(id) }
        }
        asciiTokens = ascii
    }

    /// Appends the ids of word `p[0..<n]`.
    func encode(_ p: UnsafePointer<UInt8>, _ n: Int, into out: inout [Int32], scratch: BPEScratch) {
        guard n > 0 else { return }
        if ignoreMerges, let id = vocab.find(p, n) {
            out.append(Int32(truncatingIfNeeded: id))
            return
        }
        switch priority {
        case let .mergeRanks(pairs):
            let count = initialSymbols(p, n, scratch)
            if count <= 48 {
                mergeSmall(pairs, count, scratch, &out)
            } else {
                mergeLarge(pairs, count, scratch, &out)
            }
        case let .scores(scores, mergeable):
            mergeByScore(p, n, scores, mergeable, scratch, &out)
        }
    }

    /// Fills `scratch.symbols` with the ids of the word's characters (or bytes); returns the count.
    private func initialSymbols(_ p: UnsafePointer<UInt8>, _ n: Int, _ scratch: BPEScratch) -> Int {
        scratch.reserve(n)
        let symbols = scratch.symbols
        var count = 0
        if byteLevel {
            byteTokens.withUnsafeBufferPointer { table in
                for i in 0..<n {
                    let id = table[Int(p[i])]
                    if id >= 0 { symbols[count] = id; count += 1 }
                    else if unkID >= 0 { symbols[count] = unkID; count += 1 }
                }
            }
            return count
        }
        var i = 0
        var pendingUnknown = false
        while i < n {
            let len = min(utf8SequenceLength(p[i]), n - i)
            var id: Int32 = -1
            if len == 1 && p[i] < 0x80 { id = asciiTokens[Int(p[i])] }
            else if let found = vocab.find(p + i, len) { id = Int32(truncatingIfNeeded: found) }
            if id >= 0 {
                symbols[count] = id; count += 1
                pendingUnknown = false
            } else if byteFallback && (0..<len).allSatisfy({ byteTokens[Int(p[i + $0])] >= 0 }) {
                for k in 0..<len { symbols[count] = byteTokens[Int(p[i + k])]; count += 1 }
                pendingUnknown = false
            } else if unkID >= 0 {
                if !(fuseUnknown && pendingUnknown) { symbols[count] = unkID; count += 1 }
                pendingUnknown = true
            }
            i += len
        }
        return count
    }

    /// Short words: compact arrays, rescanned for the best pair after each merge. Gives the
    /// same merges as the heap (the best valid heap entry is always the lowest
    /// (rank, position) among the current adjacent pairs).
    private func mergeSmall(_ pairs: PairTable, _ count: Int, _ scratch: BPEScratch, _ out: inout [Int32]) {
        let symbols = scratch.symbols
        let ranks = scratch.ranks, merged = scratch.merged
        var m = count
        @inline(__always) func lookup(_ i: Int) {
            if let found = pairs.find(symbols[i], symbols[i + 1]) {
                ranks[i] = Int32(truncatingIfNeeded: found >> 32)
                merged[i] = Int32(truncatingIfNeeded: found)
            } else {
                ranks[i] = .max
            }
        }
        if m > 1 { for i in 0..<(m - 1) { lookup(i) } }
        while m > 1 {
            var best = 0
            var bestRank = ranks[0]
            for i in 1..<(m - 1) where ranks[i] < bestRank { best = i; bestRank = ranks[i] }
            if bestRank == .max { break }
            symbols[best] = merged[best]
            // Drop symbol best + 1 and pair best + 1 (pair best is recomputed).
            var j = best + 1
            while j < m - 1 { symbols[j] = symbols[j + 1]; j += 1 }
            j = best + 1
            while j < m - 2 { ranks[j] = ranks[j + 1]; merged[j] = merged[j + 1]; j += 1 }
            m -= 1
            if best > 0 { lookup(best - 1) }
            if best < m - 1 { lookup(best) }
        }
        for i in 0..<m { out.append(symbols[i]) }
    }

    /// Long words: doubly linked symbols and a binary min-heap of (rank << 32 | position).
    private func mergeLarge(_ pairs: PairTable, _ count: Int, _ scratch: BPEScratch, _ out: inout [Int32]) {
        let symbols = scratch.symbols, prev = scratch.prev, next = scratch.next
        var heap = MinHeap(storage: scratch.heap, capacity: scratch.capacity * 4)
        for i in 0..<count {
            prev[i] = Int32(i - 1)
            next[i] = i + 1 < count ? Int32(i + 1) : -1
        }
        for i in 0..<(count - 1) {
            if let found = pairs.find(symbols[i], symbols[i + 1]) {
                heap.push((found >> 32) << 32 | UInt64(i))
            }
        }
        let removed: Int32 = -2
        while let top = heap.pop() {
            let pos = Int(top & 0xFFFF_FFFF), rank = top >> 32
            if prev[pos] == removed { continue }
            let right = next[pos]
            if right < 0 { continue }
            guard let found = pairs.find(symbols[pos], symbols[Int(right)]), found >> 32 == rank else { continue }
            symbols[pos] = Int32(truncatingIfNeeded: found)
            let after = next[Int(right)]
            next[pos] = after
            if after >= 0 { prev[Int(after)] = Int32(pos) }
            prev[Int(right)] = removed
            if prev[pos] >= 0, let p = pairs.find(symbols[Int(prev[pos])], symbols[pos]) {
                heap.push((p >> 32) << 32 | UInt64(prev[pos]))
            }
            if after >= 0, let p = pairs.find(symbols[pos], symbols[Int(after)]) {
                heap.push((p >> 32) << 32 | UInt64(pos))
            }
        }
        var i: Int32 = 0
        while i >= 0 { out.append(symbols[Int(i)]); i = next[Int(i)] }
    }

    /// SentencePiece BPE by scores (llama.cpp llm_tokenizer_spm): symbols are UTF-8
    /// characters; a pair may merge when its text is a token; best score first, leftmost on
    /// ties. Leftover symbols that are not tokens become byte tokens (or unk).
    private func mergeByScore(_ p: UnsafePointer<UInt8>, _ n: Int, _ scores: [Float], _ mergeable: [Bool],
                              _ scratch: BPEScratch, _ out: inout [Int32]) {
        scratch.reserve(n)
        let start = scratch.symbols, length = scratch.ranks, prev = scratch.prev, next = scratch.next
        var count = 0
        var i = 0
        while i < n {
            let len = min(utf8SequenceLength(p[i]), n - i)
            start[count] = Int32(i); length[count] = Int32(len)
            prev[count] = Int32(count - 1); next[count] = Int32(count + 1)
            count += 1
            i += len
        }
        next[count - 1] = -1
        var heap = MinHeap(storage: scratch.heap, capacity: scratch.capacity * 4)
        // Key: higher score first, then lower position. Scores map to an order-preserving u32.
        @inline(__always) func key(_ score: Float, _ pos: Int) -> UInt64 {
            let bits = score.bitPattern
            let ordered = bits & 0x8000_0000 != 0 ? ~bits : bits | 0x8000_0000  // ascending with score
            return UInt64(~ordered) << 32 | UInt64(pos)
        }
        @inline(__always) func tryPair(_ left: Int32, _ right: Int32) {
            guard left >= 0, right >= 0 else { return }
            let s = Int(start[Int(left)]), len = Int(length[Int(left)] + length[Int(right)])
            guard let id = vocab.find(p + s, len), mergeable[Int(id)] else { return }
            heap.push(key(scores[Int(id)], Int(left)))
        }
        for k in 1..<max(count, 1) { tryPair(Int32(k - 1), Int32(k)) }
        while let top = heap.pop() {
            let left = Int(top & 0xFFFF_FFFF)
            let right = next[left]
            guard length[left] > 0, right >= 0, length[Int(right)] > 0 else { continue }
            // Stale if the pair's text changed since the entry was pushed.
            let len = Int(length[left] + length[Int(right)])
            guard let id = vocab.find(p + Int(start[left]), len), mergeable[Int(id)],
                  key(scores[Int(id)], left) == top else { continue }
            length[left] = Int32(len)
            length[Int(right)] = 0
            next[left] = next[Int(right)]
            if next[left] >= 0 { prev[Int(next[left])] = Int32(left) }
            tryPair(prev[left], Int32(left))
            tryPair(Int32(left), next[left])
        }
        var k: Int32 = 0
        while k >= 0 {
            let s = Int(start[Int(k)]), len = Int(length[Int(k)])
            if let id = vocab.find(p + s, len) {
                out.append(Int32(truncatingIfNeeded: id))
            } else {
                for b in 0..<len {
                    let t = byteTokens[Int(p[s + b])]
                    if t >= 0 { out.append(t) } else if unkID >= 0 { out.append(unkID) }
                }
            }
            k = next[Int(k)]
        }
    }
}

/// Working memory of one encode call, reused across words.
final class BPEScratch {
    private(set) var capacity = 0
    private(set) var symbols: UnsafeMutablePointer<Int32>
    private(set) var ranks: UnsafeMutablePointer<Int32>
    private(set) var merged: UnsafeMutablePointer<Int32>
    private(set) var prev: UnsafeMutablePointer<Int32>
    private(set) var next: UnsafeMutablePointer<Int32>
    private(set) var heap: UnsafeMutablePointer<UInt64>

    init() {
        symbols = .allocate(capacity: 1); ranks = .allocate(capacity: 1); merged = .allocate(capacity: 1)
        prev = .allocate(capacity: 1); next = .allocate(capacity: 1)
        heap = .allocate(capacity: 1)
        reserve(256)
    }

    /// Room for a word of `n` bytes (at most one initial symbol per byte; at most three heap
    /// entries per symbol).
    func reserve(_ n: Int) {
        guard n > capacity else { return }
        let c = max(n, capacity * 2)
        for p in [symbols, ranks, merged, prev, next] { p.deallocate() }
        heap.deallocate()
        symbols = .allocate(capacity: c); ranks = .allocate(capacity: c); merged = .allocate(capacity: c)
        prev = .allocate(capacity: c); next = .allocate(capacity: c)
        heap = .allocate(capacity: 4 * c)
        capacity = c
    }

    deinit {
        for p in [symbols, ranks, merged, prev, next] { p.deallocate() }
        heap.deallocate()
    }
}

/// A binary min-heap of UInt64 keys in caller-owned storage.
struct MinHeap {
    let storage: UnsafeMutablePointer<UInt64>
    let capacity: Int
    var count = 0

    init(storage: UnsafeMutablePointer<UInt64>, capacity: Int) {
        self.storage = storage
        self.capacity = capacity
    }

    @inline(__always)
    mutating func push(_ key: UInt64) {
        precondition(count < capacity, "BPE heap overflow")
        var i = count
        count += 1
        while i > 0 {
            let parent = (i - 1) >> 1
            if storage[parent] <= key { break }
            storage[i] = storage[parent]
            i = parent
        }
        storage[i] = key
    }

    @inline(__always)
    mutating func pop() -> UInt64? {
        guard count > 0 else { return nil }
        let top = storage[0]
        count -= 1
        if count > 0 {
            let last = storage[count]
            var i = 0
            while true {
                var child = 2 * i + 1
                if child >= count { break }
                if child + 1 < count && storage[child + 1] < storage[child] { child += 1 }
                if storage[child] >= last { break }
                storage[i] = storage[child]
                i = child
            }
            storage[i] = last
        }
        return top
    }
}
