import XCTest
import Crypto
import FinchTestSupport
@testable import FinchIO
@testable import FinchModels
#if canImport(Glibc)
import Glibc
#endif

/// A local HTTP server laid out like the Hugging Face hub (`/api/models/<repo>/revision/<rev>`,
/// `/<repo>/resolve/<commit>/<file>` with ETag / X-Linked-Etag / X-Linked-Size on HEAD, ranges on
/// GET), with faults to order: a transfer cut in the middle once, content that does not match its
/// etag, a required token. One request per connection, on a background thread.
final class HubTestServer: @unchecked Sendable {
    let commit = "1234567890abcdef1234567890abcdef12345678"
    let repo: String
    private let lock = NSLock()
    private var files: [String: Data]
    private var lfs: Set<String>
    private var cutOnce: Set<String> = []
    private var corrupt: Set<String> = []
    private(set) var requests: [String] = []
    var token: String?
    private var listener: Int32 = -1
    private(set) var port: UInt16 = 0

    init(repo: String, files: [String: Data], lfs: Set<String>) throws {
        self.repo = repo; self.files = files; self.lfs = lfs
        listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var yes: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, listen(listener, 16) == 0 else { throw XCTSkip("cannot listen on 127.0.0.1") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) } }
        port = UInt16(bigEndian: address.sin_port)
        Thread.detachNewThread { [self] in serve() }
    }

    var endpoint: String { "http://127.0.0.1:\(port)" }

    func cut(_ file: String) { lock.withLock { _ = cutOnce.insert(file) } }
    func corrupting(_ file: String) { lock.withLock { _ = corrupt.insert(file) } }
    func stop() { shutdown(listener, Int32(SHUT_RDWR)); close(listener) }

    /// The hub's etag of a file: SHA-256 for LFS files, git's blob SHA-1 for the others.
    func etag(_ name: String) -> String {
        let data = files[name]!
        if lfs.contains(name) { return SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined() }
        var sha1 = Insecure.SHA1()
        sha1.update(data: Data("blob \(data.count)\0".utf8)); sha1.update(data: data)
        return sha1.finalize().map { String(format: "%02x", $0) }.joined()
    }

    private func serve() {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 { return }
            handle(client)
            close(client)
        }
    }

    private func handle(_ client: Int32) {
        var request = Data()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !request.contains("\r\n\r\n".data(using: .utf8)!) {
            let n = recv(client, &buffer, buffer.count, 0)
            if n <= 0 { return }
            request.append(contentsOf: buffer[0..<n])
        }
        let lines = String(decoding: request, as: UTF8.self).components(separatedBy: "\r\n")
        let parts = lines[0].split(separator: " ").map(String.init)
        guard parts.count >= 2 else { return }
        let (method, path) = (parts[0], parts[1].removingPercentEncoding ?? parts[1])
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        lock.withLock { requests.append("\(method) \(path)" + (headers["range"].map { " \($0)" } ?? "")) }
        func send(_ status: String, _ extra: [String: String], _ body: Data, bodyLength: Int? = nil) {
            var head = "HTTP/1.1 \(status)\r\nConnection: close\r\nContent-Length: \(bodyLength ?? body.count)\r\n"
            for (k, v) in extra { head += "\(k): \(v)\r\n" }
            let bytes = Data((head + "\r\n").utf8) + (method == "HEAD" ? Data() : body)
            bytes.withUnsafeBytes { p in
                var sent = 0
                while sent < p.count {
                    let n = Glibc.send(client, p.baseAddress! + sent, p.count - sent, Int32(MSG_NOSIGNAL))
                    if n <= 0 { return }
                    sent += n
                }
            }
        }
        if let token, headers["authorization"] != "Bearer \(token)" {
            send("401 Unauthorized", ["X-Error-Message": "Access to this repo is restricted"], Data())
            return
        }
        if path == "/api/models/\(repo)/revision/main" || path == "/api/models/\(repo)/revision/\(commit)" {
            let siblings = files.keys.sorted().map { ["rfilename": $0] } + [["rfilename": "README.md"], ["rfilename": "pytorch_model.bin"]]
            send("200 OK", ["Content-Type": "application/json"], try! JSONSerialization.data(withJSONObject: ["sha": commit, "siblings": siblings]))
            return
        }
        let prefix = "/\(repo)/resolve/\(commit)/"
        guard path.hasPrefix(prefix), let data = files[String(path.dropFirst(prefix.count))] else {
            send("404 Not Found", ["X-Error-Message": "Entry not found"], Data())
            return
        }
        let name = String(path.dropFirst(prefix.count)), tag = etag(name)
        var extra = ["X-Repo-Commit": commit, "ETag": "\"\(tag)\""]
        if lfs.contains(name) { extra["X-Linked-Etag"] = "\"\(tag)\""; extra["X-Linked-Size"] = "\(data.count)" }
        var body = data
        if lock.withLock({ corrupt.contains(name) }) { body[body.count / 2] ^= 0xFF }
        if method == "GET", let range = headers["range"], range.hasPrefix("bytes="), let start = Int(range.dropFirst(6).dropLast()) {
            extra["Content-Range"] = "bytes \(start)-\(data.count - 1)/\(data.count)"
            send("206 Partial Content", extra, body.subdata(in: start..<body.count))
            return
        }
        if method == "GET", lock.withLock({ cutOnce.remove(name) != nil }) {
            // The whole length announced, half of it sent, then the connection closed.
            send("200 OK", extra, body.prefix(body.count / 2), bodyLength: body.count)
            return
        }
        send("200 OK", extra, body)
    }
}

/// `HubDownloader` against the local hub: a repo id not in the cache is downloaded into the
/// cache's layout (blobs named by etag, snapshot links, refs/main), only the files Finch reads; a
/// cut transfer keeps its partial file and the next run resumes it with a range; content that
/// does not match its etag is rejected and removed; a token is sent.
final class HubDownloadTests: TemporaryDirectoryTestCase {
    let repo = "finch-test/Tiny-Model"

    func model() -> [String: Data] {
        var weights = Data(count: 300_000)
        for i in 0..<weights.count { weights[i] = UInt8(truncatingIfNeeded: i &* 2654435761 >> 7) }
        return ["config.json": Data(#"{"model_type": "llama"}"#.utf8), "model.safetensors": weights,
                "tokenizer.json": Data(#"{"model": {}}"#.utf8), "nested/chat_template.jinja": Data("{{ messages }}".utf8)]
    }

    func environment(_ server: HubTestServer) -> [String: String] {
        ["HF_HUB_CACHE": temporary.appendingPathComponent("hub").path, "HF_ENDPOINT": server.endpoint + "/"]
    }

    func testDownloadsIntoTheCacheLayoutAndResolves() throws {
        let files = model()
        let server = try HubTestServer(repo: repo, files: files, lfs: ["model.safetensors"])
        defer { server.stop() }
        let env = environment(server)
        let folder = try HubCache.resolve(repo, environment: env)
        let cache = temporary.appendingPathComponent("hub/models--finch-test--Tiny-Model").path
        XCTAssertEqual(folder, cache + "/snapshots/\(server.commit)")
        XCTAssertEqual(try String(contentsOfFile: cache + "/refs/main", encoding: .utf8), server.commit)
        for (name, data) in files {
            XCTAssertEqual(FileManager.default.contents(atPath: folder + "/" + name), data, name)
            let link = try FileManager.default.destinationOfSymbolicLink(atPath: folder + "/" + name)
            XCTAssertEqual(link, String(repeating: "../", count: name.split(separator: "/").count + 1) + "blobs/" + server.etag(name), name)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder + "/README.md"), "only what Finch reads")
        XCTAssertFalse(server.requests.contains { $0.contains("pytorch_model.bin") })
        // Cached now: resolving again asks the hub nothing.
        let before = server.requests.count
        XCTAssertEqual(try HubCache.resolve(repo, environment: env), folder)
        XCTAssertEqual(server.requests.count, before)
        // Offline, a repo not cached is the plain cache error.
        XCTAssertThrowsError(try HubCache.resolve("finch-test/Other", environment: env.merging(["HF_HUB_OFFLINE": "1"]) { $1 })) {
            XCTAssertTrue("\($0)".contains("not in the Hugging Face cache"), "\($0)")
            XCTAssertFalse("\($0)".contains("download failed"), "\($0)")
        }
    }

    func testACutTransferResumesWithARange() throws {
        let server = try HubTestServer(repo: repo, files: model(), lfs: ["model.safetensors"])
        defer { server.stop() }
        server.cut("model.safetensors")
        let downloader = HubDownloader(environment: environment(server))
        XCTAssertThrowsError(try downloader.snapshot(repo: repo)) { error in
            XCTAssertTrue("\(error)".contains("model.safetensors"), "\(error)")
        }
        let blobs = temporary.appendingPathComponent("hub/models--finch-test--Tiny-Model/blobs").path
        let partial = blobs + "/" + server.etag("model.safetensors") + ".incomplete"
        let kept = try XCTUnwrap((try FileManager.default.attributesOfItem(atPath: partial))[.size] as? NSNumber).intValue
        XCTAssertEqual(kept, 150_000, "the half that arrived is kept")
        let folder = try downloader.snapshot(repo: repo)
        XCTAssertEqual(FileManager.default.contents(atPath: folder + "/model.safetensors"), model()["model.safetensors"])
        XCTAssertTrue(server.requests.contains("GET /\(repo)/resolve/\(server.commit)/model.safetensors bytes=150000-"), "\(server.requests)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: partial))
    }

    func testContentThatDoesNotMatchItsEtagIsRejected() throws {
        for file in ["model.safetensors", "config.json"] {   // SHA-256 (LFS) and git SHA-1 etags
            let server = try HubTestServer(repo: repo, files: model(), lfs: ["model.safetensors"])
            defer { server.stop() }
            server.corrupting(file)
            let env = environment(server).merging(["HF_HUB_CACHE": temporary.appendingPathComponent("hub-\(file)").path]) { $1 }
            XCTAssertThrowsError(try HubDownloader(environment: env).snapshot(repo: repo)) { error in
                guard case let .checksum(name, expected, found) = error as? HubError else { return XCTFail("\(error)") }
                XCTAssertEqual(name, "\(repo)/\(file)")
                XCTAssertEqual(expected, server.etag(file))
                XCTAssertNotEqual(found, expected)
            }
            let blobs = temporary.appendingPathComponent("hub-\(file)/models--finch-test--Tiny-Model/blobs").path
            XCTAssertEqual((try? FileManager.default.contentsOfDirectory(atPath: blobs))?.filter { $0.hasPrefix(server.etag(file)) } ?? [], [],
                           "\(file): nothing left under its etag")
            // Through resolve, the error says the model is not cached and why the download failed.
            XCTAssertThrowsError(try HubCache.resolve(repo, environment: env)) { XCTAssertTrue("\($0)".contains("hashes to"), "\($0)") }
        }
    }

    func testATokenIsSentAndAMissingOneExplained() throws {
        let server = try HubTestServer(repo: repo, files: model(), lfs: ["model.safetensors"])
        defer { server.stop() }
        server.token = "hf_secret"
        XCTAssertThrowsError(try HubDownloader(environment: environment(server)).snapshot(repo: repo)) { error in
            XCTAssertEqual((error as? HubError).map { if case let .status(_, status, _) = $0 { return status } else { return 0 } }, 401)
            XCTAssertTrue("\(error)".contains("HF_TOKEN"), "\(error)")
        }
        let folder = try HubDownloader(environment: environment(server).merging(["HF_TOKEN": "hf_secret"]) { $1 }).snapshot(repo: repo)
        XCTAssertEqual(FileManager.default.contents(atPath: folder + "/config.json"), model()["config.json"])
    }

    func testNoHubIsAClearError() throws {
        // A port nothing listens on.
        let env = ["HF_HUB_CACHE": temporary.appendingPathComponent("hub").path, "HF_ENDPOINT": "http://127.0.0.1:9"]
        XCTAssertThrowsError(try HubCache.resolve(repo, environment: env)) { error in
            XCTAssertTrue("\(error)".contains("not in the Hugging Face cache"), "\(error)")
            XCTAssertTrue("\(error)".contains("download failed"), "\(error)")
        }
    }
}
