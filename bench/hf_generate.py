#!/usr/bin/env python3
"""Decode benchmark: transformers `generate` on SmolLM2-135M-Instruct (Q4_1 GGUF), CPU, fp32.

Model: AutoModelForCausalLM.from_pretrained(gguf_file=..., dtype=float32), i.e. the GGUF weights
dequantized to F32 by transformers (same load as reference/smollm2_perplexity.py).

Prompt (deterministic, batch 1, exactly --prompt-len tokens, default 128): the fixed English
text PROMPT_TEXT below, repeated (joined with "\n") until it is long enough, tokenized with
tokenizer(text)["input_ids"] (HF defaults; this tokenizer adds no BOS) and truncated to the
first --prompt-len ids (PROMPT_TEXT alone is 186 tokens, so at 128 no repeat happens).
The ids are written to the --json output ("prompt_ids") and, with --dump-ids FILE, to FILE as
one JSON array, so another implementation can run the same prompt.

Measurements (after --warmup untimed rounds, median of --runs):
  prefill  one forward of the prompt (use_cache=True, as generate does), prompt_len / seconds
  decode   generate(do_sample=False, max_new_tokens=N, min_new_tokens=N, explicit greedy
           GenerationConfig, no repetition penalty); a streamer timestamps each new token, and
           decode tok/s = (N - 1) / (time of last token - time of first token), i.e. tokens after
           the first over the time after the first. The alternative "N-1 over (total generate
           time - measured prefill)" is reported as decode_alt.

Usage: python3 bench/hf_generate.py [--gguf PATH] [--prompt-len 128] [--new 128] [--runs 3]
                                    [--warmup 1] [--threads 2] [--json FILE] [--dump-ids FILE]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from transformers.generation.streamers import BaseStreamer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT_TEXT = (
    "The old lighthouse stood at the end of a narrow spit of land, where the road gave out and "
    "only a sandy path continued between the dunes. For almost a hundred years its keepers had "
    "climbed the spiral stairs every evening to light the lamp, wind the clockwork that turned "
    "the lens, and write a few lines in the logbook about the weather and the ships that passed. "
    "When the light was finally automated, the last keeper moved to a cottage in the village, "
    "but he still walked out along the path each morning, checked the door, and looked at the "
    "sea for a while before going home. People in the village said he was waiting for something, "
    "though nobody could say what it was. In winter the storms came in from the west, and the "
    "waves broke so high against the rocks that spray reached the gallery railing. In summer the "
    "beach filled with families, and children dared each other to touch the cold iron door.")


class Stamps(BaseStreamer):
    """Records perf_counter() at each put() after the first (the first put is the prompt)."""

    def __init__(self):
        self.times = []
        self.seen_prompt = False

    def put(self, value):
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        self.times.append(time.perf_counter())

    def end(self):
        pass


def gguf_path(arg):
    if arg:
        return os.path.abspath(arg)
    out = subprocess.run(["bash", os.path.join(REPO, "scripts", "fetch_smollm2.sh")],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    return out.strip().splitlines()[-1]


def prompt_ids(tok, n):
    reps = 1
    while True:
        ids = tok("\n".join([PROMPT_TEXT] * reps))["input_ids"]
        if len(ids) >= n:
            return ids[:n]
        reps += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", help="path to SmolLM2-135M-Instruct.Q4_1.gguf (default: scripts/fetch_smollm2.sh)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new", type=int, default=128, help="new tokens (min = max, so EOS never stops it)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write results to this JSON file")
    ap.add_argument("--dump-ids", help="write the prompt ids (JSON array) to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    path = gguf_path(args.gguf)
    d, name = os.path.split(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    model.eval()

    ids = prompt_ids(tok, args.prompt_len)
    if args.dump_ids:
        with open(args.dump_ids, "w") as f:
            json.dump(ids, f)
            f.write("\n")
    x = torch.tensor([ids])
    mask = torch.ones_like(x)
    eos = model.generation_config.eos_token_id
    cfg = GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=args.new, min_new_tokens=args.new,
        temperature=None, top_p=None, top_k=None, repetition_penalty=1.0,
        eos_token_id=eos, pad_token_id=model.generation_config.pad_token_id, use_cache=True)

    def prefill():
        with torch.no_grad():
            t0 = time.perf_counter()
            model(input_ids=x, attention_mask=mask, use_cache=True)
            return time.perf_counter() - t0

    def decode():
        s = Stamps()
        with torch.no_grad():
            t0 = time.perf_counter()
            out = model.generate(input_ids=x, attention_mask=mask, generation_config=cfg, streamer=s)
            t1 = time.perf_counter()
        n = out.shape[1] - len(ids)
        assert n == args.new == len(s.times), (n, len(s.times))
        return {"total_s": t1 - t0, "first_token_s": s.times[0] - t0,
                "after_first_s": s.times[-1] - s.times[0], "new_ids": out[0, len(ids):].tolist()}

    for _ in range(args.warmup):
        prefill()
        decode()
    pre = [prefill() for _ in range(args.runs)]
    dec = [decode() for _ in range(args.runs)]
    assert all(r["new_ids"] == dec[0]["new_ids"] for r in dec)

    pre_s = statistics.median(pre)
    prefill_tps = args.prompt_len / pre_s
    decode_tps = statistics.median((args.new - 1) / r["after_first_s"] for r in dec)
    decode_alt = statistics.median((args.new - 1) / (r["total_s"] - pre_s) for r in dec)
    total_s = statistics.median(r["total_s"] for r in dec)
    load = os.getloadavg()
    print(f"hf generate: prefill {prefill_tps:.1f} tok/s, decode {decode_tps:.1f} tok/s")
    print(f"  ({args.threads} threads, prompt {args.prompt_len}, new {args.new}, median of {args.runs}; "
          f"prefill s {[round(t, 4) for t in pre]}, generate total s {[round(r['total_s'], 3) for r in dec]}, "
          f"first token s {[round(r['first_token_s'], 4) for r in dec]}, "
          f"decode_alt {decode_alt:.1f} tok/s; load avg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({
                "prefill_tokens_per_s": prefill_tps, "decode_tokens_per_s": decode_tps,
                "decode_alt_tokens_per_s": decode_alt, "prefill_s": pre,
                "generate_total_s": [r["total_s"] for r in dec],
                "first_token_s": [r["first_token_s"] for r in dec],
                "after_first_s": [r["after_first_s"] for r in dec],
                "median_generate_total_s": total_s,
                "args": vars(args), "gguf_file": name, "loadavg": list(load), "cpu_count": os.cpu_count(),
                "prompt": "first prompt_len ids of tokenizer('\\n'.join([PROMPT_TEXT] * k))['input_ids'] "
                          "for the smallest k that is long enough (PROMPT_TEXT in bench/hf_generate.py)",
                "prompt_text": PROMPT_TEXT,
                "prompt_ids": ids, "new_ids": dec[0]["new_ids"],
                "torch": torch.__version__, "transformers": transformers.__version__,
                "python": sys.version.split()[0],
            }, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
