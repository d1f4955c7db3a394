import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Runs `finch` on one case in its own process, under an address-space limit and a timeout, and
/// says how it ended.
enum Runner {
    enum Outcome: String, CaseIterable { case error = "clean error", accepted, silentError = "error without message", crash, hang }

    struct Result {
        let outcome: Outcome
        let status: Int32
        let stderr: String
        let seconds: Double
    }

    static func run(_ finch: URL, _ arguments: [String], stdin: String? = nil, timeout: Double, memoryGiB: Int,
                    directory: URL? = nil) -> Result {
        let process = Process()
        // The shell sets the limit and then becomes finch (exec), so a signal ends finch itself.
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "ulimit -v \(memoryGiB << 20) && exec \"$0\" \"$@\"", finch.path] + arguments
        if let directory { process.currentDirectoryURL = directory }
        let input = Pipe(), output = Pipe(), errors = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = errors
        let start = Date()
        do { try process.run() } catch {
            return Result(outcome: .crash, status: -1, stderr: "could not start \(finch.path): \(error)", seconds: 0)
        }
        let killed = LockedFlag()
        let timer = DispatchSource.makeTimerSource(queue: .global())
        timer.schedule(deadline: .now() + timeout)
        let pid = process.processIdentifier
        timer.setEventHandler { killed.set(); kill(pid, SIGKILL) }
        timer.resume()
        // Feed stdin and drain stdout on their own threads so no pipe fills up and blocks finch.
        let group = DispatchGroup()
        DispatchQueue.global().async(group: group) {
            if let stdin { try? input.fileHandleForWriting.write(contentsOf: Data(stdin.utf8)) }
            try? input.fileHandleForWriting.close()
        }
        DispatchQueue.global().async(group: group) { _ = try? output.fileHandleForReading.readToEnd() }
        let err = (try? errors.fileHandleForReading.readToEnd()) ?? Data()
        process.waitUntilExit()
        timer.cancel()
        group.wait()
        let seconds = Date().timeIntervalSince(start)
        let text = String(decoding: err.suffix(8192), as: UTF8.self)
        let outcome: Outcome
        if process.terminationReason == .uncaughtSignal {
            outcome = killed.value ? .hang : .crash
        } else if process.terminationStatus == 0 {
            outcome = .accepted
        } else {
            outcome = text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty ? .silentError : .error
        }
        return Result(outcome: outcome, status: process.terminationStatus, stderr: text, seconds: seconds)
    }
}

final class LockedFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var flag = false
    func set() { lock.lock(); flag = true; lock.unlock() }
    var value: Bool { lock.lock(); defer { lock.unlock() }; return flag }
}
