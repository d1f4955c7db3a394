#!/usr/bin/env python3
"""The side-by-side table of issues 7 and 16: Finch, the HF stack (transformers + peft + TRL) and
Unsloth's CPU path on the same configurations, in one run, with issue 16's targets checked.

Every measurement runs in its own subprocess, so peak RSS (ru_maxrss from os.wait4) is that
process's own: model load, training and all. The machine is shared and noisy, so read the
ratios, which come from the same run, rather than the absolute figures; the load average
at the start of each row is recorded.

Rows:
  gemm     `finch bench peak` measures this CPU's fp32 FMA and bf16 peaks (AMX tiles or AVX512_BF16 dots); `finch bench
           gemm` (fp32, bf16 and OpenBLAS) and bench/torch_gemm.py run SmolLM2's shapes. MFU =
           achieved model GFLOP/s / the peak of the run's precision (bf16 runs: the bf16 peak).
  orpo     2 pairs x 256 tokens per step (4 rows of 256; 64 prompt tokens masked).
  sft      4 rows x 512 tokens per step.
           Finch: `finch bench step --method M --optimizer` (Trainer, Finch's own objective,
           clipping and AdamW); the HF stack and Unsloth: bench/py_train_step.py (TRL's
           ORPOTrainer / SFTTrainer; Unsloth with its own defaults). All: SmolLM2-135M-Instruct's
           weights (Finch reads the Q4_1 GGUF and, as the model is small, dequantizes it at load;
           the Python stacks read the same weights dequantized into an f32 HF folder made once
           from that GGUF), LoRA r16 alpha 32 on all seven projections, lr 1e-4.
           Precision: the HF stack twice, at TRL's default (bf16=True: autocast) and in fp32;
           Unsloth in fp32 as in the earlier tables; Finch at its default (--precision auto:
           bf16 where the CPU computes it natively) in four rows (FINCH_SETTINGS): the step as
           one batch; as micro-batches of one row / one pair (`--micro-batch 1`: exact
           accumulation, the same update, a quarter / half of the activations); that with the
           4-bit base kept quantized (`--keep-quantized`, finch-lean); and one batch in fp32.
  decode   prompt 128 + 128 new tokens, greedy, batch 1: `finch bench decode` (when the binary
           has it) with exact f32 activations and with `--int8-activations` (activations rounded
           to 8 bits per block of 32, as llama.cpp multiplies), bench/hf_generate.py, and
           llama-cpp-python on the same GGUF.
  scale    `finch bench step --shape llama3.2-1b --base q4_0 --method sft --optimizer`,
           1 x 2048 tokens (random weights, 4-bit base): step time and peak RSS.

FLOPs (model_flops below, the same for every system; the formula of Finch's
Benchmarks.stepFLOPs): with N tokens per step (rows x seq), per layer the weight matmuls
P_layer = C*(q + 2*kv) + q*C + 3*C*I, P = L*P_layer + V*C (the head), LoRA per layer
R = r * ((C+q) + 2*(C+kv) + (q+C) + 3*(C+I)), and attention 2*seq*q*L per token (QK^T and PV,
counted in full although causal):
  forward  = 2*N*(P + 2*seq*q*L) + 2*N*L*R
  backward = forward + 2 * 2*N*L*R          (input gradients everywhere, weight gradients for LoRA only)
  step     = forward + backward
Gradient checkpointing's recomputation is not counted (it is not model work).

Usage: python3 bench/compare_training.py [--reps 2] [--only finch,hf,unsloth] [--configs orpo,sft,decode,scale]
"""
import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
CACHE = Path.home() / ".cache" / "finch"
GGUF = CACHE / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
HF_FOLDER = CACHE / "bench" / "smollm2-135m-f32"
UNSLOTH_PYTHON = CACHE / "bench" / "unsloth-venv" / "bin" / "python"
LLAMA_PYTHON = CACHE / "bench" / "llama-venv" / "bin" / "python"
GB = 1e9

SMOLLM2 = dict(C=576, I=1536, L=30, heads=9, kv_heads=3, V=49152)
LLAMA32_1B = dict(C=2048, I=8192, L=16, heads=32, kv_heads=8, V=128256)
CONFIGS = {  # name: (method, batch (rows for sft, pairs for orpo), seq)
    "orpo": ("orpo", 2, 256),
    "sft": ("sft", 4, 512),
}
PROMPT_LENGTH = 64
# Finch's rows of each training config: one batch at the default precision (auto: bf16 where
# the CPU computes it natively); micro-batches of one row / pair (exact accumulation: the same
# update); those with the 4-bit base kept quantized; and the one batch in fp32.
FINCH_SETTINGS = ("finch", "finch-micro", "finch-lean", "finch-fp32")

# Issue 16's targets (the HF stack at TRL's default precision, bf16=True, and in fp32).
ORPO_VS_HF = 2.5
ORPO_VS_HF_FP32 = 5.0
SFT_VS_UNSLOTH = 3.0
SFT_VS_HF = 2.5
RSS_VS_HF = 0.50
RSS_VS_UNSLOTH = 0.50
GEMM_FP32_OF_PEAK = 0.80
GEMM_BF16_OF_PEAK = 0.70
DECODE_VS_HF = 3.0
SCALE_RSS = 8e9


def model_flops(shape, rows, seq, lora_rank=16):
    """Matmul FLOPs of one LoRA training step (see the module docstring)."""
    C, I, L, V = shape["C"], shape["I"], shape["L"], shape["V"]
    head_dim = C // shape["heads"]
    q, kv = shape["heads"] * head_dim, shape["kv_heads"] * head_dim
    n = rows * seq
    weights = L * (C * (q + 2 * kv) + q * C + 3 * C * I) + V * C
    attention = 2 * seq * q * L
    lora = 2 * n * L * lora_rank * ((C + q) + 2 * (C + kv) + (q + C) + 3 * (C + I))
    forward = 2 * n * (weights + attention) + lora
    backward = forward + 2 * lora
    return forward + backward


def run_child(command, env=None, timeout=None):
    """Runs `command`; returns (exit code, output, peak RSS in bytes of that process, wall seconds)."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        p = subprocess.Popen([str(c) for c in command], stdout=out, stderr=subprocess.STDOUT,
                             env={**os.environ, **(env or {})}, cwd=ROOT)
        timer = threading.Timer(timeout, p.kill) if timeout else None
        if timer:
            timer.start()
        _, status, usage = os.wait4(p.pid, 0)
        if timer:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        text = out.read().decode(errors="replace")
    return p.returncode, text, usage.ru_maxrss * 1024, wall


def last_lines(text, n=3):
    return " | ".join(line.strip() for line in text.strip().splitlines()[-n:])[-400:]


def load():
    return os.getloadavg()[0]


class Harness:
    def __init__(self, args):
        self.args = args
        self.rows = []       # dicts: config, system, s_step, tok_s, rss, gflops, mfu, note
        self.gemm = {}       # system -> {shape: GFLOP/s}
        self.peaks = {}      # "fp32" / "bf16" -> GFLOP/s measured by `finch bench peak`
        self.cpu = ""
        self.targets = []    # (target, value, pass or None, note)
        self.thread_env = {"OMP_NUM_THREADS": str(args.threads), "OPENBLAS_NUM_THREADS": str(args.threads),
                           "MKL_NUM_THREADS": str(args.threads)}

    def wanted(self, system):
        return system in self.args.only

    def log(self, message):
        print(f"[{datetime.datetime.now():%H:%M:%S} load {load():.1f}] {message}", file=sys.stderr, flush=True)

    def add(self, config, system, **figures):
        row = dict(config=config, system=system, load=round(load(), 1), **figures)
        self.rows.append(row)
        self.log(f"{config} {system}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
        return row

    # Peaks and GEMM ------------------------------------------------------------------------
    def run_gemm(self):
        """This CPU's measured peaks (`finch bench peak`), then GEMM on SmolLM2's shapes: Finch fp32,
        bf16 and OpenBLAS (`finch bench gemm`), and torch's fp32 matmul."""
        rc, out, _, _ = run_child([self.args.finch, "bench", "peak"], env=self.thread_env, timeout=600)
        for m in re.finditer(r"finch peak (fp32|bf16) \(.*?\): ([\d.]+) GFLOP/s", out):
            self.peaks[m.group(1)] = float(m.group(2))
        cpu = re.search(r"^CPU: (.*)$", out, re.M)
        self.cpu = cpu.group(1) if cpu else ""
        self.log(f"peaks: {self.peaks}; {self.cpu}")
        finch_line = re.compile(r"finch gemm (fp32 OpenBLAS|fp32|bf16) (\d+x\d+x\d+): ([\d.]+) GFLOP/s")
        rc, out, _, _ = run_child([self.args.finch, "bench", "gemm", "--repetitions", max(self.args.reps, 3)],
                                  env=self.thread_env, timeout=600)
        for m in finch_line.finditer(out):
            self.gemm.setdefault(f"finch {m.group(1)}", {})[m.group(2)] = float(m.group(3))
        rc, out, _, _ = run_child([sys.executable, BENCH / "torch_gemm.py", "--reps", max(self.args.reps, 3),
                                   "--threads", self.args.threads, "--min-time", 0.5], env=self.thread_env, timeout=600)
        if rc == 0:
            self.gemm["torch fp32"] = {m.group(1): float(m.group(2))
                                       for m in re.finditer(r"torch sgemm (\d+x\d+x\d+): ([\d.]+) GFLOP/s", out)}
        self.log(f"gemm: {self.gemm}")

    def peak(self, precision):
        """The peak a run in `precision` is measured against: bf16's where the CPU has it."""
        return self.peaks.get(precision) or self.peaks.get("fp32")

    # Training rows --------------------------------------------------------------------------
    def training_row(self, config, system, command, env, rows, seq, shape=SMOLLM2, parse=None, timeout=3600):
        rc, out, rss, wall = run_child(command, env={**self.thread_env, **env}, timeout=timeout)
        if rc != 0:
            return self.add(config, system, note=f"failed (exit {rc}): {last_lines(out)}")
        seconds, precision = parse(out)
        flops = model_flops(shape, rows, seq)
        gflops = flops / seconds / 1e9
        peak = self.peak(precision)
        return self.add(config, system, precision=precision, s_step=round(seconds, 3), tok_s=round(rows * seq / seconds, 1),
                        rss_gb=round(rss / GB, 2), gflops=round(gflops, 1),
                        mfu=round(gflops / peak, 3) if peak else None, wall_s=round(wall))

    @staticmethod
    def parse_finch(out):
        m = re.search(r"finch train step .*?: ([\d.]+) s/step", out)
        if not m:
            raise RuntimeError(f"no step line in: {last_lines(out)}")
        p = re.search(r"; precision (fp32|bf16) ", out)
        return float(m.group(1)), p.group(1) if p else "fp32"

    @staticmethod
    def parse_python(out):
        line = next(l for l in out.splitlines() if l.startswith("RESULT "))
        result = json.loads(line[len("RESULT "):])
        return result["seconds_per_step"], "bf16" if result.get("bf16") else "fp32"

    def run_training(self, config):
        method, batch, seq = CONFIGS[config]
        rows = 2 * batch if method == "orpo" else batch
        reps = self.args.reps
        if self.wanted("finch"):
            self.training_row(config, "finch", [self.args.finch, "bench", "step", "--model", GGUF, "--method", method,
                                                "--batch", batch, "--seq", seq, "--prompt-length", PROMPT_LENGTH,
                                                "--optimizer", "--repetitions", reps],
                              {}, rows, seq, parse=self.parse_finch)
            # The same step in micro-batches of one row (SFT) or one pair (ORPO): exact accumulation,
            # so the same update with a quarter / half of the activations; and that with the 4-bit
            # base kept as it is (the lean setting).
            for system, extra in (("finch-micro", ["--micro-batch", 1]), ("finch-lean", ["--micro-batch", 1, "--keep-quantized"]),
                                  ("finch-fp32", ["--precision", "fp32"])):
                self.training_row(config, system, [self.args.finch, "bench", "step", "--model", GGUF, "--method", method,
                                                   "--batch", batch, "--seq", seq, "--prompt-length", PROMPT_LENGTH,
                                                   "--optimizer", "--repetitions", reps] + extra,
                                  {}, rows, seq, parse=self.parse_finch)
        python_command = ["--method", method, "--model", HF_FOLDER, "--batch", batch, "--seq", seq,
                          "--prompt-length", PROMPT_LENGTH, "--steps", reps, "--warmup", 1, "--threads", self.args.threads]
        if self.wanted("hf"):
            # TRL's default precision (bf16=True: autocast), then fp32.
            self.training_row(config, "hf", [sys.executable, BENCH / "py_train_step.py", "--system", "hf"] + python_command,
                              {}, rows, seq, parse=self.parse_python)
            self.training_row(config, "hf-fp32", [sys.executable, BENCH / "py_train_step.py", "--system", "hf",
                                                  "--precision", "fp32"] + python_command,
                              {}, rows, seq, parse=self.parse_python)
        if self.wanted("unsloth") and method == "sft":
            if not UNSLOTH_PYTHON.exists():
                self.add(config, "unsloth", note=f"not installed: no {UNSLOTH_PYTHON} (see bench/README.md)")
            else:
                # Unsloth's CPU path as the earlier tables ran it: f32 weights, bf16=False.
                self.training_row(config, "unsloth", [UNSLOTH_PYTHON, BENCH / "py_train_step.py", "--system", "unsloth",
                                                      "--precision", "fp32"] + python_command, {"UNSLOTH_SKIP_TORCHVISION_CHECK": "1"}, rows, seq,
                                  parse=self.parse_python)

    # Decode ---------------------------------------------------------------------------------
    def run_decode(self):
        reps = max(self.args.reps, 1)
        if self.wanted("finch"):
            finch = self.args.finch_decode or self.args.finch
            _, help_text, _, _ = run_child([finch, "bench", "--help"])
            if "decode" not in help_text:
                self.add("decode", "finch", note="not in this binary: `finch bench decode` is the hook (prompt 128, 128 new)")
            else:
                # finch: exact f32 activations; finch-int8: activations rounded to 8 bits against
                # the quantized weights (`--int8-activations`, llama.cpp's arithmetic).
                for system, extra in (("finch", []), ("finch-int8", ["--int8-activations"])):
                    rc, out, rss, _ = run_child([finch, "bench", "decode", "--model", GGUF, "--prompt-tokens", 128,
                                                 "--new-tokens", 128, "--repetitions", reps] + extra, env=self.thread_env, timeout=1200)
                    m = re.search(r"decode ([\d.]+) tokens/s", out)
                    prefill = re.search(r"prefill ([\d.]+) tokens/s", out)
                    if rc != 0 or not m:
                        self.add("decode", system, note=f"failed (exit {rc}): {last_lines(out)}")
                    else:
                        self.add("decode", system, tok_s=float(m.group(1)), rss_gb=round(rss / GB, 2),
                                 prefill_tok_s=float(prefill.group(1)) if prefill else None)
        ids_file = Path(tempfile.gettempdir()) / "finch-bench-prompt-ids.json"
        if self.wanted("hf") or self.wanted("llama.cpp"):
            rc, out, rss, _ = run_child([sys.executable, BENCH / "hf_generate.py", "--gguf", GGUF, "--runs", reps,
                                         "--threads", self.args.threads, "--dump-ids", ids_file], env=self.thread_env,
                                        timeout=1800)
            m = re.search(r"decode ([\d.]+) tok/s", out)
            prefill = re.search(r"prefill ([\d.]+) tok/s", out)
            if self.wanted("hf"):
                if rc != 0 or not m:
                    self.add("decode", "hf", note=f"failed (exit {rc}): {last_lines(out)}")
                else:
                    self.add("decode", "hf", tok_s=float(m.group(1)), rss_gb=round(rss / GB, 2),
                             prefill_tok_s=float(prefill.group(1)) if prefill else None)
        if self.wanted("llama.cpp"):
            if not LLAMA_PYTHON.exists() or run_child([LLAMA_PYTHON, "-c", "import llama_cpp"])[0] != 0:
                self.add("decode", "llama.cpp", note=f"not installed: no llama_cpp importable by {LLAMA_PYTHON} (see bench/README.md)")
            elif not ids_file.exists():
                self.add("decode", "llama.cpp", note="no prompt ids (hf_generate.py failed)")
            else:
                rc, out, rss, _ = run_child([LLAMA_PYTHON, BENCH / "llama_cpp_generate.py", "--gguf", GGUF, "--ids", ids_file,
                                             "--new", 128, "--runs", reps, "--threads", self.args.threads],
                                            env=self.thread_env, timeout=1200)
                m = re.search(r"decode ([\d.]+) tok/s", out)
                if rc != 0 or not m:
                    self.add("decode", "llama.cpp", note=f"failed (exit {rc}): {last_lines(out)}")
                else:
                    self.add("decode", "llama.cpp", tok_s=float(m.group(1)), rss_gb=round(rss / GB, 2))

    # Scale ----------------------------------------------------------------------------------
    def run_scale(self):
        if not self.wanted("finch"):
            return
        seq = 2048
        self.training_row("scale", "finch", [self.args.finch, "bench", "step", "--shape", "llama3.2-1b", "--base", "q4_0",
                                             "--method", "sft", "--batch", 1, "--seq", seq, "--optimizer",
                                             "--repetitions", self.args.scale_reps],
                          {}, 1, seq, shape=LLAMA32_1B, parse=self.parse_finch, timeout=7200)

    # Table ----------------------------------------------------------------------------------
    def find(self, config, system):
        return next((r for r in self.rows if r["config"] == config and r["system"] == system and "tok_s" in r), None)

    def check_targets(self):
        def target(name, value, ok, note=""):
            self.targets.append((name, value, ok, note))

        for system, figures in self.gemm.items():
            if not system.startswith("finch ") or "OpenBLAS" in system:
                continue
            precision = system.split()[1]
            peak, share = self.peaks.get(precision), GEMM_BF16_OF_PEAK if precision == "bf16" else GEMM_FP32_OF_PEAK
            for shape, gflops in figures.items():
                if peak:
                    target(f"gemm {precision} {shape} >= {share:.0%} of the {precision} peak ({peak:.0f})", f"{gflops / peak:.0%}",
                           gflops / peak >= share)
        for system in FINCH_SETTINGS:
            f, h, h32 = self.find("orpo", system), self.find("orpo", "hf"), self.find("orpo", "hf-fp32")
            if f and h:
                r = f["tok_s"] / h["tok_s"]
                target(f"orpo: {system} tokens/s >= {ORPO_VS_HF}x HF (TRL default, {h['precision']})", f"{r:.2f}x", r >= ORPO_VS_HF)
            if f and h32:
                r = f["tok_s"] / h32["tok_s"]
                target(f"orpo: {system} tokens/s >= {ORPO_VS_HF_FP32}x HF fp32", f"{r:.2f}x", r >= ORPO_VS_HF_FP32)
            if f and h:
                r = f["rss_gb"] / h["rss_gb"]
                target(f"orpo: {system} peak RSS <= {RSS_VS_HF:.0%} of HF", f"{r:.0%}", r <= RSS_VS_HF)
        u, h = self.find("sft", "unsloth"), self.find("sft", "hf")
        for system in FINCH_SETTINGS:
            f = self.find("sft", system)
            if f and u:
                r = f["tok_s"] / u["tok_s"]
                target(f"sft: {system} tokens/s >= {SFT_VS_UNSLOTH}x Unsloth", f"{r:.2f}x", r >= SFT_VS_UNSLOTH)
                r = f["rss_gb"] / u["rss_gb"]
                target(f"sft: {system} peak RSS <= {RSS_VS_UNSLOTH:.0%} of Unsloth", f"{r:.0%}", r <= RSS_VS_UNSLOTH)
            if f and h:
                r = f["tok_s"] / h["tok_s"]
                target(f"sft: {system} tokens/s >= {SFT_VS_HF}x HF (TRL default, {h['precision']})", f"{r:.2f}x", r >= SFT_VS_HF)
        f, h, l = self.find("decode", "finch"), self.find("decode", "hf"), self.find("decode", "llama.cpp")
        if f and h:
            r = f["tok_s"] / h["tok_s"]
            target(f"decode: Finch >= {DECODE_VS_HF}x transformers", f"{r:.2f}x", r >= DECODE_VS_HF)
        for system in ("finch", "finch-int8"):
            f = self.find("decode", system)
            if f and l:
                r = f["tok_s"] / l["tok_s"]
                target(f"decode: {system} >= llama.cpp", f"{r:.2f}x", r >= 1)
        s = self.find("scale", "finch")
        if s:
            target("scale: Llama-3.2-1B shape, 4-bit base, 2048 tokens/step, RSS <= 8 GB", f"{s['rss_gb']:.2f} GB",
                   s["rss_gb"] * GB <= SCALE_RSS)

    def table(self):
        def cell(v, fmt):
            return "" if v is None else format(v, fmt)

        lines = ["| config | system | precision | s/step | tokens/s | peak RSS GB | GFLOP/s | MFU | Finch/this tokens/s | Finch/this RSS | load |",
                 "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in self.rows:
            if "note" in r:
                lines.append(f"| {r['config']} | {r['system']} | | {r['note']} | | | | | | | {r['load']} |")
                continue
            f = self.find(r["config"], "finch")
            speed = rss = ""
            if f and r["system"] != "finch":
                speed = f"{f['tok_s'] / r['tok_s']:.2f}x"
                if f.get("rss_gb") and r.get("rss_gb"):
                    rss = f"{f['rss_gb'] / r['rss_gb']:.0%}"
            tokens = cell(r.get('tok_s'), '.1f')
            if r.get("prefill_tok_s"):
                tokens += f" (prefill {r['prefill_tok_s']:.0f})"
            lines.append(f"| {r['config']} | {r['system']} | {r.get('precision', '')} | {cell(r.get('s_step'), '.2f')} | {tokens} | "
                         f"{cell(r.get('rss_gb'), '.2f')} | {cell(r.get('gflops'), '.1f')} | {cell(r.get('mfu'), '.0%')} | "
                         f"{speed} | {rss} | {r['load']} |")
        lines += ["", "| issue 16 target | measured | |", "| --- | ---: | --- |"]
        lines += [f"| {name} | {value} | {'PASS' if ok else 'FAIL'} {note} |" for name, value, ok, note in self.targets]
        return "\n".join(lines)

    def header(self):
        gemm = "; ".join(f"{s}: " + ", ".join(f"{k} {v:.0f}" for k, v in g.items()) for s, g in self.gemm.items())
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
        peaks = ", ".join(f"{k} {v:.0f}" for k, v in self.peaks.items())
        return (f"{datetime.date.today()}, {cpu} ({self.cpu}), {os.cpu_count()} cores, {self.args.threads} threads per system, "
                f"reps {self.args.reps}; measured peaks GFLOP/s ({peaks}): MFU of fp32 runs against the fp32 peak, of bf16 runs "
                f"against the bf16 peak; GEMM GFLOP/s ({gemm})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3, help="timed steps per training row (after one warm-up), decode runs")
    ap.add_argument("--scale-reps", type=int, default=1, help="timed steps of the scale row (0: time the one cold step)")
    ap.add_argument("--only", default="finch,hf,unsloth,llama.cpp", help="systems to run, comma-separated")
    ap.add_argument("--configs", default="orpo,sft,decode,scale", help="rows to run, comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--finch", default=str(ROOT / ".build" / "release" / "finch"))
    ap.add_argument("--finch-decode", help="the finch binary for the decode row (default: --finch)")
    ap.add_argument("--json", help="also write every figure to this JSON file")
    ap.add_argument("--markdown", help="also write the table to this Markdown file")
    args = ap.parse_args()
    args.only = set(args.only.split(","))
    args.configs = args.configs.split(",")

    if not GGUF.exists():
        subprocess.run(["bash", ROOT / "scripts" / "fetch_smollm2.sh"], check=True, stdout=subprocess.DEVNULL)
    if not (HF_FOLDER / "model.safetensors").exists() and {"hf", "unsloth"} & args.only:
        subprocess.run([sys.executable, BENCH / "make_hf_folder.py", GGUF, HF_FOLDER], check=True)

    h = Harness(args)
    h.run_gemm()
    for config in args.configs:
        if config in CONFIGS:
            h.run_training(config)
        elif config == "decode":
            h.run_decode()
        elif config == "scale":
            h.run_scale()
        else:
            sys.exit(f"unknown config {config}")
    h.check_targets()
    text = f"{h.header()}\n\n{h.table()}\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"header": h.header(), "gemm": h.gemm,
                                               "peaks": h.peaks, "rows": h.rows, "targets": h.targets}, indent=2) + "\n")


if __name__ == "__main__":
    main()
