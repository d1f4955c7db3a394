import FinchKernels
import FinchIO
import FinchTokenizers
import FinchModels
import FinchGeneration
import FinchDistributed

/// One tokenized training row: named id sequences, as TRL's trainers name them
/// (`input_ids` + `labels` for SFT; `chosen_input_ids`, `chosen_labels`, `rejected_input_ids`,
/// `rejected_labels` for preference objectives). Labels follow transformers' unshifted
/// convention: labels[t] is the token at t, -100 where no loss is taken.
public struct Example: Sendable, Equatable {
    /// Position in its dataset; keys caches such as DPO's reference log-probs.
    public var id: Int
    /// Token-id sequences by TRL's field name; packed SFT rows also carry `segment_lengths`.
    public var fields: [String: [Int32]]
    /// The row's own fields as JSON text, for objectives that read more than tokens (GRPO hands
    /// the prompt and the other columns to its reward functions); empty for the others.
    public var columns: [String: String]

    /// An example at position `id` of its dataset.
    public init(id: Int, fields: [String: [Int32]], columns: [String: String] = [:]) {
        self.id = id
        self.fields = fields
        self.columns = columns
    }

    /// The sequence named `field`, or empty when the example lacks it.
    public subscript(field: String) -> [Int32] { fields[field] ?? [] }

    /// The longest sequence of the row, used for length grouping and batch shapes.
    public var length: Int { fields.filter { $0.key.hasSuffix("input_ids") }.map(\.value.count).max() ?? 0 }
}

/// The counts that normalise an objective's terms over a whole accumulation window.
public struct Normalisers: Sendable, Equatable {
    /// Tokens that carry a token-level loss term (SFT labels, ORPO's NLL tokens).
    public var tokens: Double = 0
    /// Preference pairs (ORPO's odds-ratio term, DPO, CPO, SimPO).
    public var pairs: Double = 0
    /// Completion tokens of chosen rows (the mean-logit metrics).
    public var chosenTokens: Double = 0
    /// Completion tokens of rejected rows (the mean-logit metrics).
    public var rejectedTokens: Double = 0
    /// Padded positions per half of a preference batch (ORPO's and CPO's mean-logit metrics).
    public var positions: Double = 0
    /// Unpaired examples (KTO's loss is their mean), and how many are desirable and undesirable.
    public var examples: Double = 0
    /// KTO's desirable examples.
    public var desirable: Double = 0
    /// KTO's undesirable examples.
    public var undesirable: Double = 0
    /// KTO's KL estimate over the window: the sum of policy minus reference log-probs of the
    /// mismatched prompt-completion pairs, and how many pairs.
    public var klSum: Double = 0
    /// The mismatched pairs of `klSum`.
    public var klCount: Double = 0
    /// Other counts and sums by name (GRPO's completions, tokens and reward sums), added key by
    /// key; every rank must give the same keys.
    public var named: [String: Double] = [:]

    /// Counts given directly; objectives build them with `normalisers(of:)`.
    public init(tokens: Double = 0, pairs: Double = 0, chosenTokens: Double = 0, rejectedTokens: Double = 0, positions: Double = 0,
                examples: Double = 0, desirable: Double = 0, undesirable: Double = 0, klSum: Double = 0, klCount: Double = 0,
                named: [String: Double] = [:]) {
        self.tokens = tokens; self.pairs = pairs; self.chosenTokens = chosenTokens; self.rejectedTokens = rejectedTokens
        self.positions = positions
        self.examples = examples; self.desirable = desirable; self.undesirable = undesirable
        self.klSum = klSum; self.klCount = klCount
        self.named = named
    }

    /// Field-by-field sum, to total the counts of a window's micro-batches.
    public static func + (a: Normalisers, b: Normalisers) -> Normalisers {
        Normalisers(tokens: a.tokens + b.tokens, pairs: a.pairs + b.pairs, chosenTokens: a.chosenTokens + b.chosenTokens,
                    rejectedTokens: a.rejectedTokens + b.rejectedTokens, positions: a.positions + b.positions,
                    examples: a.examples + b.examples, desirable: a.desirable + b.desirable, undesirable: a.undesirable + b.undesirable,
                    klSum: a.klSum + b.klSum, klCount: a.klCount + b.klCount,
                    named: a.named.merging(b.named, uniquingKeysWith: +))
    }

    /// The count or sum named `key`, 0 when absent.
    public subscript(key: String) -> Double { named[key] ?? 0 }
}

/// A micro-batch of sequences turned into model input: right-padded rows and next-token targets.
struct SequenceBatch {
    let tokens: TokenBatch
    /// Next-token targets per position from `labels` (-1 where ignored).
    let targets: [Int32]

    /// `rows` of ids with their labels (same lengths), padded with `padId` to the longest.
    init(rows: [[Int32]], labels: [[Int32]], padId: Int32 = 0) {
        let seq = rows.map(\.count).max() ?? 0
        var padded: [[Int]] = [], flatLabels: [Int32] = []
        for (row, label) in zip(rows, labels) {
            padded.append(row.map(Int.init))
            flatLabels += label + [Int32](repeating: -100, count: seq - label.count)
        }
        tokens = TokenBatch(rows: padded, padId: Int(padId))
        targets = TokenBatch.shiftedTargets(labels: flatLabels, batch: rows.count, seq: seq)
    }

    /// Sum over positions of `values` where the row's target is scored, per row.
    func rowSums(_ values: [Float], where targets: [Int32]) -> [Double] {
        (0..<tokens.batch).map { b in
            var s = 0.0
            for t in 0..<tokens.seq where targets[b * tokens.seq + t] >= 0 { s += Double(values[b * tokens.seq + t]) }
            return s
        }
    }

    /// Scored positions per row.
    func rowCounts(_ targets: [Int32]) -> [Double] {
        (0..<tokens.batch).map { b in Double((0..<tokens.seq).filter { targets[b * tokens.seq + $0] >= 0 }.count) }
    }
}
