#!/usr/bin/env python3
"""Mean next-token NLL of GGUF models under llama.cpp, as a reference for Finch.

Usage:
    python3 reference/llamacpp_nll.py TOKENS.jsonl MODEL.gguf [MODEL.gguf ...] [--out table.json]

TOKENS.jsonl holds one JSON list of token ids per line (for example
Tests/FinchTestSupport/Fixtures/smollm2/token_ids.jsonl). Each line is scored
as its own sequence, exactly as given: no BOS or other special token is added.
A line longer than the window (512 tokens) is cut into consecutive windows of
at most 512 tokens. Every window starts from an empty KV cache, and inside a
window token i predicts token i+1, so a window of n tokens contributes n-1
predictions. The reported ``nll`` is the mean over all predictions of
``-log softmax(logits)[next_token]``, computed in float64 from llama.cpp's
float32 logits (obtained with ``logits_all=True``).

Each model is loaded with
``llama_cpp.Llama(model_path=..., n_ctx=512, n_threads=2, logits_all=True, verbose=False)``.
The table key for a model is its file stem after the first '-'
(``smollm2-q4_k_m.gguf`` -> ``q4_k_m``). For each model the table records
``nll``, ``mb`` (file size in units of 10**6 bytes) and ``types`` (number of
tensors per GGML type, read with gguf-py's GGUFReader).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import numpy as np

import llama_cpp
from gguf import GGUFReader

WINDOW = 512


def read_sequences(path: str) -> list[list[int]]:
    seqs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                seqs.append([int(t) for t in json.loads(line)])
    return seqs


def windows(seqs: list[list[int]], size: int = WINDOW):
    for seq in seqs:
        for start in range(0, len(seq), size):
            chunk = seq[start:start + size]
            if len(chunk) >= 2:
                yield chunk


def tensor_type_counts(path: str) -> dict[str, int]:
    reader = GGUFReader(path)
    counts = collections.Counter(t.tensor_type.name for t in reader.tensors)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def model_nll(model_path: str, seqs: list[list[int]], lora_path: str | None = None,
              llm=None) -> tuple[float, int]:
    """Return (mean NLL per predicted token, number of predicted tokens); `lora_path` applies a
    LoRA adapter GGUF at run time; `llm` scores with a model already loaded."""
    llm = llm or llama_cpp.Llama(model_path=model_path, lora_path=lora_path, n_ctx=WINDOW, n_threads=2,
                                 logits_all=True, verbose=False)
    total = 0.0
    count = 0
    for chunk in windows(seqs):
        llm.reset()  # next eval starts at position 0, dropping the old cache
        llm.eval(chunk)
        logits = np.array(llm.scores[: len(chunk) - 1], dtype=np.float64)
        peak = logits.max(axis=1, keepdims=True)
        logz = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
        targets = np.asarray(chunk[1:])
        total += float((logz - logits[np.arange(len(targets)), targets]).sum())
        count += len(targets)
    return total / count, count


def label_for(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem.split("-", 1)[-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tokens", help="JSONL file, one list of token ids per line")
    ap.add_argument("models", nargs="+", help="GGUF files to score")
    ap.add_argument("--out", help="write the table as JSON here")
    args = ap.parse_args(argv)

    seqs = read_sequences(args.tokens)
    table = {}
    for path in args.models:
        t0 = time.time()
        nll, n = model_nll(path, seqs)
        table[label_for(path)] = {
            "nll": nll,
            "mb": os.path.getsize(path) / 1e6,
            "types": tensor_type_counts(path),
        }
        print(f"{label_for(path):8s} nll={nll:.6f} ppl={np.exp(nll):8.3f} "
              f"tokens={n} mb={table[label_for(path)]['mb']:.1f} "
              f"({time.time() - t0:.1f}s)", flush=True)

    if args.out:
        with open(args.out, "w") as f:
            json.dump(table, f, indent=2)
            f.write("\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
