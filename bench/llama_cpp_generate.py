#!/usr/bin/env python3
"""Decode speed of llama.cpp (through llama-cpp-python) on a GGUF, measured as bench/hf_generate.py
measures transformers: the same prompt ids (--ids, written by hf_generate.py --dump-ids), greedy
(top_k 1), batch 1, --new tokens with EOS ignored; decode tok/s = (new - 1) / (time of the last
token - time of the first token), median of --runs after one warm-up run.

Usage: python3 bench/llama_cpp_generate.py --gguf M.gguf --ids ids.json [--new 128] [--runs 3] [--threads 2]
"""
import argparse
import json
import statistics
import time

import llama_cpp
from llama_cpp import Llama


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--ids", required=True)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    ids = json.load(open(args.ids))
    llm = Llama(model_path=args.gguf, n_ctx=len(ids) + args.new + 8, n_threads=args.threads,
                n_threads_batch=args.threads, n_batch=512, verbose=False)

    def run():
        stamps, tokens = [], []
        start = time.perf_counter()
        for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            stamps.append(time.perf_counter())
            tokens.append(token)
            if len(tokens) == args.new:
                break
        return stamps[0] - start, (args.new - 1) / (stamps[-1] - stamps[0]), tokens

    run()
    results = [run() for _ in range(args.runs)]
    prefill = statistics.median(r[0] for r in results)
    decode = statistics.median(r[1] for r in results)
    print(f"llama.cpp generate: prefill {len(ids) / prefill:.1f} tok/s, decode {decode:.1f} tok/s "
          f"(llama-cpp-python {llama_cpp.__version__}, {args.threads} threads, prompt {len(ids)}, new {args.new}, "
          f"median of {args.runs})")


if __name__ == "__main__":
    main()
