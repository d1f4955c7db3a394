import Dispatch
import Foundation

/// Splits `0..<count` into contiguous chunks and runs them on all cores.
/// Small ranges run inline: below `grain` items per core, threads cost more than they save.
@inline(__always)
package func parallelFor(_ count: Int, grain: Int = 1, _ body: (Range<Int>) -> Void) {
    let workers = min(Parallel.coreCount, max(1, count / max(grain, 1)))
    if workers <= 1 {
        if count > 0 { body(0..<count) }
        return
    }
    concurrentPerform(iterations: workers) { w in
        let start = count * w / workers
        let end = count * (w + 1) / workers
        if start < end { body(start..<end) }
    }
}

/// How many threads Finch's kernels split work over.
public enum Parallel {
    /// This process's share of the machine's cores: ranks of an mpirun job on one machine split them.
    public static let coreCount: Int = max(1, ProcessInfo.processInfo.activeProcessorCount
                                               / max(1, Int(ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_LOCAL_SIZE"] ?? "") ?? 1))
}

/// `DispatchQueue.concurrentPerform` for kernels whose iterations share buffers by design, each
/// writing its own part: Swift 6 asks for a `@Sendable` body, which a closure over raw pointers
/// is not, though the iterations never touch the same memory.
@inline(__always)
package func concurrentPerform(iterations: Int, _ body: (Int) -> Void) {
    withoutActuallyEscaping(body) { body in
        let shared = UncheckedSendable(body)
        DispatchQueue.concurrentPerform(iterations: iterations) { shared.value($0) }
    }
}

/// A value handed across threads on the caller's word that it is safe (see `concurrentPerform`).
package struct UncheckedSendable<Value>: @unchecked Sendable {
    package let value: Value
    package init(_ value: Value) { self.value = value }
}
