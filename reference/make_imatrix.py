#!/usr/bin/env python3
"""An importance matrix as llama.cpp's llama-imatrix computes it, from a transformers model.

llama-imatrix evaluates a text in chunks of n_ctx tokens (the first token of each chunk replaced
by BOS where the tokenizer adds one) and, for every matrix multiplication by a weight named
`blk.*`, sums the squares of the activations entering each input column (`<name>.in_sum2`) and
counts the activation rows (`<name>.counts`). This script does the same with forward pre-hooks
on the decoder layers' nn.Linear modules of an HF model (float32), and writes the GGUF layout
llama-imatrix writes (general.type imatrix, imatrix.datasets / chunk_count / chunk_size), or with
--legacy the old .dat layout (per entry: mean times calls, calls = chunks).

It serves two purposes: an imatrix for `finch export --quant ... --imatrix` checked against
llama.cpp's quantizer (reference/check_quantized_exports.py --imatrix), and the reference that
`finch imatrix` is compared with (Tests: ImatrixTests).

Mixtures of experts (transformers 5's 3-D expert parameters): per expert, the rows routed to it,
as llama-imatrix counts MUL_MAT_ID rows; the router's input as `ffn_gate_inp`.

Usage: python3 reference/make_imatrix.py HF_FOLDER (--text FILE | --token-ids IDS.json [--bos ID])
           --output OUT.gguf [--ctx 512] [--chunks N] [--legacy OUT.dat]
"""
import argparse
import json
import os
import re
import struct
import sys

os.environ.setdefault("TQDM_DISABLE", "1")
import numpy as np
import torch
import gguf
from transformers import AutoModelForCausalLM, AutoTokenizer

# HF module suffix (after model.layers.N.) -> llama.cpp tensor name (after blk.N.)
GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.qkv_proj": "attn_qkv",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    "mlp.gate_up_proj": "ffn_up",
}


ROUTERS = ("mlp.gate", "block_sparse_moe.gate")
EXPERTS = ("mlp.experts", "block_sparse_moe.experts")


def gguf_name(module_name):
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", module_name)
    if not m or m.group(2) not in GGUF_NAMES:
        return None
    return f"blk.{m.group(1)}.{GGUF_NAMES[m.group(2)]}.weight"


def add_expert_hooks(name, module, sums, counts, hooks):
    """A mixture's experts (transformers 5 stores them as 3-D parameters): per expert, the rows
    routed to it enter gate/up, and act(gate) * up enters down."""
    layer = re.fullmatch(r"model\.layers\.(\d+)\..+", name).group(1)
    E, twoI, C = module.gate_up_proj.shape
    I = twoI // 2
    names = [f"blk.{layer}.ffn_gate_exps.weight", f"blk.{layer}.ffn_up_exps.weight", f"blk.{layer}.ffn_down_exps.weight"]
    for g, width in zip(names, [C, C, I]):
        sums[g] = np.zeros((E, width), dtype=np.float32)
        counts[g] = np.zeros(E, dtype=np.int64)

    def hook(mod, args):
        x, top_k_index = args[0].detach().to(torch.float32), args[1]
        for e in range(E):
            rows = (top_k_index == e).any(dim=-1).nonzero()[:, 0]
            if rows.numel() == 0:
                continue
            xe = x[rows]
            gate, up = torch.nn.functional.linear(xe, mod.gate_up_proj[e]).chunk(2, dim=-1)
            h = mod.act_fn(gate) * up
            for g, v in zip(names, [xe, xe, h]):
                sums[g][e] += (v * v).sum(dim=0).numpy()
                counts[g][e] += rows.numel()
    hooks.append(module.register_forward_pre_hook(hook))


def compute(model_dir, ids, bos, ctx, chunks):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    n_chunk = len(ids) // ctx
    if chunks is not None:
        n_chunk = min(n_chunk, chunks)
    if n_chunk < 1:
        sys.exit(f"the text gives {len(ids)} tokens, fewer than one chunk of {ctx}")
    sums, counts, hooks = {}, {}, []
    for name, module in model.named_modules():
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
        if m and m.group(2) in EXPERTS and getattr(module, "gate_up_proj", None) is not None and module.gate_up_proj.dim() == 3:
            add_expert_hooks(name, module, sums, counts, hooks)
            continue
        if m and m.group(2) in ROUTERS:
            g, width = f"blk.{m.group(1)}.ffn_gate_inp.weight", module.weight.shape[1]
        else:
            g = gguf_name(name)
            if g is None or not isinstance(module, torch.nn.Linear):
                continue
            width = module.in_features
        sums[g] = np.zeros((1, width), dtype=np.float32)
        counts[g] = np.zeros(1, dtype=np.int64)

        def hook(mod, args, g=g):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float32)
            sums[g][0] += (x * x).sum(dim=0).numpy()
            counts[g][0] += x.shape[0]
        hooks.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        for c in range(n_chunk):
            chunk = list(ids[c * ctx:(c + 1) * ctx])
            if bos is not None:
                chunk[0] = bos
            model(torch.tensor([chunk]))
    for h in hooks:
        h.remove()
    return sums, counts, n_chunk


def write_gguf(path, sums, counts, dataset, n_chunk, ctx):
    w = gguf.GGUFWriter(path, "imatrix")
    for kv in w.kv_data:   # llama-imatrix writes no general.architecture
        kv.pop("general.architecture", None)
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", [dataset])
    w.add_uint32("imatrix.chunk_count", n_chunk)
    w.add_uint32("imatrix.chunk_size", ctx)
    for name in sorted(sums):
        w.add_tensor(f"{name}.in_sum2", sums[name])
        w.add_tensor(f"{name}.counts", counts[name].astype(np.float32).reshape(-1, 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_legacy(path, sums, counts, dataset, n_chunk):
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(sums)))
        for name in sorted(sums):
            b = name.encode()
            if sums[name].shape[0] != 1:
                sys.exit("the legacy layout holds no experts: write GGUF only")
            mean = (sums[name][0] / counts[name][0]).astype(np.float32) * n_chunk
            f.write(struct.pack("<i", len(b)) + b + struct.pack("<ii", n_chunk, mean.size))
            f.write(mean.astype("<f4").tobytes())
        d = dataset.encode()
        f.write(struct.pack("<ii", n_chunk, len(d)) + d)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="HF model folder")
    ap.add_argument("--text", help="UTF-8 text, tokenized with the model's tokenizer (special tokens added)")
    ap.add_argument("--token-ids", help="a JSON list of token ids instead of --text (no BOS replacement unless --bos)")
    ap.add_argument("--bos", type=int, help="with --token-ids: the id that starts every chunk")
    ap.add_argument("--output", required=True, help="GGUF imatrix to write")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int)
    ap.add_argument("--legacy", help="also write the legacy .dat layout here")
    args = ap.parse_args()
    if args.token_ids:
        with open(args.token_ids) as f:
            ids, bos = json.load(f), args.bos
        dataset = os.path.basename(args.token_ids)
    else:
        tok = AutoTokenizer.from_pretrained(args.model)
        with open(args.text, encoding="utf-8") as f:
            ids = tok(f.read(), add_special_tokens=True)["input_ids"]
        with_special = tok("a", add_special_tokens=True)["input_ids"]
        adds_bos = tok.bos_token_id is not None and with_special[0] == tok.bos_token_id and \
            len(with_special) > len(tok("a", add_special_tokens=False)["input_ids"])
        bos = tok.bos_token_id if adds_bos else None
        dataset = os.path.basename(args.text)
    sums, counts, n_chunk = compute(args.model, ids, bos, args.ctx, args.chunks)
    write_gguf(args.output, sums, counts, dataset, n_chunk, args.ctx)
    if args.legacy:
        write_legacy(args.legacy, sums, counts, dataset, n_chunk)
    print(f"{len(sums)} entries over {n_chunk} chunks of {args.ctx} tokens -> {args.output}")


if __name__ == "__main__":
    main()
