import Foundation

// finch-fuzz: feeds `finch` mutated model files, tokenizers, chat templates, training data and
// YAML configs, each case in its own process under an address-space limit and a timeout, and
// counts how each ended. Crashes and hangs are saved (the mutated file, the command, stderr) for
// a regression fixture. Deterministic: case K of seed S is the same mutation on every machine.
//
//   finch-fuzz [--cases 5000] [--seed 1] [--jobs 2] [--timeout 20] [--memory-gib 4]
//              [--only safetensors,config,tokenizer,template,gguf,data,yaml]
//              [--seeds Tests/FinchTestSupport/Fixtures/fuzz/seed] [--work DIR] [--out DIR]
//              [--finch PATH] [--case K]   (--case: run that one case, keep its folder, print it)

struct Options {
    var cases = 5000, seed: UInt64 = 1, jobs = 2, timeout = 20.0, memoryGiB = 4
    var only = Target.allCases
    var seeds = "Tests/FinchTestSupport/Fixtures/fuzz/seed"
    var work = FileManager.default.temporaryDirectory.appendingPathComponent("finch-fuzz-\(getpid())").path
    var out: String?
    var finch: String?
    var single: Int?

    init(_ args: [String]) throws {
        var i = 0
        func value() throws -> String {
            i += 1
            guard i < args.count else { throw UsageError(message: "\(args[i - 1]) needs a value") }
            return args[i]
        }
        func int(_ s: String, _ flag: String) throws -> Int {
            guard let v = Int(s), v >= 0 else { throw UsageError(message: "\(flag): expected a non-negative integer, found '\(s)'") }
            return v
        }
        while i < args.count {
            let flag = args[i]
            switch flag {
            case "--cases": cases = try int(try value(), flag)
            case "--seed": seed = UInt64(try int(try value(), flag))
            case "--jobs": jobs = max(1, try int(try value(), flag))
            case "--timeout": timeout = Double(try int(try value(), flag))
            case "--memory-gib": memoryGiB = max(1, try int(try value(), flag))
            case "--only":
                only = try value().split(separator: ",").map { name in
                    guard let t = Target(rawValue: String(name)) else {
                        throw UsageError(message: "--only: unknown target '\(name)'; expected \(Target.allCases.map(\.rawValue).joined(separator: ", "))")
                    }
                    return t
                }
            case "--seeds": seeds = try value()
            case "--work": work = try value()
            case "--out": out = try value()
            case "--finch": finch = try value()
            case "--case": single = try int(try value(), flag)
            case "-h", "--help":
                print("usage: finch-fuzz [--cases N] [--seed S] [--jobs J] [--timeout SEC] [--memory-gib G] [--only T,...] [--seeds DIR] [--work DIR] [--out DIR] [--finch PATH] [--case K]")
                exit(0)
            default: throw UsageError(message: "unknown option \(flag)")
            }
            i += 1
        }
    }
}

struct UsageError: Error, CustomStringConvertible { let message: String; var description: String { message } }

struct Tally { var counts: [Runner.Outcome: Int] = [:]; var cases = 0; var seconds = 0.0 }

func main() -> Int32 {
    signal(SIGPIPE, SIG_IGN)   // a finch that exits before reading its stdin must not end the harness
    let options: Options
    do { options = try Options(Array(CommandLine.arguments.dropFirst())) } catch {
        FileHandle.standardError.write(Data("finch-fuzz: \(error)\n".utf8))
        return 2
    }
    let selfURL = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
    let finch = options.finch.map { URL(fileURLWithPath: $0) } ?? selfURL.deletingLastPathComponent().appendingPathComponent("finch")
    guard FileManager.default.isExecutableFile(atPath: finch.path) else {
        FileHandle.standardError.write(Data("finch-fuzz: no finch executable at \(finch.path) (give --finch PATH)\n".utf8))
        return 2
    }
    let work = URL(fileURLWithPath: options.work)
    let seeds: Seeds
    do {
        seeds = try Seeds.make(at: work.appendingPathComponent("seeds"), from: URL(fileURLWithPath: options.seeds), finch: finch)
    } catch {
        FileHandle.standardError.write(Data("finch-fuzz: making the seed inputs: \(error)\n".utf8))
        return 2
    }
    // The unmutated inputs must be accepted, or every case would only measure one broken seed.
    for model in [seeds.model, seeds.gguf, seeds.ggufQ8] {
        let check = Runner.run(finch, ["perplexity", "--model", model.path, "--data", seeds.file("eval.txt").path],
                               timeout: options.timeout, memoryGiB: options.memoryGiB)
        guard check.outcome == .accepted else {
            FileHandle.standardError.write(Data("finch-fuzz: the seed \(model.lastPathComponent) is not accepted: \(check.stderr)\n".utf8))
            return 2
        }
    }
    defer { if options.single == nil { try? FileManager.default.removeItem(at: work) } }

    let indices = options.single.map { [$0] } ?? Array(0..<options.cases)
    /// What the workers share, under `lock`.
    final class Shared: @unchecked Sendable {
        let lock = NSLock()
        var next = 0, done = 0
        var tallies: [Target: Tally] = [:]
        var findings: [String] = []
    }
    let shared = Shared(), lock = shared.lock
    let started = Date()

    DispatchQueue.concurrentPerform(iterations: min(options.jobs, indices.count)) { worker in
        while true {
            lock.lock()
            guard shared.next < indices.count else { lock.unlock(); return }
            let k = indices[shared.next]
            shared.next += 1
            lock.unlock()
            let target = options.only[k % options.only.count]
            var rng = SplitMix(seed: options.seed &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(k) &* 0xD1B5_4A32_D192_ED03)
            let dir = work.appendingPathComponent("case-\(worker)")
            try? FileManager.default.removeItem(at: dir)
            let result: Runner.Result, prepared: Target.Case
            do {
                try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
                prepared = try target.prepare(dir, seeds: seeds, rng: &rng)
                result = Runner.run(finch, prepared.arguments, stdin: prepared.stdin, timeout: options.timeout,
                                    memoryGiB: options.memoryGiB, directory: dir)
            } catch {
                FileHandle.standardError.write(Data("finch-fuzz: case \(k): \(error)\n".utf8))
                continue
            }
            lock.lock()
            shared.done += 1
            if shared.done % 500 == 0 && options.single == nil {
                FileHandle.standardError.write(Data("finch-fuzz: \(shared.done)/\(indices.count) cases, \(shared.findings.count) findings, \(Int(Date().timeIntervalSince(started))) s\n".utf8))
            }
            shared.tallies[target, default: Tally()].cases += 1
            shared.tallies[target, default: Tally()].counts[result.outcome, default: 0] += 1
            shared.tallies[target, default: Tally()].seconds += result.seconds
            lock.unlock()
            let line = "case \(k) (\(target.rawValue), \(prepared.mutatedFile)): \(result.outcome.rawValue), exit \(result.status), \(String(format: "%.1f", result.seconds)) s: finch \(prepared.arguments.joined(separator: " "))"
            if options.single != nil {
                print(line)
                print("folder: \(dir.path)")
                print(result.stderr)
            }
            if result.outcome == .crash || result.outcome == .hang || result.outcome == .silentError {
                let lastLines = result.stderr.split(separator: "\n").suffix(3).joined(separator: " | ")
                lock.lock()
                shared.findings.append(line + "\n    " + lastLines)
                lock.unlock()
                if let out = options.out {
                    let saved = URL(fileURLWithPath: out).appendingPathComponent("\(target.rawValue)-case-\(k)")
                    try? FileManager.default.removeItem(at: saved)
                    try? FileManager.default.createDirectory(at: saved.deletingLastPathComponent(), withIntermediateDirectories: true)
                    try? FileManager.default.copyItem(at: dir, to: saved)
                    try? Data((line + "\n\n" + result.stderr).utf8).write(to: saved.appendingPathComponent("finding.txt"))
                }
            }
        }
    }

    // The table: per target, how the cases ended.
    let outcomes = Runner.Outcome.allCases
    print("| target | cases | " + outcomes.map(\.rawValue).joined(separator: " | ") + " | s/case |")
    print("|---|---:|" + outcomes.map { _ in "---:" }.joined(separator: "|") + "|---:|")
    var total = Tally()
    for target in options.only {
        guard let t = shared.tallies[target] else { continue }
        print("| \(target.rawValue) | \(t.cases) | " + outcomes.map { "\(t.counts[$0] ?? 0)" }.joined(separator: " | ")
              + " | \(String(format: "%.2f", t.seconds / Double(max(t.cases, 1)))) |")
        total.cases += t.cases
        for o in outcomes { total.counts[o, default: 0] += t.counts[o] ?? 0 }
    }
    print("| all | \(total.cases) | " + outcomes.map { "\(total.counts[$0] ?? 0)" }.joined(separator: " | ") + " | |")
    print("seed \(options.seed), \(String(format: "%.0f", Date().timeIntervalSince(started))) s, limits: \(options.memoryGiB) GiB address space, \(Int(options.timeout)) s per case")
    for f in shared.findings.sorted() { print(f) }
    let bad = (total.counts[.crash] ?? 0) + (total.counts[.hang] ?? 0) + (total.counts[.silentError] ?? 0)
    return bad == 0 ? 0 : 1
}

exit(main())
