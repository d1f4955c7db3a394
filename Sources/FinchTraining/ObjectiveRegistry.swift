import FinchModels
import FinchTokenizers

/// What an objective's factory may use besides the run's settings.
public struct ObjectiveContext {
    /// The token that pads rows (the tokenizer's pad token, else its EOS).
    public let padId: Int32
    /// A frozen copy of the base model, made on demand (DPO's reference in full fine-tuning).
    public let frozenModel: () throws -> Transformer
    /// The tokenizer (GRPO decodes its completions for the reward functions).
    public var tokenizer: Tokenizer?
    /// The tokens that end a generated sequence (GRPO).
    public var eosTokenIds: Set<Int>
    /// Processes of a data parallel job.
    public var ranks: Int

    /// The context of a run's objective.
    public init(padId: Int32, frozenModel: @escaping () throws -> Transformer, tokenizer: Tokenizer? = nil, eosTokenIds: Set<Int> = [],
                ranks: Int = 1) {
        self.padId = padId; self.frozenModel = frozenModel; self.tokenizer = tokenizer; self.eosTokenIds = eosTokenIds; self.ranks = ranks
    }
}

/// One training method: its name (TRL's) and how its objective is made from a run's settings.
/// `ObjectiveRegistry.methods` lists them all, so an objective (KTO, GRPO) is added as its file in
/// Objectives/ plus one entry here; `--method`, its help and TrainingRun read the list.
public struct TrainingMethod: Sendable {
    /// TRL's name, the value of `--method`.
    public let name: String
    let make: @Sendable (TrainConfig, ObjectiveContext) throws -> Objective

    /// A method named `name` whose objective `make` builds from the run's config.
    public init(_ name: String, make: @escaping @Sendable (TrainConfig, ObjectiveContext) throws -> Objective) {
        self.name = name
        self.make = make
    }

    /// The objective of `config`'s run.
    public func objective(for config: TrainConfig, context: ObjectiveContext) throws -> Objective {
        try make(config, context)
    }
}

/// The training methods Finch knows; `--method` and its help read this list.
public enum ObjectiveRegistry {
    /// Every method, in the order help lists them: sft, orpo, dpo, simpo, cpo, kto, grpo.
    public static let methods: [TrainingMethod] = [
        TrainingMethod("sft") { _, context in SFTObjective(padId: context.padId) },
        preference("orpo") { .orpo(beta: $0.beta) },
        preference("dpo") { .dpo(kind: PreferenceLoss.DPOKind(rawValue: $0.lossType) ?? .sigmoid, beta: $0.beta, labelSmoothing: $0.labelSmoothing) },
        preference("simpo") { .simpo(beta: $0.beta, gamma: $0.simpoGamma, alpha: $0.cpoAlpha, labelSmoothing: $0.labelSmoothing) },
        preference("cpo") { .cpo(beta: $0.beta, alpha: $0.cpoAlpha, labelSmoothing: $0.labelSmoothing) },
        TrainingMethod("kto") { config, context in
            KTOObjective(loss: KTOObjective.Loss(rawValue: config.lossType) ?? .kto, beta: config.beta,
                         desirableWeight: config.desirableWeight, undesirableWeight: config.undesirableWeight, padId: context.padId,
                         reference: config.full ? .model(try context.frozenModel()) : .adaptersOff)
        },
        TrainingMethod("grpo") { config, context in
            var rewards: [RewardFunction] = try config.rewardFunctions.map { try BuiltInRewards.named($0, maxCompletionLength: config.maxCompletionLength) }
            rewards += config.rewardCommands.map { CommandReward(command: $0, timeout: config.rewardTimeout) }
            return try GRPOObjective(settings: config.grpoSettings, rewardFunctions: rewards, tokenizer: context.tokenizer,
                                     eosTokenIds: context.eosTokenIds, padId: context.padId,
                                     reference: config.full && config.beta != 0 ? .model(try context.frozenModel()) : .adaptersOff,
                                     ranks: context.ranks)
        },
    ]

    /// The method named `name`, or an error listing the supported ones.
    public static func method(named name: String) throws -> TrainingMethod {
        guard let method = methods.first(where: { $0.name == name }) else {
            throw ObjectiveError.unknownMethod(name, supported: methods.map(\.name))
        }
        return method
    }

    /// A preference method: its loss from the settings; a reference model where the loss needs
    /// one (the base with adapters off in LoRA training, a frozen copy in full fine-tuning).
    static func preference(_ name: String, _ loss: @escaping @Sendable (TrainConfig) -> PreferenceLoss) -> TrainingMethod {
        TrainingMethod(name) { config, context in
            let loss = loss(config)
            let reference: ReferenceModel? = loss.needsReference ? (config.full ? .model(try context.frozenModel()) : .adaptersOff) : nil
            return try PreferenceObjective(loss: loss, padId: context.padId, reference: reference)
        }
    }
}
