#!/usr/bin/env python3
"""Checks `finch export --format gguf-lora` in llama.cpp: base GGUF + the LoRA GGUF, applied by
llama.cpp at run time (llama-cpp-python's `lora_path`), against Finch's own model + PEFT adapter
and against llama.cpp on Finch's merged export.

Prints the NLL on held-out token ids of:
  - `finch perplexity --model BASE --adapter ADAPTER` (Finch, adapter unmerged);
  - llama.cpp with BASE and the adapter GGUF Finch wrote (`lora_path=`);
  - llama.cpp on `finch export --format gguf --adapter ADAPTER` (merged, f32);
  - llama.cpp on BASE alone (the adapter must move the NLL for the check to mean anything);
and a greedy chat reply through the adapter.

Usage: python3 reference/check_gguf_lora.py BASE.gguf ADAPTER_DIR TOKEN_IDS.jsonl [--finch .build/release/finch]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import llama_cpp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llamacpp_nll


def llama_nll(model, seqs, lora=None):
    llm = llama_cpp.Llama(model_path=model, lora_path=lora, n_ctx=llamacpp_nll.WINDOW, n_threads=2, logits_all=True, verbose=False)
    nll, _ = llamacpp_nll.model_nll(model, seqs, llm=llm)
    reply = llm.create_chat_completion([{"role": "user", "content": "What is the capital of France?"}], max_tokens=24, temperature=0)
    return nll, reply["choices"][0]["message"]["content"].strip().replace("\n", " ")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("adapter")
    ap.add_argument("token_ids")
    ap.add_argument("--finch", default=".build/release/finch")
    args = ap.parse_args()
    seqs = llamacpp_nll.read_sequences(args.token_ids)
    work = tempfile.mkdtemp(prefix="finch-lora-")
    lora, merged = os.path.join(work, "adapter.gguf"), os.path.join(work, "merged.gguf")
    subprocess.run([args.finch, "export", "--model", args.base, "--adapter", args.adapter, "--format", "gguf-lora", "--output", lora], check=True)
    subprocess.run([args.finch, "export", "--model", args.base, "--adapter", args.adapter, "--format", "gguf", "--output", merged], check=True)
    finch = json.loads(subprocess.run([args.finch, "perplexity", "--model", args.base, "--adapter", args.adapter, "--token-ids",
                                       args.token_ids, "--json"], check=True, capture_output=True, text=True).stdout)["nll"]
    with_lora, reply = llama_nll(args.base, seqs, lora)
    on_merged, _ = llama_nll(merged, seqs)
    base, base_reply = llama_nll(args.base, seqs)
    print(f"Finch, base + PEFT adapter:        NLL {finch:.6f}")
    print(f"llama.cpp, base + adapter GGUF:    NLL {with_lora:.6f}  ({with_lora / finch - 1:+.2e} vs Finch)")
    print(f"llama.cpp, Finch's merged GGUF:    NLL {on_merged:.6f}  ({on_merged / finch - 1:+.2e} vs Finch)")
    print(f"llama.cpp, base alone:             NLL {base:.6f}  ({base / finch - 1:+.2e} vs Finch)")
    print(f"reply with the adapter: {reply!r}")
    print(f"reply of the base:      {base_reply!r}")


if __name__ == "__main__":
    main()
