#!/usr/bin/env python3
"""Fixtures for training on tool-call conversations: what transformers' apply_chat_template gives
for agent-style rows (an assistant turn with tool_calls and null content, a tool result, the
answer), and which tokens an assistant-only loss covers.

For each case, with the real chat templates of Qwen2.5-7B-Instruct and Llama-3.1-8B-Instruct
(Fixtures/chat_templates/templates) and the tiny byte-level BPE of the trainer fixtures (so ids
exist for any text):
  input_ids  apply_chat_template(messages, tools=tools, tokenize=True) -- the whole rendered
             conversation tokenized at once, as transformers does
  labels     the input ids on assistant turns and -100 elsewhere, found by rendering the
             conversation turn by turn: an assistant turn's tokens are what rendering it adds to
             the rendering of the turns before it with add_generation_prompt=True (its text,
             tool calls and end-of-turn tokens); everything else (system, user, tool results, the
             generation prompt itself) is context
  prompt_ids the turns before the first assistant turn with the generation prompt (a GRPO prompt
             with tools)
The rows are written as JSONL too (Fixtures/chat_templates/tool_training.jsonl), so Finch reads
them the way a user's file is read.

Usage: python3 reference/make_tool_training_fixtures.py
"""
import json
import os

from transformers import PreTrainedTokenizerFast

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "Tests", "FinchTestSupport", "Fixtures")
TEMPLATES = ["Qwen-Qwen2.5-7B-Instruct.jinja", "meta-llama-Llama-3.1-8B-Instruct.jinja"]

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
                       "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "add", "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "integer"}}, "required": ["a", "b"]}}},
]

ROWS = [
    {"messages": [
        {"role": "user", "content": "Is it warm in Lyon today?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"unit": "c", "city": "Lyon"}}}]},
        {"role": "tool", "name": "get_weather", "content": "{\"temp\": 24, \"sky\": \"clear\"}"},
        {"role": "assistant", "content": "Yes: 24 degrees and a clear sky in Lyon."},
    ], "tools": TOOLS},
    {"messages": [
        {"role": "system", "content": "You add numbers with the add tool."},
        {"role": "user", "content": "What is 17 plus 25?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"b": 25, "a": 17}}}]},
        {"role": "tool", "name": "add", "content": "42"},
        {"role": "assistant", "content": "17 plus 25 is 42."},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You are welcome."},
    ], "tools": TOOLS},
]


def main():
    tok = PreTrainedTokenizerFast.from_pretrained(os.path.join(FIXTURES, "trainers", "tokenizer"))
    cases = []
    for template_name in TEMPLATES:
        template = open(os.path.join(FIXTURES, "chat_templates", "templates", template_name)).read()
        for index, row in enumerate(ROWS):
            messages, tools = row["messages"], row["tools"]
            text = tok.apply_chat_template(messages, tools=tools, chat_template=template, tokenize=False)
            ids = tok.apply_chat_template(messages, tools=tools, chat_template=template, tokenize=True, return_dict=True)["input_ids"]
            # The assistant spans, from turn-by-turn renders.
            assistant = [False] * len(text)
            for i, m in enumerate(messages):
                if m["role"] != "assistant":
                    continue
                before = tok.apply_chat_template(messages[:i], tools=tools, chat_template=template, tokenize=False,
                                                 add_generation_prompt=True)
                after = tok.apply_chat_template(messages[:i + 1], tools=tools, chat_template=template, tokenize=False)
                assert text.startswith(after) and after.startswith(before), (template_name, index, i)
                for c in range(len(before), len(after)):
                    assistant[c] = True
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            assert enc["input_ids"] == ids
            labels = [t if all(assistant[a:b]) and b > a else -100 for t, (a, b) in zip(ids, enc["offset_mapping"])]
            # GRPO's prompt: the conversation up to its first assistant turn, with the generation prompt.
            first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
            prompt_ids = tok.apply_chat_template(messages[:first], tools=tools, chat_template=template, tokenize=True,
                                                 add_generation_prompt=True, return_dict=True)["input_ids"]
            cases.append({"template": template_name, "row": index, "text": text, "input_ids": ids, "labels": labels,
                          "prompt_turns": first, "prompt_ids": prompt_ids})
    out = os.path.join(FIXTURES, "chat_templates", "tool_training.json")
    with open(out, "w") as f:
        json.dump({"generator": "reference/make_tool_training_fixtures.py", "tokenizer": "trainers/tokenizer", "cases": cases}, f, indent=1)
        f.write("\n")
    with open(os.path.join(FIXTURES, "chat_templates", "tool_training.jsonl"), "w") as f:
        for row in ROWS:
            f.write(json.dumps(row) + "\n")
    for c in cases:
        print(f"{c['template']:42s} row {c['row']}: {len(c['input_ids'])} ids, {sum(l != -100 for l in c['labels'])} labelled")


if __name__ == "__main__":
    main()
