import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Crypto
import FinchIO

/// Downloads a model from the Hugging Face hub into the cache as `huggingface_hub` lays it out
/// (so Python tools and Finch share the files), for `HubCache.resolve` when a repo id is not cached:
///
///     <cache>/models--<org>--<name>/blobs/<etag>              each file once, named by its hash
///     <cache>/models--<org>--<name>/snapshots/<commit>/<file>  relative links into blobs/
///     <cache>/models--<org>--<name>/refs/<revision>           the commit a branch or tag points at
///
/// The revision is resolved to a commit (`/api/models/<repo>/revision/<revision>`), then each file
/// Finch reads (config, safetensors and their index, tokenizer files, chat template; or the .gguf
/// files of a GGUF repo) comes from `/<repo>/resolve/<commit>/<file>`. A file arrives in
/// `blobs/<etag>.incomplete` and a broken transfer resumes from its length (an HTTP range); a
/// complete one is checked against its etag (SHA-256 of an LFS file, git's SHA-1 of a small one)
/// before it takes its name: a mismatch is an error naming the file, and the partial file is removed.
/// `HF_ENDPOINT` (default https://huggingface.co) and `HF_TOKEN` are read as `huggingface_hub` reads them.
public struct HubDownloader: Sendable {
    /// The hub's address, without a trailing slash.
    public var endpoint: String
    /// Sent as `Authorization: Bearer <token>` (gated and private repos).
    public var token: String?
    /// The cache folder (`HubCache.directory`).
    public var cache: String
    /// Seconds without progress before a request fails.
    public var timeout: TimeInterval = 60

    /// The settings of `environment`: `HF_ENDPOINT`, `HF_TOKEN`, the cache of `HubCache.directory`.
    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        endpoint = String((environment["HF_ENDPOINT"].flatMap { $0.isEmpty ? nil : $0 } ?? "https://huggingface.co").reversed().drop { $0 == "/" }.reversed())
        token = environment["HF_TOKEN"].flatMap { $0.isEmpty ? nil : $0 }
        cache = HubCache.directory(environment: environment)
    }

    /// Whether Finch reads a file of a repo (what it downloads).
    public static func wanted(_ file: String) -> Bool {
        let name = (file as NSString).lastPathComponent.lowercased()
        if name.hasSuffix(".safetensors") || name.hasSuffix(".gguf") { return true }
        return ["config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
                "special_tokens_map.json", "chat_template.jinja", "chat_template.json"].contains(name)
    }

    /// Downloads the files Finch reads of `repo` at `revision` (branch, tag or commit) and returns
    /// the snapshot folder. Files already in the cache are not fetched again.
    @discardableResult
    public func snapshot(repo: String, revision: String = "main") throws -> String {
        let info = try revisionInfo(repo: repo, revision: revision)
        let folder = (cache as NSString).appendingPathComponent("models--" + repo.replacingOccurrences(of: "/", with: "--"))
        let files = info.files.filter(Self.wanted)
        guard !files.isEmpty else {
            throw LoadError.malformed(path: "\(endpoint)/\(repo)", field: "files", found: info.files.prefix(8).joined(separator: ", "),
                                      expected: "config.json with safetensors, or a .gguf file")
        }
        // A GGUF repo holds many quantizations: without config.json, Finch reads its one .gguf file.
        let ggufs = files.filter { $0.lowercased().hasSuffix(".gguf") }
        if !files.contains("config.json") && ggufs.count > 1 {
            throw LoadError.malformed(path: "\(endpoint)/\(repo)", field: "files", found: "\(ggufs.count) .gguf files: " + ggufs.joined(separator: ", "),
                                      expected: "one .gguf file, or config.json with safetensors (download the file you want and give its path)")
        }
        // Every blob first, then the snapshot's links: a failed run leaves no snapshot that looks whole.
        let chosen = files.filter { files.contains("config.json") ? !$0.lowercased().hasSuffix(".gguf") : true }
        let tags = try chosen.map { try blob(repo: repo, commit: info.commit, file: $0, into: folder) }
        for (file, etag) in zip(chosen, tags) { try link(file, to: etag, commit: info.commit, in: folder) }
        if revision != info.commit {
            let refs = (folder as NSString).appendingPathComponent("refs")
            try FileManager.default.createDirectory(atPath: (refs as NSString).appendingPathComponent((revision as NSString).deletingLastPathComponent),
                                                    withIntermediateDirectories: true)
            try Data(info.commit.utf8).write(to: URL(fileURLWithPath: (refs as NSString).appendingPathComponent(revision)), options: .atomic)
        }
        return (folder as NSString).appendingPathComponent("snapshots/\(info.commit)")
    }

    /// The commit `revision` names and the repo's files there.
    func revisionInfo(repo: String, revision: String) throws -> (commit: String, files: [String]) {
        let url = "\(endpoint)/api/models/\(repo)/revision/\(Self.escape(revision))"
        let (status, headers, body) = try HTTP.request(url, method: "GET", headers: authorization, timeout: timeout)
        guard status == 200 else { throw HubError.status(url: url, status: status, hint: Self.hint(status, headers)) }
        guard let json = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any], let sha = json["sha"] as? String,
              Self.isCommit(sha), let siblings = json["siblings"] as? [[String: Any]] else {
            throw LoadError.malformed(path: url, field: "sha / siblings", found: String(decoding: body.prefix(200), as: UTF8.self),
                                      expected: "a JSON object with the commit (40 hex digits) and the files")
        }
        let files = siblings.compactMap { $0["rfilename"] as? String }
        if let bad = files.first(where: { $0.hasPrefix("/") || $0.split(separator: "/").contains { $0 == ".." || $0 == "." } }) {
            throw LoadError.malformed(path: url, field: "rfilename", found: bad, expected: "a path inside the repo")
        }
        return (sha, files)
    }

    /// One file into blobs/ (resuming a partial one, checking its hash); returns its etag.
    func blob(repo: String, commit: String, file: String, into folder: String) throws -> String {
        let manager = FileManager.default
        let link = (folder as NSString).appendingPathComponent("snapshots/\(commit)/\(file)")
        if let target = try? manager.destinationOfSymbolicLink(atPath: link), manager.fileExists(atPath: link) {
            return (target as NSString).lastPathComponent
        }
        let url = "\(endpoint)/\(repo)/resolve/\(commit)/\(file.split(separator: "/").map { Self.escape(String($0)) }.joined(separator: "/"))"
        // HEAD without following the redirect: an LFS file's hash and size are on the hub's answer.
        let (status, headers, _) = try HTTP.request(url, method: "HEAD", headers: authorization, followRedirects: false, timeout: timeout)
        guard (200..<400).contains(status) else { throw HubError.status(url: url, status: status, hint: Self.hint(status, headers)) }
        let rawTag = headers["x-linked-etag"] ?? headers["etag"] ?? ""
        let etag = rawTag.replacingOccurrences(of: "W/", with: "").trimmingCharacters(in: CharacterSet(charactersIn: "\" "))
        guard etag.count == 40 || etag.count == 64, etag.allSatisfy(\.isHexDigit) else {
            throw LoadError.malformed(path: url, field: "ETag", found: rawTag.isEmpty ? "nothing" : rawTag, expected: "the file's SHA-256 or git SHA-1")
        }
        let size = Int(headers["x-linked-size"] ?? headers["content-length"] ?? "")
        let blobs = (folder as NSString).appendingPathComponent("blobs")
        try manager.createDirectory(atPath: blobs, withIntermediateDirectories: true)
        let blob = (blobs as NSString).appendingPathComponent(etag)
        if !manager.fileExists(atPath: blob) {
            let partial = blob + ".incomplete"
            if !manager.fileExists(atPath: partial) { _ = manager.createFile(atPath: partial, contents: nil) }  // a failure surfaces when it is opened
            let have = ((try? manager.attributesOfItem(atPath: partial))?[.size] as? NSNumber)?.intValue ?? 0
            if size.map({ have < $0 }) ?? true {
                try HTTP.download(url, headers: authorization, appendingTo: partial, from: have, timeout: timeout)
            }
            let got = ((try? manager.attributesOfItem(atPath: partial))?[.size] as? NSNumber)?.intValue ?? 0
            if let size, got != size {
                throw HubError.incomplete(file: "\(repo)/\(file)", path: partial, have: got, expected: size)
            }
            let digest = try Self.digest(of: partial, gitBlob: etag.count == 40)
            guard digest == etag.lowercased() else {
                try? manager.removeItem(atPath: partial)
                throw HubError.checksum(file: "\(repo)/\(file)", expected: etag, found: digest)
            }
            try manager.moveItem(atPath: partial, toPath: blob)
        }
        return etag
    }

    /// The snapshot's relative link from `file` to its blob.
    func link(_ file: String, to etag: String, commit: String, in folder: String) throws {
        let manager = FileManager.default
        let link = (folder as NSString).appendingPathComponent("snapshots/\(commit)/\(file)")
        try manager.createDirectory(atPath: (link as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let depth = file.split(separator: "/").count - 1
        let relative = String(repeating: "../", count: depth + 2) + "blobs/" + etag
        try? manager.removeItem(atPath: link)
        try manager.createSymbolicLink(atPath: link, withDestinationPath: relative)
    }

    private var authorization: [String: String] { token.map { ["Authorization": "Bearer \($0)"] } ?? [:] }

    /// SHA-256 of the file, or git's blob SHA-1 (`blob <size>\0` + content), in lowercase hex.
    static func digest(of path: String, gitBlob: Bool) throws -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw LoadError.fileNotFound(path: path) }
        defer { try? handle.close() }
        func hex<D: Sequence>(_ d: D) -> String where D.Element == UInt8 { d.map { String(format: "%02x", $0) }.joined() }
        if gitBlob {
            var hasher = Insecure.SHA1()
            let size = (try? handle.seekToEnd()) ?? 0
            try handle.seek(toOffset: 0)
            hasher.update(data: Data("blob \(size)\0".utf8))
            while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty { hasher.update(data: chunk) }
            return hex(hasher.finalize())
        }
        var hasher = SHA256()
        while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty { hasher.update(data: chunk) }
        return hex(hasher.finalize())
    }

    static func isCommit(_ s: String) -> Bool { s.count == 40 && s.allSatisfy(\.isHexDigit) }

    static func escape(_ s: String) -> String {
        s.addingPercentEncoding(withAllowedCharacters: CharacterSet.urlPathAllowed.subtracting(CharacterSet(charactersIn: "/?#"))) ?? s
    }

    static func hint(_ status: Int, _ headers: [String: String]) -> String {
        switch status {
        case 401, 403: return "the repo is gated or private: set HF_TOKEN to a token with access"
        case 404: return headers["x-error-message"] ?? "no such repo, revision or file"
        default: return headers["x-error-message"] ?? ""
        }
    }
}

/// Why a download failed.
public enum HubError: Error, CustomStringConvertible, Equatable {
    /// The hub answered with an error status.
    case status(url: String, status: Int, hint: String)
    /// A file's content does not hash to the etag the hub gave.
    case checksum(file: String, expected: String, found: String)
    /// The transfer stopped before the end; the partial file is kept and the next try resumes it.
    case incomplete(file: String, path: String, have: Int, expected: Int)
    /// No answer at all (no network, refused, timed out).
    case transport(url: String, reason: String)

    public var description: String {
        switch self {
        case let .status(url, status, hint): return "\(url): HTTP \(status)" + (hint.isEmpty ? "" : " (\(hint))")
        case let .checksum(file, expected, found):
            return "\(file): the download hashes to \(found), expected \(expected) (the hub's etag); removed, try again"
        case let .incomplete(file, path, have, expected):
            return "\(file): the transfer stopped at \(have) of \(expected) bytes; \(path) is kept and the next run resumes it"
        case let .transport(url, reason): return "\(url): \(reason)"
        }
    }
}

/// Blocking HTTP over URLSession: small requests, and downloads streamed onto the end of a file.
enum HTTP {
    /// Status, headers (lowercased names) and body.
    static func request(_ url: String, method: String, headers: [String: String], followRedirects: Bool = true,
                        timeout: TimeInterval) throws -> (Int, [String: String], Data) {
        guard let u = URL(string: url) else { throw HubError.transport(url: url, reason: "not a URL") }
        var request = URLRequest(url: u, timeoutInterval: timeout)
        request.httpMethod = method
        for (k, v) in headers { request.setValue(v, forHTTPHeaderField: k) }
        let task = Transfer(sink: nil, followRedirects: followRedirects)
        try task.run(request)
        return (task.status, task.headers, task.body)
    }

    /// GETs `url` from byte `offset` (an HTTP range when > 0), appending what arrives to `path`
    /// as it arrives: an interrupted transfer leaves what it got.
    static func download(_ url: String, headers: [String: String], appendingTo path: String, from offset: Int, timeout: TimeInterval) throws {
        guard let u = URL(string: url), let handle = FileHandle(forWritingAtPath: path) else {
            throw HubError.transport(url: url, reason: "cannot write \(path)")
        }
        defer { try? handle.close() }
        try handle.truncate(atOffset: UInt64(offset))
        try handle.seekToEnd()
        var request = URLRequest(url: u, timeoutInterval: timeout)
        for (k, v) in headers { request.setValue(v, forHTTPHeaderField: k) }
        if offset > 0 { request.setValue("bytes=\(offset)-", forHTTPHeaderField: "Range") }
        let task = Transfer(sink: handle, followRedirects: true)
        // A server that ignores the range sends the whole file: start again from 0.
        task.onResponse = { status in if status == 200 && offset > 0 { try? handle.truncate(atOffset: 0) } }
        try task.run(request)
        guard task.status == 200 || task.status == 206 else {
            throw HubError.status(url: url, status: task.status, hint: HubDownloader.hint(task.status, task.headers))
        }
        if let failure = task.failure { throw HubError.transport(url: url, reason: failure) }
    }

    /// One request on its own session, waited for; the body goes to `sink` or memory.
    final class Transfer: NSObject, URLSessionDataDelegate, @unchecked Sendable {
        let sink: FileHandle?, followRedirects: Bool
        var status = 0, headers: [String: String] = [:], body = Data(), failure: String?
        var onResponse: ((Int) -> Void)?
        private let done = DispatchSemaphore(value: 0)

        init(sink: FileHandle?, followRedirects: Bool) { self.sink = sink; self.followRedirects = followRedirects }

        func run(_ request: URLRequest) throws {
            let session = URLSession(configuration: .ephemeral, delegate: self, delegateQueue: nil)
            defer { session.finishTasksAndInvalidate() }
            session.dataTask(with: request).resume()
            done.wait()
            if status == 0 { throw HubError.transport(url: request.url?.absoluteString ?? "", reason: failure ?? "no answer") }
        }

        func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive response: URLResponse,
                        completionHandler: @escaping (URLSession.ResponseDisposition) -> Void) {
            if let http = response as? HTTPURLResponse {
                status = http.statusCode
                for (k, v) in http.allHeaderFields { if let k = k as? String, let v = v as? String { headers[k.lowercased()] = v } }
                onResponse?(status)
            }
            completionHandler(.allow)
        }

        func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive data: Data) {
            if let sink, (200..<300).contains(status) { sink.write(data) } else { body.append(data) }
        }

        func urlSession(_ session: URLSession, task: URLSessionTask, willPerformHTTPRedirection response: HTTPURLResponse,
                        newRequest request: URLRequest, completionHandler: @escaping (URLRequest?) -> Void) {
            completionHandler(followRedirects ? request : nil)
        }

        func urlSession(_ session: URLSession, task: URLSessionTask, didCompleteWithError error: Error?) {
            if let error { failure = error.localizedDescription }
            done.signal()
        }
    }
}
