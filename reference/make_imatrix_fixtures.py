#!/usr/bin/env python3
"""Importance-matrix fixtures for ImatrixTests (Tests/FinchTestSupport/Fixtures/imatrix/).

For the tiny parity models llama_tied (dense), phi3_short (q, k, v joined as qkv_proj; gate, up as
gate_up_proj) and mixtral_moe (4 experts, top 2): `ids.json`, 76 random token ids (3 chunks of 24,
the last 4 ids dropped as llama-imatrix drops a partial chunk), and `<model>.gguf`, the importance
matrix reference/make_imatrix.py computes from transformers for them (chunk 24, BOS id 1 at the
start of every chunk).

Usage: python3 reference/make_imatrix_fixtures.py
"""
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "Tests", "FinchTestSupport", "Fixtures", "imatrix")
MODELS = ["llama_tied", "phi3_short", "mixtral_moe"]


def main():
    os.makedirs(OUT, exist_ok=True)
    ids = np.random.default_rng(20261204).integers(3, 128, size=76).tolist()
    with open(os.path.join(OUT, "ids.json"), "w") as f:
        json.dump(ids, f)
    for model in MODELS:
        subprocess.run([sys.executable, os.path.join(REPO, "reference", "make_imatrix.py"),
                        os.path.join(REPO, "Tests", "FinchTestSupport", "Fixtures", "parity", model),
                        "--token-ids", os.path.join(OUT, "ids.json"), "--bos", "1", "--ctx", "24",
                        "--output", os.path.join(OUT, f"{model}.gguf")], check=True)


if __name__ == "__main__":
    main()
