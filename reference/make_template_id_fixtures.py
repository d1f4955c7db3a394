#!/usr/bin/env python3
"""Token ids of chat templates rendered by transformers, for the families whose tokenizer and
template llama.cpp ships in its test vocabularies (models/ggml-vocab-*.gguf, fetched by
scripts/fetch_tokenizer_vocabs.sh): transformers loads each tokenizer from the GGUF
(`gguf_file=`) and runs `apply_chat_template(..., tokenize=True)` with the file's own template on
multi-turn conversations, with and without a system message and the generation prompt.

Writes Tests/FinchTestSupport/Fixtures/chat_templates/template_ids.json:
  {"<vocab>": [{"messages": [...], "add_generation_prompt": bool, "text": str, "ids": [int]}]}
The Swift test (`TemplateIDTests`) renders the same with Finch's tokenizer and template read from
the same GGUF and compares text and ids; it skips where the vocabulary files are absent.

With --hub ID ..., it does the same for tokenizers in the Hugging Face cache (the families whose
tokenizers no package on PyPI carries: Gemma 2's and 3's), writing
Tests/FinchTestSupport/Fixtures/chat_templates/template_ids_hub.json, where a conversation the
template refuses (Gemma's system role) records transformers' error message instead of ids; the
Swift test (`HubTemplateIDTests`) reads the same cached tokenizer through Finch's hub cache and
skips, by name, the ids that are not cached here.

Usage: python3 reference/make_template_id_fixtures.py [--vocabs ~/.cache/finch/llama-vocabs]
       python3 reference/make_template_id_fixtures.py --hub google/gemma-2-2b-it google/gemma-3-1b-it
"""
import argparse
import json
import os
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")   # cached tokenizers only (read when huggingface_hub is imported)

from transformers import AutoTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "Tests", "FinchTestSupport", "Fixtures", "chat_templates", "template_ids.json")
# Phi-3's template (the vocabulary's own, Phi-3-mini's first one, drops system messages) and Qwen2's
# ChatML (transformers reads no command-r GGUF), and Gemma 4's (its tokenizer through transformers'
# GGUF tokenizer converter: `gguf_file=` refuses that file's model config);
# Llama 3's vocabulary carries no template.
VOCABS = ["phi-3", "qwen2", "gemma-4"]

CONVERSATIONS = [
    ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"},
      {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}], True),
    ([{"role": "user", "content": "Name three colours.\nOne per line."},
      {"role": "assistant", "content": "Red\nGreen\nBlue"}], False),
    ([{"role": "user", "content": "  spaces  and ünïcode ✓ "}], True),
    ([{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Bonjour?"},
      {"role": "assistant", "content": "Bonjour !"}, {"role": "user", "content": "Merci."},
      {"role": "assistant", "content": "De rien."}], False),
]


def load_tokenizer(vocabs, name):
    path = os.path.join(vocabs, f"ggml-vocab-{name}.gguf")
    if name != "gemma-4":
        return AutoTokenizer.from_pretrained(vocabs, gguf_file=os.path.basename(path))
    from gguf import GGUFReader
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    parsed = load_gguf_checkpoint(path, return_tensors=False)
    fast, _ = convert_gguf_tokenizer(parsed["config"]["model_type"], parsed["tokenizer"])
    reader = GGUFReader(path)
    field = lambda key: reader.fields[key].parts[-1]
    tokens = reader.fields["tokenizer.ggml.tokens"]
    token = lambda i: bytes(tokens.parts[tokens.data[int(i)]]).decode()
    return PreTrainedTokenizerFast(tokenizer_object=fast, chat_template=bytes(field("tokenizer.chat_template")).decode(),
                                   bos_token=token(field("tokenizer.ggml.bos_token_id")[0]),
                                   eos_token=token(field("tokenizer.ggml.eos_token_id")[0]))


def render(tok, messages, generation):
    """The conversation's text and ids, or transformers' error message where the template raises."""
    try:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    except Exception as e:  # jinja2's TemplateError from raise_exception
        return {"messages": messages, "add_generation_prompt": generation, "error": str(e)}
    ids = list(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation, return_dict=True)["input_ids"])
    return {"messages": messages, "add_generation_prompt": generation, "text": text, "ids": ids}


def hub(ids):
    out = {}
    for repo in ids:
        tok = AutoTokenizer.from_pretrained(repo)
        cases = [render(tok, m, g) for m, g in CONVERSATIONS]
        # the same conversations with the system message folded into the first user turn
        cases += [render(tok, [{"role": "user", "content": m[0]["content"] + "\n\n" + m[1]["content"]}] + m[2:], g)
                  for m, g in CONVERSATIONS if m[0]["role"] == "system"]
        out[repo] = cases
        print(f"{repo}: {len(cases)} conversations, {sum(1 for c in cases if 'error' in c)} refused")
    path = OUT.replace("template_ids.json", "template_ids_hub.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocabs", default=os.path.expanduser("~/.cache/finch/llama-vocabs"))
    ap.add_argument("--hub", nargs="+", metavar="ID", help="tokenizers in the Hugging Face cache instead")
    args = ap.parse_args()
    if args.hub:
        return hub(args.hub)
    out = {}
    for name in VOCABS:
        tok = load_tokenizer(args.vocabs, name)
        cases = []
        for messages, generation in CONVERSATIONS:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
            ids = list(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation, return_dict=True)["input_ids"])
            cases.append({"messages": messages, "add_generation_prompt": generation, "text": text, "ids": ids})
        out[name] = cases
        print(f"{name}: {len(cases)} conversations, {sum(len(c['ids']) for c in cases)} ids")
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
