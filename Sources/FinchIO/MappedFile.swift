#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import FinchKernels

/// A whole file mapped read-only into memory. Tensors loaded from it point into `bytes`
/// and keep the mapping alive through `TensorData.owner`.
final package class MappedFile: @unchecked Sendable {
    /// The path it was opened with, for error messages.
    public let path: String
    /// Start of the read-only mapping; valid while this object lives (a dummy byte for an empty file).
    public let bytes: UnsafeRawPointer
    /// File size in bytes (0 for an empty file).
    public let count: Int
    /// nil for an empty file, which has nothing to map.
    private let mapping: UnsafeMutableRawPointer?
    private let placeholder: UnsafeMutableRawPointer?

    /// Maps the whole regular file at `path`; throws `LoadError` when it is missing, unreadable,
    /// a directory, or cannot be mapped. Unmapped on deinit.
    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            let code = errno
            if code == ENOENT || code == ENOTDIR { throw LoadError.fileNotFound(path: path) }
            throw LoadError.unreadable(path: path, reason: String(cString: strerror(code)))
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw LoadError.unreadable(path: path, reason: String(cString: strerror(errno)))
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            let kind = (info.st_mode & S_IFMT) == S_IFDIR ? "a directory" : "not a regular file"
            throw LoadError.unreadable(path: path, reason: "\(kind), expected a regular file")
        }
        let size = Int(info.st_size)
        if size == 0 {
            let dummy = UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 64)
            placeholder = dummy
            mapping = nil
            bytes = UnsafeRawPointer(dummy)
            count = 0
            return
        }
        guard let address = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), address != MAP_FAILED else {
            throw LoadError.unreadable(path: path, reason: "mmap of \(size) bytes failed: \(String(cString: strerror(errno)))")
        }
        placeholder = nil
        mapping = address
        bytes = UnsafeRawPointer(address)
        count = size
    }

    /// A copy of `bytes` in place of a mapped file, for parsing data held in memory; `path`
    /// only names it in errors.
    init(copying bytes: [UInt8], path: String) {
        self.path = path
        let storage = UnsafeMutableRawPointer.allocate(byteCount: max(bytes.count, 1), alignment: 64)
        bytes.withUnsafeBytes { if let base = $0.baseAddress { storage.copyMemory(from: base, byteCount: $0.count) } }
        placeholder = storage
        mapping = nil
        self.bytes = UnsafeRawPointer(storage)
        count = bytes.count
    }

    /// Drops the file's pages from this process's resident memory, once everything read from
    /// them has been copied: the mapping stays valid, and a later read faults the pages back
    /// in from the file (the mapping is read-only, so nothing is lost).
    package func releaseResidentPages() {
        if let mapping { _ = madvise(mapping, count, MADV_DONTNEED) }
    }

    /// The mapped bytes as a buffer.
    public var buffer: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: bytes, count: count) }

    deinit {
        if let mapping { munmap(mapping, count) }
        placeholder?.deallocate()
    }
}
