"""Encode speed of Finch's tokenizer next to HF `tokenizers`, single thread, same text, one run.

The text (about --mb megabytes) is half Python standard-library source (varied identifiers,
indentation, comments: few repeated words) and half the tokenizer parity corpus (several
scripts, emoji, whitespace runs) shuffled with a fixed seed, written to a temporary file.
HF encodes it as one string with TOKENIZERS_PARALLELISM=false; Finch runs
`finch tokenize --bench FILE`. Both report the first (cold word cache) run and the best of
--repeats warm runs.

Usage:
  swift build -c release --product finch
  python3 bench/tokenizer_speed.py [--finch .build/release/finch] [--mb 2] [TOKENIZER ...]

TOKENIZER is an HF folder (tokenizer.json) or a .gguf (compared with the tokenizer.json
converted from it, see reference/make_tokenizer_fixtures.py). By default: the committed
SmolLM2 and Llama 2 folders, and Llama 3, Qwen2 and GPT-2 when converted into the cache.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("RAYON_NUM_THREADS", "1")
from tokenizers import Tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "Tests/FinchTestSupport/Fixtures/tokenizers"
CACHE = Path(os.environ.get("FINCH_CACHE", Path.home() / ".cache/finch"))


def corpus_text(megabytes, seed=0):
    texts = []
    for path in sorted((FIXTURES / "parity").glob("*.json")):
        texts += [c["text"] for c in json.loads(path.read_text(encoding="utf-8"))["cases"] if c["text"]]
    texts = sorted(set(texts))
    rng = random.Random(seed)
    half = megabytes * 500_000
    out, size = [], 0
    for source in sorted(Path(os.__file__).parent.glob("*.py")):
        code = source.read_text(encoding="utf-8", errors="replace")
        out.append(code)
        size += len(code.encode())
        if size >= half:
            break
    while size < 2 * half:
        line = rng.choice(texts)
        out.append(line)
        size += len(line.encode()) + 1
    return "\n".join(out)


def hf_speed(tokenizer_json, text, repeats):
    tok = Tokenizer.from_file(str(tokenizer_json))
    start = time.perf_counter()
    count = len(tok.encode(text, add_special_tokens=False).ids)
    cold = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tok.encode(text, add_special_tokens=False)
        best = min(best, time.perf_counter() - start)
    return count, count / cold, count / best


def finch_speed(finch, tokenizer, text_file, repeats):
    result = subprocess.run([finch, "tokenize", "--tokenizer", str(tokenizer), "--bench", text_file,
                             "--bench-repeats", str(repeats)], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"finch failed: {result.stderr.strip()}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report["tokens"], report["cold_tokens_per_second"], report["tokens_per_second"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tokenizers", nargs="*")
    parser.add_argument("--finch", default=str(ROOT / ".build/release/finch"))
    parser.add_argument("--mb", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    pairs = []  # (label, finch path, HF tokenizer.json)
    if args.tokenizers:
        for t in args.tokenizers:
            p = Path(t)
            if p.suffix == ".gguf":
                name = {"ggml-vocab-llama-bpe": "llama3", "ggml-vocab-gpt-2": "gpt2", "ggml-vocab-qwen2": "qwen2",
                        "ggml-vocab-llama-spm": "llama2"}.get(p.stem)
                hf = FIXTURES / f"hf/{name}" if name == "llama2" else CACHE / f"tokenizers/hf/{name}"
                if p.stem.startswith("SmolLM2"):
                    hf = FIXTURES / "hf/smollm2"
                pairs.append((p.name, p, hf / "tokenizer.json"))
            else:
                pairs.append((p.name, p, p / "tokenizer.json"))
    else:
        candidates = [("smollm2", FIXTURES / "hf/smollm2"), ("llama2", FIXTURES / "hf/llama2"),
                      ("llama3", CACHE / "tokenizers/hf/llama3"), ("qwen2", CACHE / "tokenizers/hf/qwen2"),
                      ("gpt2", CACHE / "tokenizers/hf/gpt2")]
        pairs = [(name, d, d / "tokenizer.json") for name, d in candidates if (d / "tokenizer.json").exists()]

    text = corpus_text(args.mb)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write(text)
        text_file = f.name
    try:
        print(f"text: {len(text.encode()) / 1e6:.2f} MB, {len(text):,} characters; best of {args.repeats} warm runs, one thread")
        print(f"{'':<24} {'':>9} {'---------- cold ----------':>36} {'---------- warm ----------':>36}")
        print(f"{'tokenizer':<24} {'tokens':>9} {'HF tok/s':>12} {'Finch tok/s':>12} {'Finch/HF':>10} {'HF tok/s':>12} {'Finch tok/s':>12} {'Finch/HF':>10}")
        for label, finch_path, hf_json in pairs:
            hf_count, hf_cold, hf_warm = hf_speed(hf_json, text, args.repeats)
            count, cold, warm = finch_speed(args.finch, finch_path, text_file, args.repeats)
            same = "" if hf_count == count else f"  (token counts differ: HF {hf_count}, Finch {count})"
            print(f"{label:<24} {count:>9,} {hf_cold:>12,.0f} {cold:>12,.0f} {cold / hf_cold:>9.2f}x "
                  f"{hf_warm:>12,.0f} {warm:>12,.0f} {warm / hf_warm:>9.2f}x{same}")
    finally:
        os.unlink(text_file)


if __name__ == "__main__":
    main()
