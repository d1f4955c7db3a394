#!/usr/bin/env python3
"""Checks that a Phi-3 model merged by `finch export` loads in transformers with the adapter's
effect: exports the `phi3_longrope` parity fixture with its PEFT adapter merged (joined
qkv_proj / gate_up_proj, partial rotary factor, LongRoPE), reads it with
AutoModelForCausalLM and compares its logits with PEFT's (`lora_logits` of the fixture).

Usage: python3 reference/check_phi3_export.py [--finch .build/release/finch]
Prints the largest logit difference relative to the largest logit (PASS below 1e-4).
"""
import argparse
import os
import subprocess
import tempfile

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "Tests", "FinchTestSupport", "Fixtures", "parity", "phi3_longrope")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--finch", default=os.path.join(REPO, ".build", "release", "finch"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        out = os.path.join(work, "merged")
        subprocess.run([args.finch, "export", "--model", FIXTURE, "--adapter", os.path.join(FIXTURE, "adapter"),
                        "--format", "hf", "--output", out], check=True)
        expected = load_file(os.path.join(FIXTURE, "expected.safetensors"))
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
        with torch.no_grad():
            logits = model(input_ids=expected["input_ids"].long(), attention_mask=expected["attention_mask"].long()).logits
        reference = expected["lora_logits"]
        gap = ((logits - reference).abs().max() / reference.abs().max()).item()
        print(f"phi3 merged export vs PEFT: max |logit difference| / max |logit| = {gap:.2e}",
              "PASS" if gap < 1e-4 else "FAIL")


if __name__ == "__main__":
    main()
