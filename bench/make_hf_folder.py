#!/usr/bin/env python3
"""Writes an f32 HF model folder (config, model.safetensors, tokenizer) from a GGUF file, so that
the Python stacks of bench/compare_training.py train on exactly the weights Finch reads.
transformers dequantizes the GGUF on load but refuses to save a gguf-loaded model, so the
weights are copied into a fresh model built from the same config.

Usage: python3 bench/make_hf_folder.py MODEL.gguf OUTPUT_FOLDER
"""
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    gguf, out = sys.argv[1], sys.argv[2]
    folder, name = os.path.split(os.path.abspath(gguf))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    x = torch.tensor([tok("The capital of France is")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits), "copied model differs from the GGUF load"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    print(out)


if __name__ == "__main__":
    main()
