#!/usr/bin/env python3
"""sgemm throughput of torch on CPU, as a baseline for Finch's matmul kernels.

C[M,N] = A[M,K] @ B[K,N], fp32, row-major contiguous. Reports the median of --reps
timed runs after --warmup untimed ones, as GFLOP/s = 2*M*N*K / seconds / 1e9.

Usage: python3 bench/torch_gemm.py [--threads 2] [--reps 5] [--json out.json]
"""
import argparse
import json
import statistics
import time

import torch

SHAPES = [(2048, 576, 576), (2048, 1536, 576), (2048, 49152, 576)]  # M, N, K


def bench(m, n, k, warmup, reps, min_time):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g)
    b = torch.randn(k, n, generator=g)
    c = torch.empty(m, n)
    for _ in range(warmup):
        torch.matmul(a, b, out=c)
    times = []
    t_start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - t_start < min_time and len(times) < 100):
        t0 = time.perf_counter()
        torch.matmul(a, b, out=c)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return 2.0 * m * n * k / med / 1e9, med, len(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=1.0, help="keep timing until this many seconds")
    ap.add_argument("--json", help="also write results to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for m, n, k in SHAPES:
        gflops, med, count = bench(m, n, k, args.warmup, args.reps, args.min_time)
        print(f"torch sgemm {m}x{n}x{k}: {gflops:.1f} GFLOP/s", flush=True)
        results.append({"m": m, "n": n, "k": k, "gflops": gflops, "median_s": med, "reps": count})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": args.threads,
                       "results": results}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
