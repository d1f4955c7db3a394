#!/usr/bin/env python3
"""Finch's sgemm next to PyTorch's matmul on SmolLM2-135M's shapes, in one run.

Alternates `finch bench gemm` and bench/torch_gemm.py for --rounds rounds (the machine is
shared and noisy, so each side gets the same conditions), keeps each side's best figure per
shape, and prints a table with the ratio. Build Finch first: swift build -c release.

Usage: python3 bench/compare_gemm.py [--rounds 3] [--finch .build/release/finch]
"""
import argparse
import re
import subprocess
import sys
from pathlib import Path

LINE = re.compile(r"(\w+) sgemm (\d+x\d+x\d+): ([\d.]+) GFLOP/s")


def run(command):
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return {m.group(2): float(m.group(3)) for m in LINE.finditer(out)}, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--finch", default=str(Path(__file__).resolve().parent.parent / ".build/release/finch"))
    args = ap.parse_args()
    best = {"finch": {}, "torch": {}}
    blas = ""
    for _ in range(args.rounds):
        for side, command in (("finch", [args.finch, "bench", "gemm"]),
                              ("torch", [sys.executable, str(Path(__file__).parent / "torch_gemm.py")])):
            figures, out = run(command)
            if side == "finch":
                blas = out.splitlines()[0]
            for shape, value in figures.items():
                best[side][shape] = max(best[side].get(shape, 0.0), value)
    import torch
    print(f"# {blas}")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads; best of {args.rounds} alternating rounds")
    print(f"{'shape (MxNxK)':<18} {'finch GFLOP/s':>14} {'torch GFLOP/s':>14} {'finch/torch':>12}")
    for shape in best["finch"]:
        f, t = best["finch"][shape], best["torch"].get(shape, float("nan"))
        print(f"{shape:<18} {f:>14.1f} {t:>14.1f} {f / t:>11.0%}")


if __name__ == "__main__":
    main()
