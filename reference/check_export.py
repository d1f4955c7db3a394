#!/usr/bin/env python3
"""Checks `finch export` against transformers and gguf-py.

For the SmolLM2 GGUF plus a Finch-trained adapter, runs `finch export` for HF f32/f16/bf16 and
GGUF f32/f16/bf16/q8_0, then for each export:
  - transformers NLL on the token ids (AutoModelForCausalLM.from_pretrained(folder), or
    from_pretrained(dir, gguf_file=name) for GGUF; weights as written, computed in float32),
  - for GGUF: opens it with gguf.GGUFReader (tensor count, types, tokenizer keys),
  - Finch's own NLL of the export (`finch perplexity --model EXPORT`),
and compares each with `finch perplexity --model GGUF --adapter ADAPTER` (Finch's model plus
adapter), printing relative differences and PASS/FAIL against the issue's tolerances:
1e-3 for f32, 1e-2 for f16/bf16, 2e-2 for q8_0. Also compares the exported tokenizer
(tokenizer.json via AutoTokenizer) with transformers' own reading of the GGUF vocabulary, and
checks that GGUF f32 -> HF f32 -> GGUF f32 keeps every tensor bit for bit.

Usage: python3 reference/check_export.py GGUF ADAPTER TOKEN_IDS.jsonl [--finch .build/release/finch] [--workdir DIR]
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys

os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF loader draws its own progress bar

import gguf
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()

TOLERANCE = {"f32": 1e-3, "f16": 1e-2, "bf16": 1e-2, "q8_0": 2e-2}
EXPORTS = [("hf", "f32"), ("hf", "f16"), ("hf", "bf16"), ("gguf", "f32"), ("gguf", "f16"), ("gguf", "bf16"), ("gguf", "q8_0")]
TEXTS = ["Hello, world!", "  leading spaces and 12345 digits", "<|im_start|>user\nWhat is 2+2?<|im_end|>\n",
         "naïve café — ünïcödé 東京 🙂", "tabs\tand\nnewlines\r\n", "don't won't it's I'LL", "def f(x):\n    return x**2  # square"]


def nll(model, sequences):
    total, count = 0.0, 0
    for ids in sequences:
        t = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids=t).logits[0, :-1].float()
        total += torch.nn.functional.cross_entropy(logits, t[0, 1:], reduction="sum").item()
        count += len(ids) - 1
    return total / count


def finch_nll(finch, model, token_ids, adapter=None):
    cmd = [finch, "perplexity", "--model", model, "--token-ids", token_ids, "--json"]
    if adapter:
        cmd += ["--adapter", adapter]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)["nll"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("adapter")
    ap.add_argument("token_ids")
    ap.add_argument("--finch", default=".build/release/finch")
    ap.add_argument("--workdir", default="/tmp/finch-export-check")
    args = ap.parse_args()
    torch.set_num_threads(2)
    sequences = [json.loads(line) for line in open(args.token_ids) if line.strip()]
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)

    reference = finch_nll(args.finch, args.gguf, args.token_ids, args.adapter)
    print(f"finch perplexity --model {args.gguf} --adapter {args.adapter}: nll {reference:.6f}")
    rows, ok = [], True
    for fmt, dtype in EXPORTS:
        out = os.path.join(args.workdir, f"export-{dtype}" + (".gguf" if fmt == "gguf" else ""))
        cmd = [args.finch, "export", "--model", args.gguf, "--adapter", args.adapter, "--format", fmt, "--dtype", dtype, "--output", out]
        print("$", " ".join(cmd), flush=True)
        print("  " + subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip(), flush=True)
        note = ""
        try:
            if fmt == "hf":
                model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
            else:
                model = AutoModelForCausalLM.from_pretrained(os.path.dirname(out), gguf_file=os.path.basename(out), dtype=torch.float32).eval()
            hf = nll(model, sequences)
            del model
        except Exception as error:  # transformers' GGUF loader lacks some tensor types
            hf, note = None, f"transformers cannot load it: {type(error).__name__}: {str(error).splitlines()[0][:100]}"
        if fmt == "gguf":
            reader = gguf.GGUFReader(out)
            types = sorted({t.tensor_type.name for t in reader.tensors})
            arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
            note = (note + "; " if note else "") + f"gguf reader: {len(reader.tensors)} tensors {'/'.join(types)}, arch {arch}, {len(reader.fields)} keys"
        own = finch_nll(args.finch, out, args.token_ids)
        tol = TOLERANCE[dtype]
        rel_hf = None if hf is None else abs(hf - reference) / reference
        rel_own = abs(own - reference) / reference
        passed = (rel_hf is None or rel_hf <= tol) and rel_own <= tol
        ok &= passed
        rows.append((fmt, dtype, hf, rel_hf, own, rel_own, tol, passed, note))

    print()
    print(f"reference: finch + adapter nll {reference:.6f} ({sum(len(s) - 1 for s in sequences)} tokens)")
    print("| export | transformers nll | rel. diff | finch nll of export | rel. diff | tolerance | result | notes |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for fmt, dtype, hf, rel_hf, own, rel_own, tol, passed, note in rows:
        hf_text = "n/a" if hf is None else f"{hf:.6f}"
        rel_text = "n/a" if rel_hf is None else f"{rel_hf:.1e}"
        print(f"| {fmt} {dtype} | {hf_text} | {rel_text} | {own:.6f} | {rel_own:.1e} | {tol:g} | {'PASS' if passed else 'FAIL'} | {note} |")

    # The exported tokenizer against transformers' own reading of the GGUF vocabulary.
    folder = os.path.join(args.workdir, "export-f32")
    ours = AutoTokenizer.from_pretrained(folder)
    theirs = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(args.gguf)), gguf_file=os.path.basename(args.gguf))
    same = all(ours(t)["input_ids"] == theirs(t)["input_ids"] for t in TEXTS)
    chat = [{"role": "user", "content": "Hi"}]
    same_chat = ours.apply_chat_template(chat, tokenize=False) == theirs.apply_chat_template(chat, tokenize=False)
    print(f"tokenizer.json of the HF export vs transformers' GGUF tokenizer on {len(TEXTS)} texts: "
          f"{'same ids' if same else 'DIFFERENT ids'}; chat template {'same' if same_chat else 'DIFFERENT'}")
    ok &= same and same_chat
    # GGUF f32 -> HF f32 -> GGUF f32 keeps every tensor bit for bit, in the same order.
    first = os.path.join(args.workdir, "export-f32.gguf")
    folder, second = os.path.join(args.workdir, "roundtrip-hf"), os.path.join(args.workdir, "roundtrip.gguf")
    for src, fmt, dst in [(first, "hf", folder), (folder, "gguf", second)]:
        subprocess.run([args.finch, "export", "--model", src, "--format", fmt, "--output", dst], capture_output=True, check=True)
    a, b = gguf.GGUFReader(first), gguf.GGUFReader(second)
    same_order = [t.name for t in a.tensors] == [t.name for t in b.tensors]
    identical = same_order and all(np.array_equal(x.data.view(np.uint8), y.data.view(np.uint8)) for x, y in zip(a.tensors, b.tensors))
    print(f"GGUF f32 -> HF -> GGUF f32: {len(a.tensors)} tensors, {'same order' if same_order else 'DIFFERENT order'}, "
          f"{'bit-identical' if identical else 'NOT bit-identical'}")
    ok &= identical
    print("ALL PASS" if ok else "SOME FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
