#!/usr/bin/env python3
"""Known-good quantized blocks for Finch's quantizers (Tests/FinchTestSupport/Fixtures/gguf/quantize_blocks.safetensors).

For each GGML type, `<TYPE>.input` holds float values (F32, flat) and `<TYPE>.bytes` the blocks a
reference quantizer writes for them (byte values stored as F32 0..255, flat):
  - Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: gguf-py's `gguf.quants.quantize` (a port of ggml's quantize_row_*_ref);
  - IQ4_NL, IQ4_XS: ggml_quantize_chunk of llama-cpp-python's libggml-base (`--llama-cpp`);
  - Q2_K, Q3_K, Q4_K, Q5_K, Q6_K: llama.cpp's own quantizer through llama-cpp-python, when it is
    installed (`--llama-cpp`): a tiny llama GGUF whose matrices hold the inputs is quantized with
    llama_model_quantize (pure, no importance matrix) and its blocks are read back with gguf-py.
With `--llama-cpp`, also `<TYPE>.importance` (one weight per column, as an importance matrix gives
them) and `<TYPE>.weighted_bytes`: the blocks ggml's importance-weighted quantizers
(quantize_row_*_impl) write for the same inputs, from ggml_quantize_chunk in llama-cpp-python's
libggml-base, the function llama.cpp's quantizer calls per chunk of rows.
The inputs mix scales (rows of N(0, s) for s from 1e-3 to 10), outliers, exact zeros and a zero
block, so every branch of the scale searches runs.

Usage: python3 reference/make_quantize_fixture.py [--llama-cpp]
"""
import argparse
import os
import sys
import tempfile

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT
from safetensors.numpy import save_file, load_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "Tests", "FinchTestSupport", "Fixtures", "gguf", "quantize_blocks.safetensors")
SIMPLE = [QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0]
K_TYPES = {QT.Q2_K: 10, QT.Q3_K: 11, QT.Q4_K: 15, QT.Q5_K: 17, QT.Q6_K: 18}   # type: a llama_ftype of that base


def inputs(rng, rows=8, columns=512):
    x = np.empty((rows, columns), dtype=np.float32)
    for r, s in enumerate(np.geomspace(1e-3, 10, rows)):
        x[r] = rng.standard_normal(columns) * s
    x[1, 7] = 40.0             # an outlier
    x[2, :64] = 0.0            # exact zeros (a zero 32-block and half a 256-block)
    x[3, 256:] = np.abs(x[3, 256:])   # a block with no negative values (min clamps to 0)
    x[4, :256] = -np.abs(x[4, :256])  # one with no positive values
    return x


def llama_cpp_blocks(x, qtype, ftype):
    import llama_cpp
    rows, columns = x.shape
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.gguf"), os.path.join(tmp, "out.gguf")
        w = gguf.GGUFWriter(src, "llama")
        w.add_block_count(1)
        w.add_context_length(64)
        w.add_embedding_length(columns)
        w.add_feed_forward_length(rows)
        w.add_head_count(columns // 64)
        w.add_head_count_kv(columns // 64)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_vocab_size(rows)
        w.add_file_type(0)
        # the inputs as ffn_gate (rows x columns); other tensors are small fillers
        w.add_tensor("token_embd.weight", np.zeros((rows, columns), np.float32))
        w.add_tensor("blk.0.ffn_gate.weight", x)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.pure = True
        params.nthread = 1
        rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
        assert rc == 0, f"llama_model_quantize failed for {qtype.name}"
        reader = gguf.GGUFReader(dst)
        t = next(t for t in reader.tensors if t.name == "blk.0.ffn_gate.weight")
        assert t.tensor_type == qtype, (t.tensor_type, qtype)
        return np.array(t.data, dtype=np.uint8).reshape(-1)


GGML_TYPE_IDS = {QT.Q4_0: 2, QT.Q4_1: 3, QT.Q5_0: 6, QT.Q5_1: 7, QT.Q2_K: 10, QT.Q3_K: 11, QT.Q4_K: 12, QT.Q5_K: 13, QT.Q6_K: 14,
                 QT.IQ4_NL: 20, QT.IQ4_XS: 23}
IQ_TYPES = [QT.IQ4_NL, QT.IQ4_XS]   # written by ggml_quantize_chunk alone (what llama-quantize calls)


def importance(rng, columns=512):
    """Positive weights spread over three decades, as mean squared activations are, with a zero
    column and a whole zero 32-block (columns an imatrix run never saw active)."""
    w = np.exp(rng.standard_normal(columns) * 1.5).astype(np.float32)
    w[5] = 0.0
    w[96:128] = 0.0
    return w


def ggml_weighted_blocks(x, qtype, weights):
    import ctypes
    import llama_cpp
    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_void_p]
    rows, columns = x.shape
    block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    out = np.zeros(rows * columns // block * block_bytes, dtype=np.uint8)
    src = np.ascontiguousarray(x, dtype=np.float32)
    w = None if weights is None else np.ascontiguousarray(weights, dtype=np.float32)
    n = lib.ggml_quantize_chunk(GGML_TYPE_IDS[qtype], src.ctypes.data, out.ctypes.data, 0, rows, columns,
                                None if weights is None else w.ctypes.data)
    assert n == out.size, (n, out.size)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", action="store_true", help="also write the K types with llama.cpp's quantizer")
    args = ap.parse_args()
    rng = np.random.default_rng(20261204)
    x = inputs(rng)
    out = load_file(OUT) if os.path.exists(OUT) else {}
    for qt in SIMPLE:
        blocks = gguf.quants.quantize(x, qt).reshape(-1)
        out[f"{qt.name}.input"] = x.reshape(-1)
        out[f"{qt.name}.bytes"] = blocks.astype(np.float32)
    if args.llama_cpp:
        import llama_cpp
        print("llama-cpp-python", llama_cpp.__version__)
        for qt, ftype in K_TYPES.items():
            blocks = llama_cpp_blocks(x, qt, ftype)
            out[f"{qt.name}.input"] = x.reshape(-1)
            out[f"{qt.name}.bytes"] = blocks.astype(np.float32)
        for qt in IQ_TYPES:
            out[f"{qt.name}.input"] = x.reshape(-1)
            out[f"{qt.name}.bytes"] = ggml_weighted_blocks(x, qt, None).astype(np.float32)
        weights = importance(np.random.default_rng(20261205))
        for qt in GGML_TYPE_IDS:
            out[f"{qt.name}.importance"] = weights
            out[f"{qt.name}.weighted_bytes"] = ggml_weighted_blocks(x, qt, weights).astype(np.float32)
            plain = out[f"{qt.name}.bytes"].astype(np.uint8)
            changed = np.mean(out[f"{qt.name}.weighted_bytes"].astype(np.uint8) != plain)
            print(f"  {qt.name}: importance changes {changed:.0%} of the bytes")
    for k in sorted(out):
        if k.endswith(".bytes") or k.endswith(".weighted_bytes"):
            name, kind = k.split(".", 1)
            back = gguf.quants.dequantize(out[k].astype(np.uint8).reshape(8, -1), QT[name]).reshape(8, -1)
            x_in = out[f"{name}.input"].reshape(8, -1)
            err = np.sqrt(np.mean((back - x_in) ** 2) / np.mean(x_in ** 2))
            line = f"  {name} {kind}: {out[k].size} bytes, relative RMS error {err:.4f}"
            if f"{name}.importance" in out:
                w = out[f"{name}.importance"]
                werr = np.sqrt(np.sum(w * (back - x_in) ** 2) / np.sum(w * x_in ** 2))
                line += f", importance-weighted {werr:.4f}"
            print(line)
    save_file(out, OUT)


if __name__ == "__main__":
    main()
