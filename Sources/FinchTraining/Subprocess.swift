import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Runs a program with bytes on its stdin and collects its stdout and stderr, with a deadline.
/// The program gets its own process group, so at the deadline it is killed with everything it
/// started (a shell's children too) and nothing is left holding the pipes.
enum Subprocess {
    /// How the program ended.
    enum Status: Equatable {
        case exited(Int32)
        case signalled(Int32)
        case timedOut
    }

    struct Result {
        var status: Status
        var stdout: Data
        var stderr: Data
    }

    /// Why the program could not be started.
    struct LaunchError: Error, CustomStringConvertible {
        let program: String, reason: String
        var description: String { "cannot start \(program): \(reason)" }
    }

    static func run(_ arguments: [String], input: Data, timeout: Double) throws -> Result {
        // A program that exits without reading all of its stdin must not end this process.
        signal(SIGPIPE, SIG_IGN)
        var inPipe: [Int32] = [0, 0], outPipe: [Int32] = [0, 0], errPipe: [Int32] = [0, 0]
        guard pipe(&inPipe) == 0, pipe(&outPipe) == 0, pipe(&errPipe) == 0 else {
            throw LaunchError(program: arguments[0], reason: String(cString: strerror(errno)))
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
        for fd in inPipe + outPipe + errPipe { posix_spawn_file_actions_addclose(&actions, fd) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP))
        posix_spawnattr_setpgroup(&attributes, 0)

        var pid: pid_t = 0
        let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        let spawned = posix_spawn(&pid, arguments[0], &actions, &attributes, argv, environ)
        close(inPipe[0]); close(outPipe[1]); close(errPipe[1])
        guard spawned == 0 else {
            close(inPipe[1]); close(outPipe[0]); close(errPipe[0])
            throw LaunchError(program: arguments[0], reason: String(cString: strerror(spawned)))
        }

        let deadline = Date().addingTimeInterval(timeout)
        var stdout = Data(), stderr = Data()
        var writeFD: Int32 = inPipe[1], outFD: Int32 = outPipe[0], errFD: Int32 = errPipe[0]
        _ = fcntl(writeFD, F_SETFL, fcntl(writeFD, F_GETFL) | O_NONBLOCK)
        var written = 0
        if input.isEmpty { close(writeFD); writeFD = -1 }
        var buffer = [UInt8](repeating: 0, count: 65536)
        var timedOut = false
        while writeFD >= 0 || outFD >= 0 || errFD >= 0 {
            let remaining = deadline.timeIntervalSinceNow
            if remaining <= 0 { timedOut = true; break }
            var fds = [pollfd(fd: writeFD, events: Int16(POLLOUT), revents: 0), pollfd(fd: outFD, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: errFD, events: Int16(POLLIN), revents: 0)]
            let ready = poll(&fds, nfds_t(fds.count), Int32(min(remaining * 1000, 1000).rounded(.up)))
            if ready < 0 { if errno == EINTR { continue }; break }
            if writeFD >= 0 && fds[0].revents != 0 {
                let n = input.withUnsafeBytes { write(writeFD, $0.baseAddress! + written, $0.count - written) }
                if n > 0 { written += n }
                if n < 0 && errno != EAGAIN && errno != EINTR || written == input.count { close(writeFD); writeFD = -1 }
            }
            for (i, fd) in [(1, outFD), (2, errFD)] where fd >= 0 && fds[i].revents != 0 {
                let n = read(fd, &buffer, buffer.count)
                if n > 0 {
                    if i == 1 { stdout.append(buffer, count: n) } else { stderr.append(buffer, count: n) }
                } else if n == 0 || errno != EAGAIN && errno != EINTR {
                    close(fd)
                    if i == 1 { outFD = -1 } else { errFD = -1 }
                }
            }
        }
        for fd in [writeFD, outFD, errFD] where fd >= 0 { close(fd) }
        // Output closed: wait for the exit, still within the deadline.
        var status: Int32 = 0
        while !timedOut {
            let done = waitpid(pid, &status, WNOHANG)
            if done == pid { break }
            if done < 0 && errno != EINTR { break }
            if Date() >= deadline { timedOut = true; break }
            usleep(2000)
        }
        if timedOut {
            kill(-pid, SIGKILL)
            kill(pid, SIGKILL)
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            return Result(status: .timedOut, stdout: stdout, stderr: stderr)
        }
        let signalNumber = status & 0x7f
        return Result(status: signalNumber == 0 ? .exited((status >> 8) & 0xff) : .signalled(signalNumber), stdout: stdout, stderr: stderr)
    }
}
