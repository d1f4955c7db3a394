#!/usr/bin/env python3
"""Generate golden parity fixtures for Finch's Swift tests.

For each tiny random model this writes Tests/FinchTests/Fixtures/parity/<name>/:
  config.json, model.safetensors   base model (transformers save_pretrained, F32)
  adapter/                         PEFT LoRA adapter (r=4, alpha=8, all 7 projections)
  expected.safetensors             inputs, logits, losses and gradients (all F32)

Deterministic: every random draw comes from an explicitly seeded generator.
Usage: python3 reference/make_parity_fixtures.py [--out DIR]
"""
import argparse
import copy
import json
import math
import os
import shutil
import sys

import torch
import transformers
import peft
import safetensors
from safetensors.torch import save_file, load_file
from transformers import LlamaConfig, Qwen2Config, Qwen3Config, SmolLM3Config, AutoModelForCausalLM
from peft import LoraConfig, get_peft_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "Tests", "FinchTests", "Fixtures", "parity")

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SEQ = 9
PAD_TOKEN = 0          # id placed at right-padded positions
N_PROMPT = 2           # first positions of each row masked out of the labels
N_PAD_ROW1 = 3         # right padding in row 1

# Scales of the random weights. Chosen so that attention is far from uniform and
# logits have O(1) spread, which makes numerical mistakes visible.
STD_EMBED = 0.1
STD_LINEAR = 0.08
STD_BIAS = 0.1
STD_NORM = 0.1         # norms are 1 + STD_NORM * randn
STD_LORA = 0.1


def model_specs():
    common = dict(hidden_size=64, num_hidden_layers=2, max_position_embeddings=512,
                  hidden_act="silu", bos_token_id=1, eos_token_id=2, pad_token_id=PAD_TOKEN)
    return [
        ("llama_tied", LlamaConfig(
            vocab_size=128, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
            tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-5, **common), {}),
        ("qwen2_bias", Qwen2Config(
            vocab_size=128, intermediate_size=96, num_attention_heads=8, num_key_value_heads=2,
            tie_word_embeddings=False, rope_theta=1000000.0, rms_norm_eps=1e-6,
            use_sliding_window=False, **common), {"use_rslora": True}),
        ("llama_scaled", LlamaConfig(
            vocab_size=160, intermediate_size=128, num_attention_heads=4, num_key_value_heads=1,
            tie_word_embeddings=False, rope_theta=500000.0, rms_norm_eps=1e-5,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
            **common), {}),
        ("qwen3_qknorm", Qwen3Config(
            vocab_size=128, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6,
            use_sliding_window=False, **common), {}),
        ("smollm3_norope", SmolLM3Config(
            vocab_size=128, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
            tie_word_embeddings=True, rope_theta=2000000.0, rms_norm_eps=1e-6, no_rope_layers=[1, 0],
            use_sliding_window=False, **common), {}),
    ]


def randomize(model, gen):
    """Overwrite every parameter with seeded random values (in named_parameters order)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):           # input/post_attention/final/q/k norms
                p.copy_(1.0 + STD_NORM * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(STD_BIAS * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(STD_EMBED * torch.randn(p.shape, generator=gen))
            elif p.dim() == 2:
                p.copy_(STD_LINEAR * torch.randn(p.shape, generator=gen))
            else:
                raise RuntimeError(f"unexpected parameter {name} {tuple(p.shape)}")


def make_batch(vocab, gen):
    ids = torch.randint(3, vocab, (2, SEQ), generator=gen)
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[1, SEQ - N_PAD_ROW1:] = 0
    ids[1, SEQ - N_PAD_ROW1:] = PAD_TOKEN
    labels = ids.clone()
    labels[:, :N_PROMPT] = -100
    labels[mask == 0] = -100
    return ids, mask, labels


def manual_loss(logits, labels):
    """HF convention: predict labels[t+1] from position t, mean over non-ignored targets."""
    shift_logits = logits[:, :-1, :].reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    return torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100,
                                             reduction="mean")


def check_llama3_scaling(model, cfg):
    rot = model.model.rotary_emb
    inv_scaled = rot.inv_freq.detach().double()
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    theta = cfg.rope_parameters["rope_theta"]
    inv_plain = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    ratio = (inv_scaled / inv_plain).tolist()
    factor = cfg.rope_parameters["factor"]
    unchanged = sum(abs(r - 1.0) < 1e-5 for r in ratio)
    scaled = sum(abs(r - 1.0 / factor) < 1e-5 for r in ratio)
    smoothed = len(ratio) - unchanged - scaled
    print(f"  llama3 rope: inv_freq ratio scaled/plain = {[round(r, 5) for r in ratio]}")
    print(f"  llama3 rope: {unchanged} unchanged, {smoothed} smoothed, {scaled} scaled by 1/{factor}")
    assert unchanged >= 1 and smoothed >= 1 and scaled >= 1, "llama3 scaling does not exercise all regimes"
    assert getattr(rot, "attention_scaling", 1.0) == 1.0


def build(name, cfg, lora_extra, out_root, seed):
    print(f"== {name}")
    gen = torch.Generator().manual_seed(seed)
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    randomize(model, gen)
    if name == "llama_scaled":
        check_llama3_scaling(model, model.config)

    out = os.path.join(out_root, name)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    model.save_pretrained(out, safe_serialization=True)
    for extra in ("generation_config.json",):
        p = os.path.join(out, extra)
        if os.path.exists(p):
            os.remove(p)

    ids, mask, labels = make_batch(cfg.vocab_size, gen)
    tensors = {
        "input_ids": ids.float(),
        "attention_mask": mask.float(),
        "labels": labels.float(),
    }

    # --- base forward + full fine-tuning gradients
    full = copy.deepcopy(model)
    full.eval()
    for p in full.parameters():
        p.requires_grad_(True)
    outb = full(input_ids=ids, attention_mask=mask, labels=labels)
    ml = manual_loss(outb.logits, labels)
    assert torch.allclose(outb.loss, ml, rtol=1e-6, atol=1e-6), (outb.loss, ml)
    outb.loss.backward()
    tensors["logits"] = outb.logits.detach().float().contiguous()
    tensors["loss"] = outb.loss.detach().reshape(1).float()
    names = []
    for pname, p in full.named_parameters():
        assert p.grad is not None, pname
        tensors[f"grad.full.{pname}"] = p.grad.detach().float().contiguous()
        names.append(pname)
    if cfg.tie_word_embeddings:
        assert "lm_head.weight" not in names
        assert full.lm_head.weight.data_ptr() == full.model.embed_tokens.weight.data_ptr()
    print(f"  loss {outb.loss.item():.6f}  logits std {outb.logits.std().item():.3f}  params {len(names)}")

    # --- LoRA
    lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS,
                      init_lora_weights=False, **lora_extra)
    pmodel = get_peft_model(copy.deepcopy(model), lcfg)
    pmodel.eval()
    with torch.no_grad():
        for pname, p in pmodel.named_parameters():
            if "lora_" in pname:
                p.copy_(STD_LORA * torch.randn(p.shape, generator=gen))
    adir = os.path.join(out, "adapter")
    pmodel.save_pretrained(adir, safe_serialization=True)
    readme = os.path.join(adir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    # PEFT writes target_modules from a set (order depends on the hash seed); sort it so
    # the file is byte-for-byte reproducible
    acfg_path = os.path.join(adir, "adapter_config.json")
    acfg = json.load(open(acfg_path))
    acfg["target_modules"] = sorted(acfg["target_modules"])
    with open(acfg_path, "w") as f:
        json.dump(acfg, f, indent=2, sort_keys=True)
        f.write("\n")
    saved = load_file(os.path.join(adir, "adapter_model.safetensors"))

    outl = pmodel(input_ids=ids, attention_mask=mask, labels=labels)
    assert torch.allclose(outl.loss, manual_loss(outl.logits, labels), rtol=1e-6, atol=1e-6)
    outl.loss.backward()
    tensors["lora_logits"] = outl.logits.detach().float().contiguous()
    tensors["lora_loss"] = outl.loss.detach().reshape(1).float()
    n_lora = 0
    for pname, p in pmodel.named_parameters():
        if not p.requires_grad:
            continue
        assert "lora_" in pname, pname
        key = pname.replace(".default.", ".")
        assert key in saved, f"{key} not in saved adapter"
        assert torch.equal(saved[key], p.detach()), key
        tensors[f"grad.lora.{key}"] = p.grad.detach().float().contiguous()
        n_lora += 1
    assert n_lora == len(saved), (n_lora, len(saved))
    # the adapter must really change the output
    assert (outl.logits - outb.logits).abs().max().item() > 1e-2
    print(f"  lora loss {outl.loss.item():.6f}  lora tensors {n_lora}")

    # no metadata: safetensors writes its metadata map in random order, which would make
    # the file bytes differ between runs (versions are recorded in README.md instead)
    save_file(tensors, os.path.join(out, "expected.safetensors"))
    return json.load(open(os.path.join(out, "config.json")))


README = """# Parity fixtures

Golden outputs of tiny random Hugging Face models, used by the Swift parity tests.
Generated by `reference/make_parity_fixtures.py` (seeded, deterministic); regenerate with

    python3 reference/make_parity_fixtures.py

Versions used: torch {torch}, transformers {transformers}, peft {peft}, safetensors {safetensors}.

Each `<name>/` holds:

- `config.json`, `model.safetensors`: the base model as written by `save_pretrained` (F32;
  tied models have no `lm_head.weight`). Rope settings are under `rope_parameters`
  (transformers 5 format: `rope_theta`, `rope_type`, plus llama3 scaling fields).
- `adapter/`: PEFT LoRA adapter (`adapter_config.json`, `adapter_model.safetensors`),
  r=4, lora_alpha=8, dropout 0, targets q/k/v/o/gate/up/down, random A and B
  (`qwen2_bias` uses rsLoRA: scale = alpha/sqrt(r) = 4; others alpha/r = 2).
- `expected.safetensors` (all F32):
  - `input_ids` [2,9] (ids as floats), `attention_mask` [2,9] (row 1: last 3 positions 0,
    right padding with id {pad}), `labels` [2,9] unshifted HF convention: -100 at the first
    2 positions of each row and at padded positions.
  - `logits` [2,9,V], `loss` [1]: base model; loss = mean CE of logits[:, t] vs labels[:, t+1]
    over targets != -100 (11 targets).
  - `lora_logits` [2,9,V], `lora_loss` [1]: with the adapter active.
  - `grad.lora.<key>`: d lora_loss / d LoRA param, `<key>` exactly as in
    `adapter_model.safetensors`, e.g. `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.
  - `grad.full.<name>`: d loss / d param with all base parameters trainable, HF names
    (e.g. `model.layers.0.mlp.up_proj.weight`); tied models have only
    `model.embed_tokens.weight` (includes the head's contribution).

Attention is eager, fp32, with the mask = causal AND key-not-padded. Logits at padded
query positions are therefore defined (they attend to earlier real tokens) but no test
should need them; position ids are 0..8 for both rows.

Models:

| name | arch | V | hidden | inter | heads/kv | head_dim | tie | rope |
|---|---|---|---|---|---|---|---|---|
| llama_tied | llama | 128 | 64 | 96 | 4/2 | 16 | yes | theta 1e4 |
| qwen2_bias | qwen2 (qkv bias) | 128 | 64 | 96 | 8/2 | 8 | no | theta 1e6 |
| llama_scaled | llama | 160 | 64 | 128 | 4/1 | 16 | no | theta 5e5, llama3 factor 8, low 1, high 4, orig_max 64 |
| qwen3_qknorm | qwen3 (q/k norm) | 128 | 64 | 96 | 4/2 | 16 | yes | theta 1e6 |
| smollm3_norope | smollm3 (layer 1 without RoPE) | 128 | 64 | 96 | 4/2 | 16 | yes | theta 2e6, no_rope_layers [1, 0] |

`llama_scaled`'s original_max_position_embeddings=64 makes the 8 rope frequencies hit all
three llama3 regimes (1 unchanged, 1 smoothed, 6 divided by 8); the script asserts this.
Weights: embeddings N(0,0.1), linear N(0,0.08), biases N(0,0.1), every norm weight
(including q_norm/k_norm) 1+0.1*N(0,1), LoRA A/B N(0,0.1).
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--only", help="write this model's fixture alone (the others keep their bytes)")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    os.makedirs(args.out, exist_ok=True)
    for i, (name, cfg, extra) in enumerate(model_specs()):
        if args.only and name != args.only:
            continue
        written = build(name, cfg, extra, args.out, seed=1000 + i)
        rope_keys = {k: v for k, v in written.items() if "rope" in k}
        print(f"  config.json rope fields: {rope_keys}")
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(README.format(torch=torch.__version__, transformers=transformers.__version__,
                              peft=peft.__version__, safetensors=safetensors.__version__,
                              pad=PAD_TOKEN))
    total = 0
    for root, _, files in os.walk(args.out):
        for fn in files:
            total += os.path.getsize(os.path.join(root, fn))
    print(f"total fixture size {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
