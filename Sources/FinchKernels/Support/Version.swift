import Foundation

/// Facts about the Finch build, recorded in each run's run.json.
public enum Finch {
    /// Finch's semantic version.
    public static let version = "0.1.0"

    /// The commit of the Finch checkout the running binary was built in, when it can be found
    /// (the binary lives under the checkout's .build folder).
    public static var gitCommit: String? {
        let executable = URL(fileURLWithPath: CommandLine.arguments.first ?? "").resolvingSymlinksInPath().deletingLastPathComponent()
        var directory = executable
        for _ in 0..<6 {
            let head = directory.appendingPathComponent(".git/HEAD")
            if let text = try? String(contentsOf: head, encoding: .utf8) {
                let ref = text.trimmingCharacters(in: .whitespacesAndNewlines)
                if ref.hasPrefix("ref: ") {
                    let refPath = directory.appendingPathComponent(".git/" + ref.dropFirst(5))
                    if let commit = try? String(contentsOf: refPath, encoding: .utf8) { return commit.trimmingCharacters(in: .whitespacesAndNewlines) }
                    if let packed = try? String(contentsOf: directory.appendingPathComponent(".git/packed-refs"), encoding: .utf8),
                       let line = packed.split(separator: "\n").first(where: { $0.hasSuffix(" " + ref.dropFirst(5)) }) {
                        return String(line.prefix(40))
                    }
                    return nil
                }
                return ref
            }
            directory = directory.deletingLastPathComponent()
        }
        return nil
    }
}
