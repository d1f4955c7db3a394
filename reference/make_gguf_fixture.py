#!/usr/bin/env python3
"""Generate GGUF fixtures for Finch's GGUF loader and dequantizer tests.

Writes Tests/FinchTestSupport/Fixtures/gguf/:
  tiny_llama.gguf            llama_tied parity model in llama.cpp's "llama" layout
                             (q/k rows permuted; layer 0 2-D weights F16, layer 1 Q8_0;
                             embeddings and norms F32; tied, so no output.weight)
  tiny_qwen2.gguf            qwen2_bias parity model, arch "qwen2", all F32, with biases
                             and output.weight, not permuted
  expected_tiny.safetensors  for each GGUF, the weights a loader should produce
                             (dequantized, un-permuted, HF names, F32), keys prefixed
                             "tiny_llama." / "tiny_qwen2."
  quant_blocks.safetensors   <TYPE>.bytes (raw block bytes as F32 0..255, flat) and
                             <TYPE>.values (dequantized F32, flat) for 4 blocks each of
                             Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS
  bad_tensor_type.gguf       valid tiny GGUF except its one tensor has type id 99

Requires the parity fixtures (reference/make_parity_fixtures.py) to exist.
Usage: python3 reference/make_gguf_fixture.py
"""
import json
import os
import struct

import numpy as np
import gguf
from gguf import GGUFWriter, GGUFReader, GGMLQuantizationType as QT
from gguf.quants import quantize, dequantize
from safetensors.numpy import load_file, save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARITY = os.path.join(REPO, "Tests", "FinchTestSupport", "Fixtures", "parity")
OUT = os.path.join(REPO, "Tests", "FinchTestSupport", "Fixtures", "gguf")

# HF suffix -> GGUF suffix inside a block
BLOCK_MAP = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TOP_MAP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_name(hf):
    if hf in TOP_MAP:
        return TOP_MAP[hf]
    parts = hf.split(".")
    assert parts[0] == "model" and parts[1] == "layers", hf
    return f"blk.{parts[2]}.{BLOCK_MAP['.'.join(parts[3:])]}"


def permute_rows(w, n_head):
    """llama.cpp's q/k row order for arch llama: within each head, interleaved rotary
    pairs (HF's rotate_half halves) become adjacent rows."""
    rows = w.shape[0]
    return (w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:])
             .swapaxes(1, 2).reshape(w.shape))


def unpermute_rows(w, n_head):
    rows = w.shape[0]
    return (w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
             .swapaxes(1, 2).reshape(w.shape))


def add_hparams(w, arch, cfg, file_type):
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    rope = cfg.get("rope_parameters") or {}
    theta = rope.get("rope_theta", cfg.get("rope_theta"))
    w.add_name(f"finch tiny {arch}")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(float(theta))
    w.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(file_type)


def write(path, writer):
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read_back(path, arch, cfg, permuted):
    """Load a GGUF with gguf's reader and return HF-named, dequantized, un-permuted F32."""
    r = GGUFReader(path)
    inv = {}
    for hf_suffix, g in BLOCK_MAP.items():
        inv[g] = hf_suffix
    out = {}
    for t in r.tensors:
        if t.name in ("token_embd.weight", "output_norm.weight", "output.weight"):
            hf = {v: k for k, v in TOP_MAP.items()}[t.name]
        else:
            _, n, rest = t.name.split(".", 2)
            hf = f"model.layers.{n}.{inv[rest]}"
        arr = dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        arr = arr.reshape(shape)
        if permuted and hf.endswith("q_proj.weight"):
            arr = unpermute_rows(arr, cfg["num_attention_heads"])
        elif permuted and hf.endswith("k_proj.weight"):
            arr = unpermute_rows(arr, cfg["num_key_value_heads"])
        out[hf] = np.ascontiguousarray(arr)
    arch_field = r.fields["general.architecture"]
    assert bytes(arch_field.parts[arch_field.data[0]]).decode() == arch
    return out, {t.name: t.tensor_type.name for t in r.tensors}


def make_tiny_llama():
    d = os.path.join(PARITY, "llama_tied")
    cfg = json.load(open(os.path.join(d, "config.json")))
    hf = load_file(os.path.join(d, "model.safetensors"))
    assert cfg["tie_word_embeddings"] and "lm_head.weight" not in hf
    path = os.path.join(OUT, "tiny_llama.gguf")
    w = GGUFWriter(path, "llama")
    add_hparams(w, "llama", cfg, 7)  # 7 = LLAMA_FTYPE_MOSTLY_Q8_0 (mixed F16/Q8_0 here)
    for name in ["model.embed_tokens.weight"] + sorted(
            (k for k in hf if k.startswith("model.layers.")),
            key=lambda k: (int(k.split(".")[2]), k)) + ["model.norm.weight"]:
        t = hf[name].astype(np.float32)
        if name.endswith("q_proj.weight"):
            t = permute_rows(t, cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            t = permute_rows(t, cfg["num_key_value_heads"])
        g = gguf_name(name)
        if t.ndim == 2 and name.startswith("model.layers.0."):
            w.add_tensor(g, t.astype(np.float16))
        elif t.ndim == 2 and name.startswith("model.layers.1."):
            w.add_tensor(g, quantize(t, QT.Q8_0), raw_dtype=QT.Q8_0)
        else:
            w.add_tensor(g, t)
    write(path, w)
    got, types = read_back(path, "llama", cfg, permuted=True)
    assert set(got) == set(hf)
    for k in hf:
        if hf[k].ndim == 1 or "embed" in k:
            want = hf[k]
        elif ".layers.0." in k:
            want = hf[k].astype(np.float16).astype(np.float32)
        else:  # Q8_0 blocks run along rows, so the row permutation commutes with quantization
            want = dequantize(quantize(hf[k], QT.Q8_0), QT.Q8_0)
            assert np.abs(want - hf[k]).max() <= np.abs(hf[k]).max() / 127, k
        assert np.array_equal(got[k], want), k
    return got, types


def make_tiny_qwen2():
    d = os.path.join(PARITY, "qwen2_bias")
    cfg = json.load(open(os.path.join(d, "config.json")))
    hf = load_file(os.path.join(d, "model.safetensors"))
    path = os.path.join(OUT, "tiny_qwen2.gguf")
    w = GGUFWriter(path, "qwen2")
    add_hparams(w, "qwen2", cfg, 0)  # 0 = ALL_F32
    order = ["model.embed_tokens.weight"] + sorted(
        (k for k in hf if k.startswith("model.layers.")),
        key=lambda k: (int(k.split(".")[2]), k)) + ["model.norm.weight", "lm_head.weight"]
    for name in order:
        w.add_tensor(gguf_name(name), hf[name].astype(np.float32))
    write(path, w)
    got, types = read_back(path, "qwen2", cfg, permuted=False)
    assert set(got) == set(hf)
    for k in hf:
        assert np.array_equal(got[k], hf[k]), k
    return got, types


# ---------------------------------------------------------------- quant blocks
def f16_bytes(x):
    return np.array([x], dtype="<f2").view(np.uint8)


def make_quant_blocks(rng):
    out = {}
    specs = {
        # type: list of (byte offset, (lo, hi)) f16 scale fields
        QT.Q4_0: [(0, (0.01, 0.1))],
        QT.Q4_1: [(0, (0.01, 0.1)), (2, (-0.5, 0.5))],
        QT.Q8_0: [(0, (0.001, 0.01))],
        QT.Q4_K: [(0, (0.01, 0.1)), (2, (0.01, 0.1))],     # d, dmin
        QT.Q6_K: [(208, (0.01, 0.1))],                      # d at the end of the block
        QT.Q5_0: [(0, (0.01, 0.1))],
        QT.Q5_1: [(0, (0.01, 0.1)), (2, (-0.5, 0.5))],
        QT.Q2_K: [(80, (0.01, 0.1)), (82, (0.01, 0.1))],   # scales[16], qs[64], d, dmin
        QT.Q3_K: [(108, (0.01, 0.1))],                      # hmask[32], qs[64], scales[12], d
        QT.Q5_K: [(0, (0.01, 0.1)), (2, (0.01, 0.1))],     # d, dmin, scales[12], qh[32], qs[128]
        QT.IQ4_NL: [(0, (0.01, 0.1))],                      # d, qs[16]
        QT.IQ4_XS: [(0, (0.01, 0.1))],                      # d, scales_h, scales_l[4], qs[128]
    }
    for qt, fields in specs.items():
        block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qt]
        raw = rng.integers(0, 256, size=(4, block_bytes), dtype=np.uint8)
        for off, (lo, hi) in fields:
            for b in range(4):
                v = rng.uniform(lo, hi)
                if lo < 0 and b == 0:
                    v = -abs(v)          # make sure a negative min is exercised
                raw[b, off:off + 2] = f16_bytes(v)
        vals = dequantize(raw, qt).astype(np.float32)
        assert vals.shape == (4, block_elems) and np.isfinite(vals).all(), qt
        check_simple(qt, raw, vals)
        out[f"{qt.name}.bytes"] = raw.reshape(-1).astype(np.float32)
        out[f"{qt.name}.values"] = vals.reshape(-1)
    return out


def check_simple(qt, raw, vals):
    """Independent decode of the simple block types, to cross-check gguf.quants."""
    if qt not in (QT.Q4_0, QT.Q4_1, QT.Q8_0):
        return
    for b in range(raw.shape[0]):
        blk = raw[b]
        d = np.float32(blk[0:2].view("<f2")[0])
        if qt == QT.Q8_0:
            ref = d * blk[2:34].view(np.int8).astype(np.float32)
        else:
            qs = blk[4:20] if qt == QT.Q4_1 else blk[2:18]
            q = np.concatenate([qs & 0x0F, qs >> 4]).astype(np.float32)  # low nibbles first
            if qt == QT.Q4_0:
                ref = d * (q - 8)
            else:
                m = np.float32(blk[2:4].view("<f2")[0])
                ref = d * q + m
        assert np.allclose(ref, vals[b], rtol=1e-6, atol=1e-7), qt


# ---------------------------------------------------------------- bad tensor type
def make_bad():
    path = os.path.join(OUT, "bad_tensor_type.gguf")
    w = GGUFWriter(path, "llama")
    w.add_name("finch bad tensor type")
    w.add_tensor("bad.weight", np.arange(64, dtype=np.float32).reshape(2, 32))
    write(path, w)
    data = bytearray(open(path, "rb").read())
    name = b"bad.weight"
    pos = data.find(struct.pack("<Q", len(name)) + name)
    assert pos > 0 and data.find(struct.pack("<Q", len(name)) + name, pos + 1) < 0
    p = pos + 8 + len(name)
    n_dims = struct.unpack_from("<I", data, p)[0]
    assert n_dims == 2
    p += 4 + 8 * n_dims
    assert struct.unpack_from("<I", data, p)[0] == int(QT.F32)
    struct.pack_into("<I", data, p, 99)
    open(path, "wb").write(bytes(data))
    try:
        GGUFReader(path)
    except Exception as e:  # the reference reader must reject it
        print(f"  bad_tensor_type.gguf rejected by gguf reader: {type(e).__name__}: {e}")
    else:
        raise AssertionError("gguf reader accepted type 99")


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {}
    llama, ltypes = make_tiny_llama()
    qwen, qtypes = make_tiny_qwen2()
    for k, v in llama.items():
        expected[f"tiny_llama.{k}"] = v
    for k, v in qwen.items():
        expected[f"tiny_qwen2.{k}"] = v
    save_file(expected, os.path.join(OUT, "expected_tiny.safetensors"))
    print("tiny_llama tensor types:", sorted(set(ltypes.values())),
          {k: v for k, v in ltypes.items() if k.startswith("blk.1.attn_q") or k.startswith("blk.0.attn_q")})
    print("tiny_qwen2 tensor types:", sorted(set(qtypes.values())))
    rng = np.random.default_rng(20240601)
    save_file(make_quant_blocks(rng), os.path.join(OUT, "quant_blocks.safetensors"))
    make_bad()
    for fn in sorted(os.listdir(OUT)):
        print(f"  {fn}: {os.path.getsize(os.path.join(OUT, fn))} bytes")


if __name__ == "__main__":
    main()
