#!/usr/bin/env python3
"""Checks Finch's `phi3` GGUF against llama.cpp: exports the `phi3_longrope` parity fixture
(joined qkv / gate_up, partial rotary factor 0.5, LongRoPE past its original context of 8) with
`finch export --format gguf`, marks it with gguf-py as having no vocabulary (the fixture has no
tokenizer, and llama.cpp refuses a file without tokenizer keys), evaluates the fixture's token ids with
llama-cpp-python (n_ctx 64 > 8: llama.cpp takes the long factors, as transformers does for the
9-token rows) and compares every position's logits with transformers' (`logits` of the fixture).

Usage: python3 reference/check_phi3_gguf.py [--finch .build/release/finch]
Prints the largest logit difference relative to the largest logit per row (PASS below 1e-5;
llama.cpp's KV cache is set to f32: its default f16 cache alone moves the logits by ~4e-4).
"""
import argparse
import os
import subprocess
import tempfile

import numpy as np
from gguf import GGUFReader, GGUFWriter, GGUFValueType
from safetensors.numpy import load_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "Tests", "FinchTestSupport", "Fixtures", "parity", "phi3_longrope")


def with_placeholder_vocab(source, target, vocab):
    """A copy of `source` that declares no vocabulary (tokenizer model "none"), which llama.cpp
    loads where it refuses a file without tokenizer keys."""
    reader = GGUFReader(source)
    writer = GGUFWriter(target, arch=str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8"))
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        kind = field.types[0]
        if kind == GGUFValueType.STRING:
            writer.add_string(name, str(bytes(field.parts[-1]), "utf-8"))
        elif kind == GGUFValueType.UINT32:
            writer.add_uint32(name, int(field.parts[-1][0]))
        elif kind == GGUFValueType.FLOAT32:
            writer.add_float32(name, float(field.parts[-1][0]))
        else:
            raise SystemExit(f"unexpected metadata type {kind} for {name}")
    # llama.cpp's vocabulary type "none": a model without a tokenizer, fed token ids directly.
    writer.add_tokenizer_model("none")
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.array(tensor.data).reshape([int(d) for d in reversed(tensor.shape)]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def llama_cpp_logit_gap(path, ids, mask, logits, verbose=False):
    """llama-cpp-python's logits for each row's real tokens (f32 KV cache) against `logits`: the
    largest difference relative to the row's largest logit, over the rows."""
    from llama_cpp import Llama
    llm = Llama(model_path=path, n_ctx=64, logits_all=True, verbose=False, n_threads=2, type_k=0, type_v=0)  # f32 KV cache
    worst = 0.0
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        llm.reset()
        llm.eval(ids[row, :n].tolist())
        got = np.array(llm.eval_logits)[:n]
        gap = float(np.abs(got - logits[row, :n]).max() / np.abs(logits[row, :n]).max())
        if verbose:
            print(f"row {row}: {n} tokens, max |llama.cpp - transformers| / max |logit| = {gap:.2e}")
        worst = max(worst, gap)
    return worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--finch", default=os.path.join(REPO, ".build", "release", "finch"))
    args = ap.parse_args()
    expected = load_file(os.path.join(FIXTURE, "expected.safetensors"))
    ids, mask, logits = expected["input_ids"].astype(int), expected["attention_mask"], expected["logits"]
    with tempfile.TemporaryDirectory() as work:
        plain, full = os.path.join(work, "phi3.gguf"), os.path.join(work, "phi3-vocab.gguf")
        subprocess.run([args.finch, "export", "--model", FIXTURE, "--format", "gguf", "--output", plain], check=True)
        with_placeholder_vocab(plain, full, logits.shape[-1])
        worst = llama_cpp_logit_gap(full, ids, mask, logits, verbose=True)
        print("phi3 GGUF in llama.cpp vs transformers:", "PASS" if worst < 1e-5 else "FAIL", f"({worst:.2e})")


if __name__ == "__main__":
    main()
