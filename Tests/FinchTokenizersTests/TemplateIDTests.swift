import Foundation
import XCTest
import FinchTestSupport
@testable import FinchIO
@testable import FinchTokenizers

/// Chat templates id for id against transformers' `apply_chat_template(..., tokenize=True)` where
/// llama.cpp's test vocabularies ship the tokenizer and its template (Phi-3's, Qwen2's, Gemma 4's with its thinking channel; fixture written by
/// reference/make_template_id_fixtures.py): Finch reads both from the same GGUF, renders each
/// conversation (system message, multi-turn, with and without the generation prompt) and
/// tokenizes it. Skipped where the vocabularies are absent (scripts/fetch_tokenizer_vocabs.sh).
final class TemplateIDTests: XCTestCase {
    struct Case: Decodable {
        struct Message: Decodable { let role: String; let content: String }
        let messages: [Message]
        let add_generation_prompt: Bool
        let text: String
        let ids: [Int]
    }

    func testTemplateIdsMatchTransformers() throws {
        let fixture = TestSupport.fixtures.appendingPathComponent("chat_templates/template_ids.json")
        let all = try JSONDecoder().decode([String: [Case]].self, from: Data(contentsOf: fixture))
        for (name, cases) in all.sorted(by: { $0.key < $1.key }) {
            guard let url = TokenizerFixtures.llamaCppVocab(name) else {
                throw XCTSkip("ggml-vocab-\(name).gguf is not in \(TokenizerFixtures.vocabs.path) (run scripts/fetch_tokenizer_vocabs.sh)")
            }
            let tokenizer = try Tokenizer.load(from: url.path)
            let template = try ChatTemplate(try XCTUnwrap(tokenizer.chatTemplate, name), name: name)
            for (i, c) in cases.enumerated() {
                let text = try template.render(messages: c.messages.map { ChatMessage(role: $0.role, content: $0.content) },
                                               addGenerationPrompt: c.add_generation_prompt, bosToken: tokenizer.bosToken,
                                               eosToken: tokenizer.eosToken)
                XCTAssertEqual(text, c.text, "\(name) case \(i)")
                XCTAssertEqual(try tokenizer.encode(text, addSpecialTokens: false), c.ids, "\(name) case \(i)")
            }
        }
    }
}
