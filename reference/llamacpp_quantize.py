#!/usr/bin/env python3
"""Quantize a GGUF model with llama.cpp's own quantizer, as a reference for Finch.

Usage:
    python3 reference/llamacpp_quantize.py INPUT.gguf OUTPUT.gguf TYPE [--imatrix FILE] [--pure]
        [--output-tensor-type T] [--token-embedding-type T]

TYPE is one of the llama.cpp file types listed in FTYPES below (q4_0, q4_k_m,
iq4_xs, ...). The work is done by ``llama_cpp.llama_model_quantize`` from the
llama-cpp-python low-level ctypes binding, i.e. the same code path as the
``llama-quantize`` tool, so the per-tensor type choices (which tensors get a
bigger type in the *_M mixes, which stay F32, what happens to token_embd /
output) are exactly llama.cpp's.

``--imatrix`` accepts an importance-matrix file as written by
``llama-imatrix``: either the current GGUF layout (``<tensor>.in_sum2`` and
``<tensor>.counts`` pairs) or the legacy ``.dat`` binary layout. Values are
normalised the same way ``llama-quantize`` does before they are handed over.

After quantizing, the output is re-opened with gguf-py's ``GGUFReader`` and a
count of tensors per GGML type is printed (the set of block formats a loader
has to decode for this file).

Requires: llama-cpp-python (built from source is fine), gguf, numpy.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import os
import struct
import sys
import time

import numpy as np

import llama_cpp
from gguf import GGUFReader

# TYPE argument -> name of the llama_ftype constant in llama_cpp.
FTYPES = {
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
    "q3_k_s": "LLAMA_FTYPE_MOSTLY_Q3_K_S",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q3_k_l": "LLAMA_FTYPE_MOSTLY_Q3_K_L",
    "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "iq4_nl": "LLAMA_FTYPE_MOSTLY_IQ4_NL",
    "iq4_xs": "LLAMA_FTYPE_MOSTLY_IQ4_XS",
}


def _read_imatrix_gguf(path: str) -> dict[str, np.ndarray]:
    """Importance data from a GGUF imatrix: mean squared activation per column."""
    reader = GGUFReader(path)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        if t.name.endswith(".in_sum2"):
            sums[t.name[: -len(".in_sum2")]] = np.asarray(t.data, dtype=np.float32).reshape(-1)
        elif t.name.endswith(".counts"):
            counts[t.name[: -len(".counts")]] = np.asarray(t.data, dtype=np.float32).reshape(-1)
    out: dict[str, np.ndarray] = {}
    for name, s in sums.items():
        if name not in counts:
            raise SystemExit(f"imatrix: {name} has sums but no counts")
        c = np.rint(counts[name]).astype(np.float64)
        per = s.size // c.size  # one count per expert (1 for dense weights)
        rows = s.reshape(c.size, per).astype(np.float64)
        normed = np.where(c[:, None] > 0, rows / np.where(c > 0, c, 1)[:, None], 1.0)
        out[name] = normed.reshape(-1).astype(np.float32)
    return out


def _read_imatrix_legacy(path: str) -> dict[str, np.ndarray]:
    """Importance data from the old binary .dat layout written by llama-imatrix."""
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        (n_entries,) = struct.unpack("<i", f.read(4))
        for _ in range(n_entries):
            (name_len,) = struct.unpack("<i", f.read(4))
            name = f.read(name_len).decode("utf-8")
            ncall, nval = struct.unpack("<ii", f.read(8))
            vals = np.frombuffer(f.read(4 * nval), dtype="<f4").astype(np.float32)
            out[name] = vals / ncall if ncall > 0 else vals.copy()
    return out


def load_imatrix(path: str) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        magic = f.read(4)
    data = _read_imatrix_gguf(path) if magic == b"GGUF" else _read_imatrix_legacy(path)
    for name, v in data.items():
        if not np.all(np.isfinite(v)):
            raise SystemExit(f"imatrix: non-finite values for {name}")
    print(f"imatrix: {len(data)} entries from {path}")
    return data


def tensor_type_counts(path: str) -> dict[str, int]:
    """Number of tensors per GGML type in a GGUF file."""
    reader = GGUFReader(path)
    counts = collections.Counter(t.tensor_type.name for t in reader.tensors)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


GGML_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "q2_k": 10, "q3_k": 11,
              "q4_k": 12, "q5_k": 13, "q6_k": 14, "iq4_nl": 20, "iq4_xs": 23, "bf16": 30}


def quantize(src: str, dst: str, qtype: str, imatrix_path: str | None = None,
             nthread: int = 2, pure: bool = False, output_type: str | None = None,
             embedding_type: str | None = None) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[qtype])
    params.nthread = nthread
    params.pure = pure
    if output_type:
        params.output_tensor_type = GGML_TYPES[output_type.lower()]
    if embedding_type:
        params.token_embedding_type = GGML_TYPES[embedding_type.lower()]

    # Keep the imatrix buffers referenced until the C call returns.
    keep_alive = []
    if imatrix_path:
        data = load_imatrix(imatrix_path)
        entries = (llama_cpp.llama_model_imatrix_data * (len(data) + 1))()
        for i, (name, vals) in enumerate(data.items()):
            buf = np.ascontiguousarray(vals, dtype=np.float32)
            bname = name.encode("utf-8")
            keep_alive += [buf, bname]
            entries[i].name = bname
            entries[i].data = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = buf.size
        entries[len(data)].name = None  # list is terminated by a NULL name
        keep_alive.append(entries)
        params.imatrix = entries

    t0 = time.time()
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed for {qtype} (return code {rc})")
    print(f"quantized {src} -> {dst} as {qtype} in {time.time() - t0:.1f}s "
          f"({os.path.getsize(dst) / 1e6:.1f} MB)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", help="source GGUF (F32/F16/BF16 weights)")
    ap.add_argument("output", help="destination GGUF")
    ap.add_argument("type", choices=sorted(FTYPES), type=str.lower)
    ap.add_argument("--imatrix", help="importance matrix (GGUF or legacy .dat)")
    ap.add_argument("--pure", action="store_true", help="every matrix in the base type (llama-quantize --pure)")
    ap.add_argument("--output-tensor-type", help="GGML type of output.weight (llama-quantize's option)")
    ap.add_argument("--token-embedding-type", help="GGML type of token_embd.weight (llama-quantize's option)")
    args = ap.parse_args(argv)

    quantize(args.input, args.output, args.type, args.imatrix, pure=args.pure,
             output_type=args.output_tensor_type, embedding_type=args.token_embedding_type)

    counts = tensor_type_counts(args.output)
    print(f"tensor types in {args.output} ({sum(counts.values())} tensors):")
    for name, n in counts.items():
        print(f"  {name:8s} {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
