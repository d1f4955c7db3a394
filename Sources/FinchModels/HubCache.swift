import Foundation
import FinchIO

/// Models named by their Hugging Face repo id (`HuggingFaceTB/SmolLM2-135M-Instruct`), found
/// offline in the Hugging Face cache as `huggingface_hub` lays it out, so files that Python tools
/// downloaded serve Finch too:
///
///     <cache>/models--<org>--<name>/refs/<revision>      the commit a branch or tag points at
///     <cache>/models--<org>--<name>/snapshots/<commit>/  the files (links into blobs/)
///
/// The cache is `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`. A repo or
/// revision missing from the cache is downloaded into it (`HubDownloader`) unless `HF_HUB_OFFLINE`
/// is set; a failed download is an error that says where Finch looked and why the hub did not answer.
public enum HubCache {
    /// The cache folder for `environment`.
    public static func directory(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let hub = environment["HF_HUB_CACHE"], !hub.isEmpty { return hub }
        if let home = environment["HF_HOME"], !home.isEmpty { return (home as NSString).appendingPathComponent("hub") }
        let user = environment["HOME"] ?? NSHomeDirectory()
        return (user as NSString).appendingPathComponent(".cache/huggingface/hub")
    }

    /// Whether `name` has the form of a repo id, `owner/name` (letters, digits, `-`, `_`, `.`).
    public static func isRepoID(_ name: String) -> Bool {
        let parts = name.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2 else { return false }
        return parts.allSatisfy { part in
            !part.isEmpty && part.first != "." && part.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }
        }
    }

    /// `model` itself when it names a file or folder; else, for a repo id, its snapshot folder in
    /// the cache at `revision` (a branch or tag under refs/, or a commit; default `main`, else the
    /// newest snapshot). A snapshot without config.json but with one .gguf file resolves to that file.
    public static func resolve(_ model: String, revision: String? = nil,
                               environment: [String: String] = ProcessInfo.processInfo.environment) throws -> String {
        let files = FileManager.default
        if files.fileExists(atPath: model) || !isRepoID(model) {
            if let revision { throw LoadError.unsupported(path: model, what: "--revision for a local path", found: revision, supported: ["a repo id"]) }
            return model
        }
        do {
            return try cached(model, revision: revision, environment: environment)
        } catch let missing as LoadError {
            let offline = ["1", "true", "yes", "on"].contains((environment["HF_HUB_OFFLINE"] ?? "").lowercased())
            guard !offline else { throw missing }
            let downloader = HubDownloader(environment: environment)
            do {
                try downloader.snapshot(repo: model, revision: revision ?? "main")
            } catch let failure as HubError {
                throw LoadError.unsupported(path: model, what: "model location",
                                            found: "a repo id not in the Hugging Face cache \(downloader.cache), and the download failed: \(failure)",
                                            supported: ["a folder or .gguf file", "a repo id in the cache (HF_HUB_CACHE, HF_HOME)", "a reachable hub (HF_ENDPOINT, HF_TOKEN)"])
            }
            return try cached(model, revision: revision, environment: environment)
        }
    }

    /// `resolve` without downloading: the cached snapshot, or a `LoadError`.
    static func cached(_ model: String, revision: String?, environment: [String: String]) throws -> String {
        let files = FileManager.default
        let cache = directory(environment: environment)
        let repo = (cache as NSString).appendingPathComponent("models--" + model.replacingOccurrences(of: "/", with: "--"))
        guard files.fileExists(atPath: repo) else {
            throw LoadError.unsupported(path: model, what: "model location", found: "a repo id not in the Hugging Face cache \(cache)",
                                        supported: ["a folder or .gguf file", "a repo id downloaded into the cache (huggingface-cli download \(model))"])
        }
        let snapshots = (repo as NSString).appendingPathComponent("snapshots")
        let wanted = revision ?? "main"
        // A branch may hold "/" (refs/pr/1), but never a step out of the repo's folder.
        if wanted.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }) || wanted.hasPrefix("/") {
            throw LoadError.malformed(path: model, field: "revision", found: "'\(wanted)'", expected: "a branch, tag or commit name")
        }
        let refs = (repo as NSString).appendingPathComponent("refs")
        var commit: String?
        if let text = try? String(contentsOfFile: (refs as NSString).appendingPathComponent(wanted), encoding: .utf8) {
            commit = text.trimmingCharacters(in: .whitespacesAndNewlines)
        } else if files.fileExists(atPath: (snapshots as NSString).appendingPathComponent(wanted)) {
            commit = wanted   // a commit given directly
        } else if revision == nil {
            // No refs/main: the snapshot written last.
            let all = (try? files.contentsOfDirectory(atPath: snapshots)) ?? []
            commit = all.max { a, b in
                let date = { (name: String) in
                    ((try? files.attributesOfItem(atPath: (snapshots as NSString).appendingPathComponent(name)))?[.modificationDate] as? Date) ?? .distantPast
                }
                return (date(a), a) < (date(b), b)
            }
        }
        guard let commit, !commit.isEmpty, !commit.contains("/"), !commit.hasPrefix(".") else {
            throw LoadError.unsupported(path: repo, what: "revision", found: wanted,
                                        supported: ((try? files.contentsOfDirectory(atPath: refs)) ?? []).sorted() + ["a commit under snapshots/"])
        }
        let snapshot = (snapshots as NSString).appendingPathComponent(commit)
        guard files.fileExists(atPath: snapshot) else { throw LoadError.fileNotFound(path: snapshot) }
        if files.fileExists(atPath: (snapshot as NSString).appendingPathComponent("config.json")) { return snapshot }
        let ggufs = ((try? files.contentsOfDirectory(atPath: snapshot)) ?? []).filter { $0.lowercased().hasSuffix(".gguf") }
        if ggufs.count == 1 { return (snapshot as NSString).appendingPathComponent(ggufs[0]) }
        throw LoadError.malformed(path: snapshot, field: "files", found: ggufs.isEmpty ? "no config.json and no .gguf" : "\(ggufs.count) .gguf files",
                                  expected: "config.json with safetensors, or one .gguf file (give its path)")
    }
}
