import XCTest
import FinchTestSupport
@testable import FinchKernels
@testable import FinchIO
@testable import FinchTokenizers
@testable import FinchModels
@testable import FinchGeneration

final class GenerationTests: XCTestCase {
    let directories = ["llama_tied", "qwen2_bias", "qwen3_qknorm"].map { TestSupport.fixtures.appendingPathComponent("parity/\($0)").path }

    /// Decoding with the KV cache gives the logits of a full forward over the same tokens.
    func testCachedGreedyDecodingMatchesFullForwards() throws {
        for directory in directories {
            let model = try Transformer(files: ModelFiles.open(directory))
            let generator = Generator(model: model)
            generator.prefillChunk = 3   // the 7-token prompt runs in three chunks
            let prompt = [1, 17, 42, 9, 88, 3, 60]
            let result = generator.generate(prompt: prompt, sampling: SamplingSettings(), stop: StopRules(maxNewTokens: 8, eosTokenIds: []))
            XCTAssertEqual(result.tokens.count, 8)
            var sequence = prompt
            for token in result.tokens {
                let logits = model.logits(TokenBatch(rows: [sequence]))
                let last = Array(logits.suffix(model.config.vocabSize))
                XCTAssertEqual(token, last.indices.max { last[$0] < last[$1] }!, directory)
                sequence.append(token)
            }
        }
    }

    func testDecodeLogitsMatchForwardLogits() throws {
        let model = try Transformer(files: ModelFiles.open(directories[1]))
        let tokens = [5, 9, 17, 3, 44, 2, 8, 100, 7]
        let full = model.logits(TokenBatch(rows: [tokens]))
        let cache = KVCache(config: model.config, batch: 1, capacity: 16)
        _ = model.decode(TokenBatch(batch: 1, seq: 4, ids: tokens.prefix(4).map(Int32.init), positions: [0, 1, 2, 3]), cache: cache)
        var last: [Float] = []
        for (i, t) in tokens.dropFirst(4).enumerated() {
            last = model.decode(TokenBatch(batch: 1, seq: 1, ids: [Int32(t)], positions: [Int32(4 + i)]), cache: cache)
        }
        XCTAssertLessThan(TestSupport.maxRelativeError(last, Array(full.suffix(model.config.vocabSize))), 1e-5)
    }

    func testSamplingRepeatsForASeedAndTopKOneIsGreedy() throws {
        let model = try Transformer(files: ModelFiles.open(directories[0]))
        let generator = Generator(model: model)
        let stop = StopRules(maxNewTokens: 12, eosTokenIds: [])
        let sampled = SamplingSettings(temperature: 1, topP: 0.9, seed: 5)
        let a = generator.generate(prompt: [1, 2, 3], sampling: sampled, stop: stop).tokens
        XCTAssertEqual(a, generator.generate(prompt: [1, 2, 3], sampling: sampled, stop: stop).tokens)
        var other = sampled
        other.seed = 6
        XCTAssertNotEqual(a, generator.generate(prompt: [1, 2, 3], sampling: other, stop: stop).tokens)
        let greedy = generator.generate(prompt: [1, 2, 3], sampling: SamplingSettings(), stop: stop).tokens
        XCTAssertEqual(generator.generate(prompt: [1, 2, 3], sampling: SamplingSettings(temperature: 0.7, topK: 1, seed: 9), stop: stop).tokens, greedy)
    }

    /// At temperature 1 the sampler draws each token with its softmax probability.
    func testTokenFrequenciesFollowTheSoftmax() {
        let logits: [Float] = [2, 1, 0.5, 0, -1]
        let z = logits.map { exp(Double($0)) }.reduce(0, +)
        var sampler = Sampler(SamplingSettings(temperature: 1, seed: 3))
        var counts = [Int](repeating: 0, count: logits.count)
        let draws = 20000
        for _ in 0..<draws { counts[logits.withUnsafeBufferPointer { sampler.next(logits: $0, seen: [:]) }] += 1 }
        for i in logits.indices {
            let p = exp(Double(logits[i])) / z
            let sd = (p * (1 - p) / Double(draws)).squareRoot()
            XCTAssertEqual(Double(counts[i]) / Double(draws), p, accuracy: 5 * sd, "token \(i)")
        }
    }

    /// top-k, min-p and top-p keep exactly the tokens a full descending sort keeps (the sampler
    /// sorts only those above a threshold, and selects the top k without sorting).
    func testKeptTokensEqualAFullSortsPrefix() {
        var rng = FinchRandom(seed: 17)
        for trial in 0..<60 {
            let n = [5, 300, 4000][trial % 3]
            let spread = Float([1, 4, 12][trial % 3])
            let probs = (0..<n).map { _ in expf((rng.nextFloat() * 2 - 1) * spread) }
            let settings = SamplingSettings(temperature: 1, topK: [0, 3, 50, n + 1][trial % 4], topP: [1, 0.9, 0.5, 0.99][(trial / 4) % 4],
                                            minP: [0, 0.05][(trial / 16) % 2])
            // The naive rule: sort all, cut top-k, renormalise, cut min-p and top-p.
            var order = Array(0..<n).sorted { probs[$0] > probs[$1] || probs[$0] == probs[$1] && $0 < $1 }
            if settings.topK > 0 && settings.topK < n { order = Array(order.prefix(settings.topK)) }
            let mass = order.reduce(Float(0)) { $0 + probs[$1] }
            var keep = order.count
            if settings.minP > 0 { keep = min(keep, max(1, order.firstIndex { probs[$0] < settings.minP * probs[order[0]] } ?? keep)) }
            if settings.topP < 1 {
                var c: Float = 0
                for i in 0..<keep { c += probs[order[i]]; if c >= settings.topP * mass { keep = i + 1; break } }
            }
            XCTAssertEqual(Set(Sampler.kept(probs, settings: settings)), Set(order.prefix(keep)), "trial \(trial) \(settings)")
        }
    }

    func testEOSStopsAndMaxNewTokensZeroGivesNothing() throws {
        let model = try Transformer(files: ModelFiles.open(directories[0]))
        let generator = Generator(model: model)
        let first = generator.generate(prompt: [1, 2, 3], sampling: SamplingSettings(), stop: StopRules(maxNewTokens: 1, eosTokenIds: [])).tokens[0]
        let r = generator.generate(prompt: [1, 2, 3], sampling: SamplingSettings(), stop: StopRules(maxNewTokens: 5, eosTokenIds: [first]))
        XCTAssertEqual(r.tokens, [first])
        XCTAssertEqual(r.finishReason, "eos")
        XCTAssertEqual(generator.generate(prompt: [1, 2, 3], sampling: SamplingSettings(), stop: StopRules(maxNewTokens: 0, eosTokenIds: [])).tokens, [])
    }

    /// Prompts of different lengths decoded in one left-padded batch give what each gives alone,
    /// with prefill chunks that cut through the padding, for every decoder variant.
    func testBatchedGenerationWithLeftPaddingMatchesOneAtATime() throws {
        let prompts = [[1, 17, 42, 9, 88, 3, 60], [5, 2], [70, 8, 31, 4]]
        for directory in directories {
            let generator = Generator(model: try Transformer(files: ModelFiles.open(directory)))
            generator.prefillChunk = 3
            let stop = StopRules(maxNewTokens: 6, eosTokenIds: [])
            let batched = generator.generate(prompts: prompts, sampling: SamplingSettings(), stop: stop)
            for (r, prompt) in prompts.enumerated() {
                XCTAssertEqual(batched[r].tokens, generator.generate(prompt: prompt, sampling: SamplingSettings(), stop: stop).tokens,
                               "\(directory) row \(r)")
            }
            // Sampling: row r draws with seed + r, whatever the batch holds.
            let sampled = SamplingSettings(temperature: 1, seed: 8)
            let rows = generator.generate(prompts: prompts, sampling: sampled, stop: stop)
            var second = sampled
            second.seed = 9
            XCTAssertEqual(rows[1].tokens, generator.generate(prompt: prompts[1], sampling: second, stop: stop).tokens, directory)
        }
    }

    /// A row that meets EOS stops with reason "eos" while the others go on to the length limit.
    func testBatchedRowsStopOnTheirOwn() throws {
        let generator = Generator(model: try Transformer(files: ModelFiles.open(directories[0])))
        let greedy = SamplingSettings()
        let first = generator.generate(prompt: [1, 2, 3], sampling: greedy, stop: StopRules(maxNewTokens: 1, eosTokenIds: [])).tokens[0]
        let alone = generator.generate(prompt: [9, 4], sampling: greedy, stop: StopRules(maxNewTokens: 5, eosTokenIds: [])).tokens
        try XCTSkipIf(alone.contains(first), "the other row would stop too")
        let results = generator.generate(prompts: [[1, 2, 3], [9, 4]], sampling: greedy, stop: StopRules(maxNewTokens: 5, eosTokenIds: [first]))
        XCTAssertEqual(results[0].tokens, [first])
        XCTAssertEqual(results[0].finishReason, "eos")
        XCTAssertEqual(results[1].tokens, alone)
        XCTAssertEqual(results[1].finishReason, "length")
    }
}
