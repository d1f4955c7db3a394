#!/usr/bin/env python3
"""Reference greedy generations of SmolLM2-135M-Instruct (Q4_1 GGUF) with transformers.

Loads the GGUF the same way as reference/smollm2_perplexity.py (transformers dequantizes the
weights to F32, model in float32) and writes Tests/FinchTestSupport/Fixtures/smollm2/greedy.json:

  chat cases   10 short user prompts (one is exactly "What is the capital of France?").
               Prompt ids = tokenizer.apply_chat_template([{"role": "user", "content": p}],
               add_generation_prompt=True, tokenize=True)  (the template inserts the default
               SmolLM system message); the rendered prompt text (tokenize=False) is kept too.
  plain cases  3 plain-text continuations, prompt ids = tokenizer(text)["input_ids"]
               (HF defaults; this tokenizer adds no BOS).

Each case is continued with model.generate(do_sample=False, max_new_tokens=32) under an explicit
GenerationConfig: greedy, num_beams=1, temperature/top_p/top_k unset, repetition_penalty=1.0,
no min length, stopping only at the EOS ids recorded in "generation.eos_token_ids". For every
case the file stores the new token ids (EOS included when it was produced), the decoded text
(skip_special_tokens=True), whether it stopped at EOS, and per step the top-1 / top-2 logit gap
of the scores (so a port can tell a real mismatch from a near tie). The ids are re-checked with a
plain argmax loop that recomputes the full sequence each step (no KV cache); agreement is
recorded as "argmax_check".

Usage: python3 reference/smollm2_generate.py [--gguf PATH] [--threads 2]
"""
import argparse
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys

import torch
import transformers
import tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "Tests", "FinchTestSupport", "Fixtures", "smollm2")
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MAX_NEW_TOKENS = 32

CHAT_PROMPTS = [
    "What is the capital of France?",
    "Hi!",
    "Write a haiku about the ocean.",
    "What is 12 plus 7?",
    "Translate 'good morning' into Spanish.",
    "Name three primary colors.",
    "Write a Python function that returns the square of a number.",
    "Why is the sky blue?",
    "Give me a synonym for 'happy'.",
    "Tell me a fun fact about cats.",
]

PLAIN_PROMPTS = [
    "The library opens at nine in the morning and",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gguf_path(arg):
    if arg:
        return os.path.abspath(arg)
    out = subprocess.run(["bash", os.path.join(REPO, "scripts", "fetch_smollm2.sh")],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    return out.strip().splitlines()[-1]


def as_ids(x):
    """apply_chat_template(tokenize=True) returns a BatchEncoding in transformers 5.x, a list in 4.x."""
    if hasattr(x, "keys") and "input_ids" in x:
        x = x["input_ids"]
    if isinstance(x, torch.Tensor):
        x = x.tolist()
    if x and isinstance(x[0], list):
        assert len(x) == 1
        x = x[0]
    return [int(t) for t in x]


def greedy_config(model, eos_ids, pad_id):
    # Start from a blank config so nothing from model.generation_config (temperature, top_p,
    # top_k, repetition_penalty, min_length, ...) can creep in; set every relevant knob explicitly.
    return GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=MAX_NEW_TOKENS, min_new_tokens=None,
        temperature=None, top_p=None, top_k=None, repetition_penalty=1.0,
        no_repeat_ngram_size=None, eos_token_id=eos_ids, pad_token_id=pad_id,
        bos_token_id=model.generation_config.bos_token_id, use_cache=True,
        output_scores=True, return_dict_in_generate=True)


def argmax_loop(model, ids, n, eos_ids):
    """Greedy decode by recomputing the whole sequence each step (independent of generate/KV cache)."""
    seq = list(ids)
    out = []
    for _ in range(n):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([seq])).logits[0, -1]
        t = int(logits.argmax())
        out.append(t)
        seq.append(t)
        if t in eos_ids:
            break
    return out


def run_case(model, tok, cfg, eos_ids, ids):
    x = torch.tensor([ids])
    with torch.no_grad():
        r = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=cfg)
    new = [int(t) for t in r.sequences[0, len(ids):]]
    gaps, logprobs = [], []
    for step, s in enumerate(r.scores):
        s = s[0].double()
        top2 = torch.topk(s, 2)
        assert int(top2.indices[0]) == new[step]
        gaps.append(round(float(top2.values[0] - top2.values[1]), 5))
        logprobs.append(round(float(torch.log_softmax(s, -1)[new[step]]), 5))
    stopped = bool(new) and new[-1] in eos_ids
    check = argmax_loop(model, ids, MAX_NEW_TOKENS, eos_ids)
    return {
        "prompt_ids": ids,
        "prompt_len": len(ids),
        "output_ids": new,
        "output_len": len(new),
        "output_text": tok.decode(new, skip_special_tokens=True),
        "output_text_raw": tok.decode(new, skip_special_tokens=False),
        "stopped_at_eos": stopped,
        "top1_top2_logit_gap": gaps,
        "min_logit_gap": min(gaps) if gaps else None,
        "token_logprobs": logprobs,
        "argmax_check": check == new,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", help="path to SmolLM2-135M-Instruct.Q4_1.gguf (default: scripts/fetch_smollm2.sh)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(FIXTURES, "greedy.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    path = gguf_path(args.gguf)
    print(f"gguf: {path}")
    sha = sha256_file(path)
    if sha != SHA256:
        print(f"warning: sha256 {sha} differs from the expected {SHA256}", file=sys.stderr)
    d, name = os.path.split(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    model.eval()

    gc = model.generation_config
    eos = gc.eos_token_id
    eos_ids = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
    pad_id = gc.pad_token_id if gc.pad_token_id is not None else eos_ids[0]
    cfg = greedy_config(model, eos_ids, pad_id)

    cases = []
    for p in CHAT_PROMPTS:
        msgs = [{"role": "user", "content": p}]
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        ids = as_ids(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True))
        assert ids == tok(text, add_special_tokens=False)["input_ids"], p
        c = {"kind": "chat", "user": p, "prompt_text": text}
        c.update(run_case(model, tok, cfg, eos_ids, ids))
        cases.append(c)
        print(f"[chat  {c['prompt_len']:3d} -> {c['output_len']:2d}{' eos' if c['stopped_at_eos'] else '    '}] "
              f"{p!r}: {c['output_text']!r}")
    for p in PLAIN_PROMPTS:
        ids = tok(p)["input_ids"]
        c = {"kind": "plain", "prompt_text": p}
        c.update(run_case(model, tok, cfg, eos_ids, ids))
        cases.append(c)
        print(f"[plain {c['prompt_len']:3d} -> {c['output_len']:2d}{' eos' if c['stopped_at_eos'] else '    '}] "
              f"{p!r}: {c['output_text']!r}")

    result = {
        "gguf_file": name,
        "sha256_gguf": sha,
        "model": "AutoModelForCausalLM.from_pretrained(gguf_file=..., dtype=float32), weights "
                 "dequantized to F32",
        "model_generation_config": gc.to_diff_dict(),
        "tokenizer": {
            "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
            "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            "chat_template": tok.chat_template,
            "plain_add_special_tokens": True,
            "plain_adds_specials": any(tok(p)["input_ids"] != tok(p, add_special_tokens=False)["input_ids"]
                                       for p in PLAIN_PROMPTS),
        },
        "generation": {
            "call": "model.generate(input_ids, attention_mask=ones, generation_config=cfg)",
            "do_sample": False, "num_beams": 1, "max_new_tokens": MAX_NEW_TOKENS,
            "temperature": None, "top_p": None, "top_k": None, "repetition_penalty": 1.0,
            "eos_token_ids": eos_ids, "pad_token_id": pad_id,
            "eos_tokens": [tok.convert_ids_to_tokens(e) for e in eos_ids],
            "note": "output_ids include the EOS token when stopped_at_eos; output_text is "
                    "decode(output_ids, skip_special_tokens=True); top1_top2_logit_gap[i] is the "
                    "gap between the two largest logits at new token i",
        },
        "cases": cases,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__, "gguf": importlib.metadata.version("gguf"),
                     "python": sys.version.split()[0]},
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
        f.write("\n")
    france = cases[0]
    print(f"\nFrance: {france['output_text']!r}")
    bad = [c.get("user", c["prompt_text"]) for c in cases if not c["argmax_check"]]
    print(f"argmax re-check: {'all agree' if not bad else 'MISMATCH in ' + repr(bad)}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
