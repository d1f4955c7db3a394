// Fine-tunes a model with LoRA on a JSONL file of prompt/completion rows, then asks it a question.
// Usage: fine-tune MODEL DATA OUTPUT [PROMPT]   (MODEL: an HF folder or a .gguf file)
import Finch
import Foundation

struct Greedy: GenerationOptions {
    var maxNewTokens = 16
    var sampling = SamplingSettings()   // temperature 0: greedy
    var stops: [String] = []
}

let arguments = CommandLine.arguments
guard arguments.count >= 4 else {
    print("usage: fine-tune MODEL DATA OUTPUT [PROMPT]")
    exit(2)
}
var config = TrainConfig()
config.method = "sft"
config.model = arguments[1]
config.data = arguments[2]
config.output = arguments[3]
config.trainer.maxSteps = 4
try TrainingRun(config: config).run { event in
    if case let .step(log) = event { print("step \(log.step): loss \(log.metrics["loss"] ?? .nan)") }
}

let files = try ModelFiles.open(config.model)
let session = ChatSession(model: try Transformer(files: files, adapter: config.output),
                          tokenizer: try Tokenizer.load(from: config.model), files: files)
let prompt = arguments.count > 4 ? arguments[4] : "Say hi"
let reply = try session.generate(promptIDs: session.plainPrompt(prompt), options: Greedy()) { _ in }
print("\(prompt) -> \(session.tokenizer.decode(reply.tokens)) [\(reply.tokens.count) tokens, \(reply.finishReason)]")
