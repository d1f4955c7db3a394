import XCTest
import FinchTestSupport
@testable import FinchKernels

final class SpinPoolTests: XCTestCase {
    /// Every part of every job runs exactly once, jobs back to back and after the workers have
    /// gone to sleep; a nested call runs inline.
    func testEveryPartRunsOnceAndNestedCallsRunInline() {
        let pool = SpinPool.shared
        for round in 0..<2000 {
            if round == 1000 { usleep(5000) }   // long enough for the workers to sleep
            let counts = UnsafeMutablePointer<Int>.allocate(capacity: 8)
            counts.initialize(repeating: 0, count: 8)
            var seenParts = 0
            pool.run { part, parts in
                counts[part] += 1
                if part == 0 { seenParts = parts }
            }
            XCTAssertEqual(Array(UnsafeBufferPointer(start: counts, count: seenParts)), [Int](repeating: 1, count: seenParts))
            counts.deallocate()
        }
        var inner: [Int] = []
        pool.run { part, _ in
            if part == 0 { pool.run { innerPart, innerParts in inner.append(innerParts); _ = innerPart } }
        }
        XCTAssertEqual(inner, [1])
    }
}
