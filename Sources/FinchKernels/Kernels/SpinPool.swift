import Foundation
import Synchronization

/// Worker threads that wait for work by spinning a short while before sleeping, for the many
/// small parallel loops of decoding (a few hundred matrix-vector products per token), where
/// waking a sleeping thread through the kernel costs about as much as the work itself.
/// `run` is not re-entrant: a call made while another runs (from inside a body, or from a
/// second thread) runs inline on the calling thread.
final class SpinPool: @unchecked Sendable {
    static let shared = SpinPool(workers: Parallel.coreCount - 1)

    private let workers: Int
    /// Incremented to publish a job; a worker runs part `w + 1` of each new generation.
    private let generation = Atomic<Int>(0)
    /// Parts finished in the current generation.
    private let finished = Atomic<Int>(0)
    private let busy = Atomic<Bool>(false)
    private let sleeping = Atomic<Int>(0)
    private let wake = DispatchSemaphore(value: 0)
    private var body: ((Int, Int) -> Void)?   // (part, parts); written before publishing
    private var parts = 1

    /// How long an idle worker spins before it sleeps.
    private static let spinNanoseconds: UInt64 = 200_000

    private init(workers: Int) {
        self.workers = max(0, workers)
        for w in 0..<self.workers {
            let thread = Thread { [unowned self] in self.workerLoop(w) }
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    /// Runs body(part, parts) for part in 0..<parts, with parts = workers + 1, the caller taking part 0.
    func run(_ body: @escaping (Int, Int) -> Void) {
        guard workers > 0, busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
            body(0, 1)
            return
        }
        defer { busy.store(false, ordering: .releasing) }
        self.body = body
        parts = workers + 1
        finished.store(0, ordering: .relaxed)
        generation.add(1, ordering: .releasing)
        let asleep = sleeping.load(ordering: .acquiring)
        for _ in 0..<asleep { wake.signal() }
        body(0, parts)
        while finished.load(ordering: .acquiring) < workers { spinPause() }
        self.body = nil
    }

    private func workerLoop(_ w: Int) {
        var seen = 0
        while true {
            let start = DispatchTime.now().uptimeNanoseconds
            var current = generation.load(ordering: .acquiring)
            while current == seen {
                if DispatchTime.now().uptimeNanoseconds - start > Self.spinNanoseconds {
                    sleeping.add(1, ordering: .releasing)
                    // Re-check after announcing sleep: a job published in between must not be missed.
                    if generation.load(ordering: .acquiring) == seen { wake.wait() }
                    sleeping.subtract(1, ordering: .releasing)
                } else {
                    spinPause()
                }
                current = generation.load(ordering: .acquiring)
            }
            seen = current
            if let body { body(w + 1, parts) }
            finished.add(1, ordering: .releasing)
        }
    }

    @inline(__always) private func spinPause() {
        for _ in 0..<32 { _ = generation.load(ordering: .relaxed) }
    }
}
