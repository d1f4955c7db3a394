import Foundation
#if canImport(Glibc)
import Glibc
#endif
import FinchKernels

/// The processes that train one model together: the ranks of an `mpirun` job, or this process
/// alone. Data parallel training needs only a few collectives: sum a buffer on every rank,
/// gather small records at rank 0, broadcast from rank 0.
///
/// Every collective runs under a watchdog: one that does not complete within `timeout` seconds
/// (a rank died, hangs, or the network is gone) prints an `error:` line naming this rank and
/// the operation, and aborts the whole job, so no rank waits forever.
public final class ProcessGroup: @unchecked Sendable {
    /// This process's index in the job (MPI_Comm_rank), 0..<size; 0 alone.
    public let rank: Int
    /// Processes in the job; 1 alone.
    public let size: Int
    /// Ranks on this machine (they share its cores).
    public let localSize: Int
    /// Rank 0: the one that reads checkpoints, writes the run folder and reports.
    public var isRoot: Bool { rank == 0 }
    /// Seconds a collective may wait for the other ranks before the job is aborted.
    public var timeout: Double {
        get { watchdog?.timeout ?? 0 }
        set { watchdog?.timeout = newValue }
    }
    /// Seconds spent inside collectives so far, waiting for slower ranks included.
    public private(set) var collectiveSeconds = 0.0
    /// Bytes this rank handed to collectives so far (its send buffers).
    public private(set) var collectiveBytes = 0

    let mpi: MPILibrary?
    let watchdog: Watchdog?

    init(rank: Int, size: Int, localSize: Int, mpi: MPILibrary?, timeout: Double) {
        self.rank = rank
        self.size = size
        self.localSize = localSize
        self.mpi = mpi
        watchdog = mpi == nil ? nil : Watchdog(timeout: timeout)
        watchdog?.onExpiry = { [unowned self] operation, seconds in self.abortJob(operation: operation, waited: seconds) }
    }

    /// This process on its own: every collective is a no-op.
    public static let single = ProcessGroup(rank: 0, size: 1, localSize: 1, mpi: nil, timeout: 0)

    /// Whether this process was started by Open MPI's launcher (`mpirun`, or srun with PMIx).
    public static var isLaunchedByMPI: Bool {
        let env = ProcessInfo.processInfo.environment
        return env["OMPI_COMM_WORLD_SIZE"] != nil || env["PMIX_RANK"] != nil
    }

    private static let lock = NSLock()
    nonisolated(unsafe) private static var launchedGroup: ProcessGroup?

    /// The job this process belongs to: MPI's world when launched by `mpirun` (MPI is initialised
    /// on the first call), otherwise `single`, without loading MPI at all. Under MPI, each rank's
    /// BLAS and parallel loops get this machine's cores divided by its ranks.
    public static func launched(timeout: Double = 300) throws -> ProcessGroup {
        lock.lock()
        defer { lock.unlock() }
        if let group = launchedGroup { group.timeout = timeout; return group }
        guard isLaunchedByMPI else { return single }
        let env = ProcessInfo.processInfo.environment
        let localSize = max(1, Int(env["OMPI_COMM_WORLD_LOCAL_SIZE"] ?? "") ?? 1)
        // Before OpenBLAS is loaded (it reads the variable once); a value the user set wins.
        if env["OPENBLAS_NUM_THREADS"] == nil { setenv("OPENBLAS_NUM_THREADS", "\(Parallel.coreCount)", 1) }
        let mpi = try MPILibrary.load()
        var provided: Int32 = 0
        let code = mpi.initThread(nil, nil, MPILibrary.threadMultiple, &provided)
        guard code == 0 else { throw DistributedError.mpiFailed(rank: Int(env["OMPI_COMM_WORLD_RANK"] ?? "") ?? -1, operation: "MPI_Init_thread", code: code) }
        var rank: Int32 = 0, size: Int32 = 1
        _ = mpi.commRank(mpi.commWorld, &rank)
        _ = mpi.commSize(mpi.commWorld, &size)
        let group = ProcessGroup(rank: Int(rank), size: Int(size), localSize: localSize, mpi: mpi, timeout: timeout)
        BLAS.setThreadCount(Parallel.coreCount)
        installTerminationMessage(rank: Int(rank))
        launchedGroup = group
        return group
    }

    /// Ends MPI cleanly (every rank must call it); a no-op for a single process.
    public func finish() {
        guard let mpi else { return }
        watchdog?.stop()
        _ = mpi.finalize()
    }

    // MARK: Collectives

    /// Sums `buffer` over all ranks, in place, on every rank.
    public func sum(_ buffer: UnsafeMutablePointer<Float>, count: Int, _ operation: @autoclosure () -> String) throws {
        guard let mpi, size > 1 else { return }
        try collective(operation(), bytes: count * 4) {
            mpi.allreduce(MPILibrary.inPlace, buffer, Int32(count), mpi.float, mpi.sum, mpi.commWorld)
        }
    }

    /// Sums `values` over all ranks, in place, on every rank.
    public func sum(_ values: inout [Double], _ operation: @autoclosure () -> String) throws {
        guard let mpi, size > 1 else { return }
        let count = values.count
        try values.withUnsafeMutableBufferPointer { buffer in
            try collective(operation(), bytes: count * 8) {
                mpi.allreduce(MPILibrary.inPlace, buffer.baseAddress, Int32(count), mpi.double, mpi.sum, mpi.commWorld)
            }
        }
    }

    /// Rank 0's `count` floats into `buffer` on every rank.
    public func broadcast(_ buffer: UnsafeMutablePointer<Float>, count: Int, _ operation: @autoclosure () -> String) throws {
        guard let mpi, size > 1 else { return }
        try collective(operation(), bytes: count * 4) { mpi.bcast(buffer, Int32(count), mpi.float, 0, mpi.commWorld) }
    }

    /// Rank 0's bytes, on every rank.
    public func broadcast(_ bytes: [UInt8], _ operation: @autoclosure () -> String) throws -> [UInt8] {
        guard let mpi, size > 1 else { return bytes }
        let name = operation()
        var length = [Double(bytes.count)]
        if !isRoot { length[0] = 0 }
        try length.withUnsafeMutableBufferPointer { b in
            try collective(name + " (length)", bytes: 8) { mpi.bcast(b.baseAddress, 1, mpi.double, 0, mpi.commWorld) }
        }
        var result = isRoot ? bytes : [UInt8](repeating: 0, count: Int(length[0]))
        let count = result.count
        try result.withUnsafeMutableBytes { b in
            try collective(name, bytes: count) { mpi.bcast(b.baseAddress, Int32(count), mpi.byte, 0, mpi.commWorld) }
        }
        return result
    }

    /// Every rank's bytes at rank 0, in rank order; other ranks get an empty list.
    public func gatherAtRoot(_ bytes: [UInt8], _ operation: @autoclosure () -> String) throws -> [[UInt8]] {
        guard let mpi, size > 1 else { return [bytes] }
        let name = operation()
        var length = Int32(bytes.count)
        var lengths = [Int32](repeating: 0, count: size)
        try lengths.withUnsafeMutableBufferPointer { all in
            try collective(name + " (lengths)", bytes: 4) {
                mpi.gather(&length, 1, mpi.int, all.baseAddress, 1, mpi.int, 0, mpi.commWorld)
            }
        }
        let offsets = lengths.indices.map { i in lengths[..<i].reduce(0, +) }
        var all = [UInt8](repeating: 0, count: isRoot ? Int(lengths.reduce(0, +)) : 0)
        try bytes.withUnsafeBytes { mine in try all.withUnsafeMutableBytes { everything in
            try lengths.withUnsafeBufferPointer { l in try offsets.withUnsafeBufferPointer { o in
                try collective(name, bytes: bytes.count) {
                    mpi.gatherv(mine.baseAddress ?? UnsafeRawPointer(bitPattern: 1), Int32(bytes.count), mpi.byte,
                                everything.baseAddress, l.baseAddress, o.baseAddress, mpi.byte, 0, mpi.commWorld)
                }
            } }
        } }
        guard isRoot else { return [] }
        return (0..<size).map { Array(all[Int(offsets[$0])..<Int(offsets[$0] + lengths[$0])]) }
    }

    /// Sums of each named value over all ranks at rank 0 (a rank may lack some names); other
    /// ranks get their own values back.
    public func sumAtRoot(_ values: [String: Double], _ operation: @autoclosure () -> String) throws -> [String: Double] {
        guard size > 1 else { return values }
        // One "name\tbits" line per value: exact, and names may differ between ranks.
        let text = values.map { "\($0.key)\t\(String($0.value.bitPattern, radix: 16))" }.joined(separator: "\n")
        let parts = try gatherAtRoot(Array(text.utf8), operation())
        guard isRoot else { return values }
        var total: [String: Double] = [:]
        for part in parts {
            for line in String(decoding: part, as: UTF8.self).split(separator: "\n") {
                let fields = line.split(separator: "\t")
                guard fields.count == 2, let bits = UInt64(fields[1], radix: 16) else { continue }
                total[String(fields[0]), default: 0] += Double(bitPattern: bits)
            }
        }
        return total
    }

    /// Throws on any rank whose `values` differ from rank 0's (same data, same model, ...).
    public func checkSameAsRoot(_ values: [Double], what: String) throws {
        guard size > 1 else { return }
        var root = values
        if !isRoot { root = [Double](repeating: 0, count: values.count) }
        try root.withUnsafeMutableBufferPointer { b in
            try collective("comparing \(what) with rank 0", bytes: values.count * 8) {
                guard let mpi else { return 0 }
                return mpi.bcast(b.baseAddress, Int32(values.count), mpi.double, 0, mpi.commWorld)
            }
        }
        if root != values {
            throw DistributedError.mismatch(rank: rank, what: what, found: values.map { "\($0)" }.joined(separator: ", "),
                                            expected: root.map { "\($0)" }.joined(separator: ", "))
        }
    }

    /// Runs one MPI call under the watchdog and accounts its time.
    func collective(_ operation: String, bytes: Int, _ call: () -> Int32) throws {
        let start = MonotonicClock.now()
        watchdog?.arm(operation)
        let code = call()
        watchdog?.disarm()
        collectiveSeconds += MonotonicClock.now() - start
        collectiveBytes += bytes
        if code != 0 { throw DistributedError.mpiFailed(rank: rank, operation: operation, code: code) }
    }

    /// Stops every rank of the job: a clear line from this one, then MPI_Abort (mpirun kills the rest).
    func abortJob(operation: String, waited: Double) -> Never {
        let message = String(format: "error: rank %d: %@ did not complete within %.0f s: another rank died, hangs or is far behind; "
                             + "stopping the job (the last checkpoint is intact; raise --collective-timeout if ranks legitimately wait longer)\n",
                             rank, operation, waited)
        FileHandle.standardError.write(Data(message.utf8))
        if let mpi { _ = mpi.abort(mpi.commWorld, 1) }
        _exit(1)
    }

    /// mpirun stops the surviving ranks with SIGTERM when one dies; say so instead of vanishing.
    static func installTerminationMessage(rank: Int) {
        let line = Array("error: rank \(rank): stopped by mpirun (SIGTERM): another rank died or the job was interrupted; the last checkpoint is intact\n".utf8)
        let buffer = UnsafeMutablePointer<UInt8>.allocate(capacity: line.count)
        buffer.initialize(from: line, count: line.count)
        terminationLine = (UnsafeRawPointer(buffer), line.count)
        signal(SIGTERM) { _ in
            _ = write(2, terminationLine.bytes, terminationLine.count)   // async-signal-safe: a prepared buffer
            _exit(143)
        }
    }
}

/// The line the SIGTERM handler writes (a C function pointer cannot capture it).
nonisolated(unsafe) private var terminationLine: (bytes: UnsafeRawPointer?, count: Int) = (nil, 0)

/// Aborts through `onExpiry` when an armed operation runs past `timeout` seconds.
final class Watchdog: @unchecked Sendable {
    var timeout: Double {
        get { lock.lock(); defer { lock.unlock() }; return limit }
        set { lock.lock(); limit = newValue; lock.unlock() }
    }
    var onExpiry: ((String, Double) -> Never)?
    private let lock = NSLock()
    private var limit: Double
    private var armed: (operation: String, since: Double)?
    private var running = true

    init(timeout: Double) {
        limit = timeout
        let thread = Thread { [weak self] in
            while let self, self.check() { usleep(100_000) }
        }
        thread.name = "finch-collective-watchdog"
        thread.start()
    }

    func arm(_ operation: String) { lock.lock(); armed = (operation, MonotonicClock.now()); lock.unlock() }
    func disarm() { lock.lock(); armed = nil; lock.unlock() }
    func stop() { lock.lock(); running = false; lock.unlock() }

    /// False once stopped.
    private func check() -> Bool {
        lock.lock()
        guard running else { lock.unlock(); return false }
        let expired = armed.flatMap { a in limit > 0 && MonotonicClock.now() - a.since > limit ? a.operation : nil }
        let waited = limit
        lock.unlock()
        if let expired, let onExpiry { onExpiry(expired, waited) }
        return true
    }
}
