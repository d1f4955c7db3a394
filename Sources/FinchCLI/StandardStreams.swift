#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// The C standard streams, read once here: Swift 6 counts each use of the global `stdout` as
/// shared mutable state, though the C library never reassigns it.
nonisolated(unsafe) let standardOutput = stdout
nonisolated(unsafe) let standardInput = stdin

/// Pushes what `print` buffered to the terminal or pipe (progress lines, streamed tokens).
func flushOutput() { fflush(standardOutput) }
