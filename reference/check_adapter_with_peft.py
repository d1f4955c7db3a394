#!/usr/bin/env python3
"""Loads a Finch-trained LoRA adapter with peft on the transformers model and compares
perplexity with `finch perplexity --adapter` on the same token ids.

Usage: python3 reference/check_adapter_with_peft.py GGUF ADAPTER_DIR TOKEN_IDS.jsonl [--finch .build/release/finch]
Prints both NLLs and their relative difference (the issue asks for <= 1e-3).
"""
import argparse
import json
import math
import os
import subprocess

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("adapter")
    ap.add_argument("token_ids")
    ap.add_argument("--finch", default=".build/release/finch")
    args = ap.parse_args()
    torch.set_num_threads(2)
    folder, name = os.path.split(os.path.abspath(args.gguf))
    base = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(base, args.adapter).eval()
    total, count = 0.0, 0
    with open(args.token_ids) as f:
        for line in f:
            if not line.strip():
                continue
            ids = torch.tensor([json.loads(line)])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
            total += nll.item()
            count += ids.shape[1] - 1
    hf = total / count
    out = subprocess.run([args.finch, "perplexity", "--model", args.gguf, "--adapter", args.adapter,
                          "--token-ids", args.token_ids, "--json"], capture_output=True, text=True, check=True).stdout
    finch = json.loads(out)
    print(f"peft + transformers: nll {hf:.6f} over {count} tokens (perplexity {math.exp(hf):.4f})")
    print(f"finch:               nll {finch['nll']:.6f} over {finch['tokens']} tokens (perplexity {finch['perplexity']:.4f})")
    print(f"relative difference: {abs(finch['nll'] - hf) / hf:.2e}")


if __name__ == "__main__":
    main()
