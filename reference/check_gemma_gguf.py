#!/usr/bin/env python3
"""Reads Finch's GGUF exports of the Gemma parity fixtures with transformers (`gguf_file=`).

For gemma2_softcap and gemma3_sliding: `finch export --format gguf`, then the loss on the
fixture batch of (a) the HF folder, (b) transformers' model from the GGUF, (c) the GGUF's
weights under the HF folder's config. (c) equal to (a) means the tensors (names, norms stored
as 1 + w) are right; (b) differs where transformers' GGUF reader ignores a setting, which this
prints from the config it built: it reads neither query_pre_attn_scalar nor the softcap keys
nor a layer pattern nor rope scaling (reference/GEMMA_SEMANTICS.md, section 5).

Usage: python3 reference/check_gemma_gguf.py [--finch .build/release/finch] [--workdir DIR]
"""
import argparse
import os
import subprocess
import tempfile
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")
warnings.filterwarnings("ignore")

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(__file__), "..", "Tests", "FinchTestSupport", "Fixtures", "parity")
KEYS = ["query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping", "sliding_window", "layer_types", "rope_parameters"]


def loss(model, e):
    with torch.no_grad():
        return model(input_ids=e["input_ids"].long(), attention_mask=e["attention_mask"].long(), labels=e["labels"].long()).loss.item()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--finch", default=".build/release/finch")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="finch-gemma-gguf-")
    for name in ["gemma2_softcap", "gemma3_sliding"]:
        folder = os.path.join(ROOT, name)
        path = os.path.join(work, name + ".gguf")
        if os.path.exists(path):
            os.remove(path)
        subprocess.run([args.finch, "export", "--model", folder, "--format", "gguf", "--output", path], check=True, capture_output=True)
        e = load_file(os.path.join(folder, "expected.safetensors"))
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
        gg = AutoModelForCausalLM.from_pretrained(work, gguf_file=name + ".gguf", dtype=torch.float32, attn_implementation="eager")
        under_hf = type(hf)(hf.config).eval()
        under_hf.load_state_dict(gg.state_dict(), strict=False)
        a, b, c = loss(hf, e), loss(gg, e), loss(under_hf, e)
        print(f"{name}: HF folder {a:.7f}; transformers from GGUF {b:.7f} ({abs(b - a) / a:.1e} rel); "
              f"GGUF weights under the HF config {c:.7f} ({abs(c - a) / a:.1e} rel)")
        for key in KEYS:
            mine, theirs = getattr(hf.config, key, None), getattr(gg.config, key, None)
            if mine != theirs:
                print(f"  transformers read {key} = {theirs!r} from the GGUF; the model has {mine!r}")


if __name__ == "__main__":
    main()
