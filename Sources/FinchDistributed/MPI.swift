import Foundation
#if canImport(Glibc)
import Glibc
#endif
import FinchKernels

/// The few Open MPI entry points Finch uses, loaded at run time as `BLAS` loads OpenBLAS, so that
/// Finch builds and runs without MPI installed and a plain `finch train` never touches it.
///
/// Open MPI's predefined handles (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM, ...) are addresses of
/// exported globals (`ompi_mpi_comm_world`, ...; see `mpi.h`), so `dlsym` gives them too.
/// The library is opened RTLD_GLOBAL: Open MPI's plugins (mca_*.so) resolve symbols of libmpi.
struct MPILibrary {
    typealias Handle = UnsafeMutableRawPointer
    typealias InitThread = @convention(c) (UnsafeMutablePointer<Int32>?, UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?,
                                           Int32, UnsafeMutablePointer<Int32>) -> Int32
    typealias CommInt = @convention(c) (Handle, UnsafeMutablePointer<Int32>) -> Int32
    typealias Allreduce = @convention(c) (UnsafeRawPointer?, UnsafeMutableRawPointer?, Int32, Handle, Handle, Handle) -> Int32
    typealias Gather = @convention(c) (UnsafeRawPointer?, Int32, Handle, UnsafeMutableRawPointer?, Int32, Handle, Int32, Handle) -> Int32
    typealias Gatherv = @convention(c) (UnsafeRawPointer?, Int32, Handle, UnsafeMutableRawPointer?, UnsafePointer<Int32>?,
                                        UnsafePointer<Int32>?, Handle, Int32, Handle) -> Int32
    typealias Bcast = @convention(c) (UnsafeMutableRawPointer?, Int32, Handle, Int32, Handle) -> Int32
    typealias Barrier = @convention(c) (Handle) -> Int32
    typealias Abort = @convention(c) (Handle, Int32) -> Int32
    typealias Finalize = @convention(c) () -> Int32

    static let threadMultiple: Int32 = 3     // MPI_THREAD_MULTIPLE
    nonisolated(unsafe) static let inPlace = UnsafeMutableRawPointer(bitPattern: 1)!   // MPI_IN_PLACE

    let initThread: InitThread
    let commRank: CommInt
    let commSize: CommInt
    let allreduce: Allreduce
    let gather: Gather
    let gatherv: Gatherv
    let bcast: Bcast
    let barrier: Barrier
    let abort: Abort
    let finalize: Finalize
    let commWorld: Handle
    let float: Handle
    let double: Handle
    let int: Handle
    let byte: Handle
    let sum: Handle

    static let candidates = ["libmpi.so.40", "libmpi.so", "/usr/lib/x86_64-linux-gnu/libmpi.so.40", "/usr/lib/aarch64-linux-gnu/libmpi.so.40"]

    /// Opens libmpi, or says why it could not.
    static func load() throws -> MPILibrary {
        guard let handle = candidates.lazy.compactMap({ dlopen($0, RTLD_NOW | RTLD_GLOBAL) }).first else {
            throw DistributedError.mpiUnavailable("libmpi.so.40 was not found; install Open MPI with `apt-get install openmpi-bin` (scripts/setup.sh does)")
        }
        func symbol(_ name: String) throws -> UnsafeMutableRawPointer {
            guard let s = dlsym(handle, name) else { throw DistributedError.mpiUnavailable("libmpi lacks \(name): Finch needs Open MPI (4.x)") }
            return s
        }
        func function<F>(_ name: String, _: F.Type) throws -> F { unsafeBitCast(try symbol(name), to: F.self) }
        return MPILibrary(
            initThread: try function("MPI_Init_thread", InitThread.self),
            commRank: try function("MPI_Comm_rank", CommInt.self),
            commSize: try function("MPI_Comm_size", CommInt.self),
            allreduce: try function("MPI_Allreduce", Allreduce.self),
            gather: try function("MPI_Gather", Gather.self),
            gatherv: try function("MPI_Gatherv", Gatherv.self),
            bcast: try function("MPI_Bcast", Bcast.self),
            barrier: try function("MPI_Barrier", Barrier.self),
            abort: try function("MPI_Abort", Abort.self),
            finalize: try function("MPI_Finalize", Finalize.self),
            commWorld: try symbol("ompi_mpi_comm_world"),
            float: try symbol("ompi_mpi_float"),
            double: try symbol("ompi_mpi_double"),
            int: try symbol("ompi_mpi_int"),
            byte: try symbol("ompi_mpi_byte"),
            sum: try symbol("ompi_mpi_op_sum"))
    }
}

/// A data parallel job that cannot go on.
public enum DistributedError: Error, CustomStringConvertible, Equatable {
    /// Started by mpirun, but Open MPI's library could not be loaded or lacks a symbol.
    case mpiUnavailable(String)
    /// An MPI call returned an error code on `rank`.
    case mpiFailed(rank: Int, operation: String, code: Int32)
    /// A rank holds different inputs than rank 0 (e.g. another data file), found by `checkSameAsRoot`.
    case mismatch(rank: Int, what: String, found: String, expected: String)

    public var description: String {
        switch self {
        case let .mpiUnavailable(reason): return "launched under mpirun, but MPI cannot be used: \(reason)"
        case let .mpiFailed(rank, operation, code): return "rank \(rank): \(operation) failed with MPI error \(code)"
        case let .mismatch(rank, what, found, expected): return "rank \(rank): \(what) is \(found), rank 0 has \(expected)"
        }
    }
}
