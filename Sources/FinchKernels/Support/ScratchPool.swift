import Foundation

/// Large scratch buffers kept from one call to the next. glibc's malloc serves a block above
/// 32 MB with a fresh mmap and unmaps it on free, so a buffer of that size allocated per call
/// is page-faulted in (and zeroed by the kernel) every time: the head's 50 MB chunk of logits
/// cost ORPO's step ~60 ms that way, the first product writing into it running at 60% of the
/// speed of the others. Buffers go back to the pool after use; one in use elsewhere (another
/// thread) is never handed out twice.
package final class ScratchPool: @unchecked Sendable {
    /// The process's pool.
    package static let shared = ScratchPool()

    private let lock = NSLock()
    private var free: [(pointer: UnsafeMutablePointer<Float>, capacity: Int)] = []

    /// Runs `body` with a buffer of at least `capacity` floats (uninitialised), then keeps it.
    package func withBuffer<R>(capacity: Int, _ body: (UnsafeMutablePointer<Float>) throws -> R) rethrows -> R {
        guard capacity > 0 else {
            let empty = UnsafeMutablePointer<Float>.allocate(capacity: 0)
            defer { empty.deallocate() }
            return try body(empty)
        }
        let buffer = take(capacity)
        defer { give(buffer) }
        return try body(buffer.pointer)
    }

    private func take(_ capacity: Int) -> (pointer: UnsafeMutablePointer<Float>, capacity: Int) {
        lock.lock()
        defer { lock.unlock() }
        // The smallest free buffer that fits; else a new one (the small free ones stay for small requests).
        if let index = free.indices.filter({ free[$0].capacity >= capacity }).min(by: { free[$0].capacity < free[$1].capacity }) {
            return free.remove(at: index)
        }
        return (UnsafeMutablePointer<Float>.allocate(capacity: capacity), capacity)
    }

    private func give(_ buffer: (pointer: UnsafeMutablePointer<Float>, capacity: Int)) {
        lock.lock()
        defer { lock.unlock() }
        free.append(buffer)
    }
}
