import Foundation
import XCTest
import FinchTestSupport
@testable import FinchModels
@testable import FinchTokenizers

/// Chat templates id for id against transformers' `apply_chat_template(..., tokenize=True)` for
/// tokenizers that only the Hugging Face hub carries (Gemma 2's and 3's: no package on PyPI has
/// them). `python3 reference/make_template_id_fixtures.py --hub google/gemma-2-2b-it
/// google/gemma-3-1b-it` writes Fixtures/chat_templates/template_ids_hub.json from the cached
/// tokenizers; this test reads the same cached folders through Finch's hub cache, renders each
/// conversation with the folder's own template and tokenizes it, and where transformers'
/// template raised (Gemma's system role) expects the same message from Finch. Skipped, by name,
/// without the fixture or the cached tokenizers.
final class HubTemplateIDTests: XCTestCase {
    struct Case: Decodable {
        struct Message: Decodable { let role: String; let content: String }
        let messages: [Message]
        let add_generation_prompt: Bool
        let text: String?
        let ids: [Int]?
        let error: String?
    }

    func testHubTokenizerTemplatesMatchTransformers() throws {
        let fixture = TestSupport.fixtures.appendingPathComponent("chat_templates/template_ids_hub.json")
        guard FileManager.default.fileExists(atPath: fixture.path) else {
            throw XCTSkip("HubTemplateIDTests: no template_ids_hub.json (reference/make_template_id_fixtures.py --hub ID ... writes it where the tokenizers are cached)")
        }
        let all = try JSONDecoder().decode([String: [Case]].self, from: Data(contentsOf: fixture))
        var missing: [String] = []
        for (repo, cases) in all.sorted(by: { $0.key < $1.key }) {
            guard let folder = try? HubCache.cached(repo, revision: nil, environment: ProcessInfo.processInfo.environment) else {
                missing.append(repo)
                continue
            }
            let tokenizer = try Tokenizer.load(from: folder)
            let template = try ChatTemplate(try XCTUnwrap(tokenizer.chatTemplate, repo), name: repo)
            for (i, c) in cases.enumerated() {
                let messages = c.messages.map { ChatMessage(role: $0.role, content: $0.content) }
                let render = { try template.render(messages: messages, addGenerationPrompt: c.add_generation_prompt,
                                                   bosToken: tokenizer.bosToken, eosToken: tokenizer.eosToken) }
                if let message = c.error {
                    XCTAssertThrowsError(try render(), "\(repo) case \(i)") { error in
                        guard case ChatTemplateError.raised(let got, _) = error else { return XCTFail("\(repo) case \(i): \(error)") }
                        XCTAssertEqual(got, message, "\(repo) case \(i)")
                    }
                    continue
                }
                let text = try render()
                XCTAssertEqual(text, c.text, "\(repo) case \(i)")
                XCTAssertEqual(try tokenizer.encode(text, addSpecialTokens: false), c.ids, "\(repo) case \(i)")
            }
        }
        if !missing.isEmpty {
            throw XCTSkip("HubTemplateIDTests: not in the Hugging Face cache \(HubCache.directory()): \(missing.joined(separator: ", "))")
        }
    }
}
