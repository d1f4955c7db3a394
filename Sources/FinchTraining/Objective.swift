import FinchKernels
import FinchIO
import FinchTokenizers
import FinchModels
import FinchGeneration
import FinchDistributed

/// A training objective. The training loop knows nothing of any particular loss: an objective
/// says which fields it needs from an example, which counts normalise its terms, and how one
/// micro-batch adds its share of the window's gradient.
///
/// Exact accumulation (DESIGN.md): the loop sums `normalisers(of:)` over every micro-batch of a
/// window before the first backward, then each micro-batch contributes
/// `sum of its terms / window count`, so the window's update equals one big batch's.
public protocol Objective: AnyObject {
    /// As TRL names the method: "sft", "orpo", "dpo", "simpo", "cpo".
    var name: String { get }
    /// Fields every example must carry.
    var requiredFields: [String] { get }
    /// Counts of this micro-batch's loss terms.
    func normalisers(of examples: [Example]) -> Normalisers
    /// Forward and backward of one micro-batch: adds its gradients (scaled by the window's
    /// normalisers) to the model's parameter gradients and returns its share of the loss and of
    /// each metric, so that summing the shares over a window gives the window's values.
    func accumulate(_ examples: [Example], model: Transformer, window: Normalisers) throws -> [String: Double]
    /// The loss and metrics of a micro-batch without gradients (evaluation), as shares of `window`.
    func evaluate(_ examples: [Example], model: Transformer, window: Normalisers) throws -> [String: Double]
    /// Whether TRL's trainer for this objective logs `num_tokens` (the running count of real tokens).
    var logsTokenCount: Bool { get }
    /// Counts that need the model and the whole window before the first backward (KTO's KL
    /// estimate, from mismatched pairs across the window; GRPO generates and scores its
    /// completions here): the part of this rank's examples `mine`, with `window` every example
    /// of the window in the trainer's order. Summed over ranks with `normalisers(of:)`. None for
    /// most objectives.
    func windowNormalisers(_ window: [Example], mine: [Example], model: Transformer, pass: WindowPass) throws -> Normalisers
    /// Optimizer steps taken on each window before the next (GRPO's `num_iterations`); 1 for most.
    var iterationsPerWindow: Int { get }
    /// Metrics of the whole window, after its last micro-batch (GRPO's rewards and completion
    /// lengths); summed over ranks like the micro-batches' shares.
    func finishWindow(_ pass: WindowPass) -> [String: Double]
    /// Tokens a step on `window` processed, for TRL's `num_tokens` and the speed shown.
    func tokenCount(of window: [Example]) -> Int
}

/// An objective that can say, before it runs, which token batches `accumulate` runs training
/// forwards over for some examples, in its order: a mixture of experts' load-balancing loss is
/// taken over a whole window, so a trainer accumulating micro-batches counts the router's
/// choices on these first. (GRPO cannot: it samples first.)
package protocol NamesItsTrainingBatches {
    func trainingBatches(_ examples: [Example], model: Transformer) -> [TokenBatch]
}

/// Which pass over a window the trainer is making.
public enum WindowPass: Sendable, Equatable {
    /// Optimizer step `step` of the run (0-based), the `iteration`-th on this window (0-based;
    /// see `Objective.iterationsPerWindow`).
    case training(step: Int, iteration: Int)
    /// The evaluation after `step` optimizer steps.
    case evaluation(step: Int)
}

extension Objective {
    /// No window-level counts.
    public func windowNormalisers(_ window: [Example], mine: [Example], model: Transformer, pass: WindowPass) throws -> Normalisers { Normalisers() }
    /// One step per window.
    public var iterationsPerWindow: Int { 1 }
    /// No window-level metrics.
    public func finishWindow(_ pass: WindowPass) -> [String: Double] { [:] }

    /// The tokens of the examples' sequences.
    public func tokenCount(of window: [Example]) -> Int {
        window.reduce(0) { total, e in total + ["input_ids", "chosen_input_ids", "rejected_input_ids"].reduce(0) { $0 + e[$1].count } }
    }
}

/// Why an objective or trainer refused its input: an example without a needed field, an unknown
/// `--method`, or a setting out of range (the trainer's too).
public enum ObjectiveError: Error, CustomStringConvertible, Equatable {
    case missingFields(objective: String, fields: [String], example: Int)
    case unknownMethod(String, supported: [String])
    case invalidSetting(objective: String, name: String, found: String, expected: String)

    public var description: String {
        switch self {
        case let .missingFields(objective, fields, example):
            return "\(objective): example \(example) lacks the field(s) \(fields.joined(separator: ", ")) this objective needs"
        case let .unknownMethod(method, supported):
            return "unknown training method '\(method)'; supported: \(supported.joined(separator: ", "))"
        case let .invalidSetting(objective, name, found, expected):
            return "\(objective): \(name) is \(found), expected \(expected)"
        }
    }
}

extension Objective {
    /// Throws, naming the objective and the fields, when an example lacks what this objective needs.
    public func validate(_ examples: [Example]) throws {
        for example in examples {
            let missing = requiredFields.filter { example.fields[$0] == nil }
            if !missing.isEmpty { throw ObjectiveError.missingFields(objective: name, fields: missing, example: example.id) }
        }
    }
}
