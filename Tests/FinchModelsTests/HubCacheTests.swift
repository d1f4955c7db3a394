import XCTest
import FinchTestSupport
@testable import FinchIO
@testable import FinchModels

/// Repo ids resolved offline in a cache laid out as huggingface_hub lays it out: refs, snapshots
/// whose files link into blobs, HF_HUB_CACHE / HF_HOME, revisions, and the errors.
final class HubCacheTests: TemporaryDirectoryTestCase {
    let commitA = String(repeating: "a", count: 40), commitB = String(repeating: "b", count: 40)

    /// models--finch-test--tiny with snapshot A (refs/main) and B (refs/v2), each the llama_tied
    /// fixture as links into blobs/, as huggingface_hub stores them.
    func makeCache(root: URL, refs: Bool = true) throws -> URL {
        let files = FileManager.default
        let repo = root.appendingPathComponent("models--finch-test--tiny")
        let source = TestSupport.fixtures.appendingPathComponent("parity/llama_tied")
        try files.createDirectory(at: repo.appendingPathComponent("blobs"), withIntermediateDirectories: true)
        for (commit, ref) in [(commitA, "main"), (commitB, "v2")] {
            let snapshot = repo.appendingPathComponent("snapshots/\(commit)")
            try files.createDirectory(at: snapshot, withIntermediateDirectories: true)
            for name in ["config.json", "model.safetensors"] {
                let blob = repo.appendingPathComponent("blobs/\(commit.prefix(8))-\(name)")
                if !files.fileExists(atPath: blob.path) { try files.copyItem(at: source.appendingPathComponent(name), to: blob) }
                try files.createSymbolicLink(atPath: snapshot.appendingPathComponent(name).path, withDestinationPath: "../../blobs/\(blob.lastPathComponent)")
            }
            if refs {
                try files.createDirectory(at: repo.appendingPathComponent("refs"), withIntermediateDirectories: true)
                try commit.write(to: repo.appendingPathComponent("refs/\(ref)"), atomically: true, encoding: .utf8)
            }
        }
        return repo
    }

    func testRepoIDsResolveToTheirSnapshots() throws {
        let cache = temporary.appendingPathComponent("hub")
        let repo = try makeCache(root: cache)
        let environment = ["HF_HUB_CACHE": cache.path, "HF_HUB_OFFLINE": "1"]   // downloading: HubDownloadTests
        XCTAssertEqual(HubCache.directory(environment: ["HF_HOME": "/x/hf"]), "/x/hf/hub")
        XCTAssertEqual(HubCache.directory(environment: ["HOME": "/home/u"]), "/home/u/.cache/huggingface/hub")
        XCTAssertEqual(HubCache.directory(environment: environment), cache.path, "HF_HUB_CACHE wins")

        let main = try HubCache.resolve("finch-test/tiny", environment: environment)
        XCTAssertEqual(main, repo.appendingPathComponent("snapshots/\(commitA)").path)
        XCTAssertEqual(try ModelFiles.open(main).config.modelType, "llama", "the linked files load")
        XCTAssertEqual(try HubCache.resolve("finch-test/tiny", revision: "v2", environment: environment),
                       repo.appendingPathComponent("snapshots/\(commitB)").path)
        XCTAssertEqual(try HubCache.resolve("finch-test/tiny", revision: commitB, environment: environment),
                       repo.appendingPathComponent("snapshots/\(commitB)").path, "a commit given directly")
        // A path that exists is a path, whatever it looks like.
        let local = TestSupport.fixtures.appendingPathComponent("parity/llama_tied").path
        XCTAssertEqual(try HubCache.resolve(local, environment: environment), local)
        XCTAssertFalse(HubCache.isRepoID("a/b/c"))
        XCTAssertFalse(HubCache.isRepoID("../x"))
        XCTAssertTrue(HubCache.isRepoID("HuggingFaceTB/SmolLM2-135M-Instruct"))

        XCTAssertThrowsError(try HubCache.resolve("finch-test/absent", environment: environment)) { error in
            XCTAssertTrue("\(error)".contains(cache.path) && "\(error)".contains("huggingface-cli download finch-test/absent"), "\(error)")
        }
        XCTAssertThrowsError(try HubCache.resolve("finch-test/tiny", revision: "v9", environment: environment)) { error in
            XCTAssertTrue("\(error)".contains("v9") && "\(error)".contains("main") && "\(error)".contains("v2"), "\(error)")
        }
        XCTAssertThrowsError(try HubCache.resolve(local, revision: "v2", environment: environment))
        XCTAssertThrowsError(try HubCache.resolve("finch-test/tiny", revision: "../../etc", environment: environment)) { error in
            XCTAssertTrue("\(error)".contains("revision"), "\(error)")
        }
    }

    /// Without refs/main (a cache filled by hand or by another tool), the newest snapshot.
    func testWithoutRefsTheNewestSnapshot() throws {
        let cache = temporary.appendingPathComponent("hub")
        let repo = try makeCache(root: cache, refs: false)
        let old = Date(timeIntervalSinceNow: -3600)
        try FileManager.default.setAttributes([.modificationDate: old], ofItemAtPath: repo.appendingPathComponent("snapshots/\(commitA)").path)
        XCTAssertEqual(try HubCache.resolve("finch-test/tiny", environment: ["HF_HUB_CACHE": cache.path]),
                       repo.appendingPathComponent("snapshots/\(commitB)").path)
    }
}
