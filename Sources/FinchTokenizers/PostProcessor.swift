import FinchKernels
import FinchIO

/// Special tokens around an encoded sequence (HF processors/*.rs), applied when
/// `addSpecialTokens` is true. Only single sequences are encoded, so only the `single`
/// template of TemplateProcessing is kept.
indirect enum PostProcessor {
    /// TemplateProcessing's `single`: token ids before and after the sequence.
    case template(prefix: [Int32], suffix: [Int32])
    /// RobertaProcessing / BertProcessing: cls, sequence, sep.
    case clsSep(cls: Int32, sep: Int32)
    /// ByteLevel as a post-processor only trims offsets: no ids change.
    case none
    case sequence([PostProcessor])

    func apply(_ ids: [Int32]) -> [Int32] {
        switch self {
        case let .template(prefix, suffix): return prefix + ids + suffix
        case let .clsSep(cls, sep): return [cls] + ids + [sep]
        case .none: return ids
        case let .sequence(items):
            var result = ids
            for item in items { result = item.apply(result) }
            return result
        }
    }
}
