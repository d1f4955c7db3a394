#!/usr/bin/env python3
"""Generate golden parity fixtures for Finch's Swift tests.

For each tiny random model this writes Tests/FinchTestSupport/Fixtures/parity/<name>/:
  config.json, model.safetensors   base model (transformers save_pretrained, F32)
  adapter/                         PEFT LoRA adapter (r=4, alpha=8, all 7 projections)
  expected.safetensors             inputs, logits, losses, gradients and a greedy decode (all F32)

Deterministic: every random draw comes from an explicitly seeded generator.
Usage: python3 reference/make_parity_fixtures.py [--out DIR] [--only NAME]
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
from transformers import (LlamaConfig, Qwen2Config, Qwen3Config, SmolLM3Config, Gemma2Config,
                          Gemma3TextConfig, Phi3Config, Qwen3MoeConfig, MixtralConfig, OlmoeConfig,
                          AutoModelForCausalLM)
from peft import LoraConfig, get_peft_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "Tests", "FinchTestSupport", "Fixtures", "parity")

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Phi-3 joins q, k, v and gate, up: PEFT adapts the joined modules
PHI3_LORA_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
# Mixture of experts (transformers 5 holds each layer's experts as 3D parameters): PEFT adapts
# them through `target_parameters`, one rank-r pair per expert stacked in one lora_A / lora_B
MOE_LORA_PARAMETERS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
MOE_AUX_COEF = 0.1     # router_aux_loss_coef: large enough that its gradient shows (default 0.001)
SEQ = 9
PAD_TOKEN = 0          # id placed at right-padded positions
N_PROMPT = 2           # first positions of each row masked out of the labels
N_PAD_ROW1 = 3         # right padding in row 1
N_GREEDY_PROMPT = 4    # greedy decode: prompt = first ids of row 0
N_GREEDY_NEW = 32      # greedy decode: new tokens, never stopped early

# Scales of the random weights. Chosen so that attention is far from uniform and
# logits have O(1) spread, which makes numerical mistakes visible.
STD_EMBED = 0.1
STD_LINEAR = 0.08
STD_BIAS = 0.1
STD_NORM = 0.1         # norms are 1 + STD_NORM * randn (Gemma: stored STD_NORM * randn, used as 1 + w)
STD_LORA = 0.1
STD_ROUTER = 0.3       # router weights: probabilities far from uniform, top-k choices clear


def phi3_config(max_positions, original):
    """The tiny Phi-3 (Phi-4-mini style): joined projections, partial rotary factor 0.5, LongRoPE."""
    return Phi3Config(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        original_max_position_embeddings=original, rms_norm_eps=1e-5, hidden_act="silu",
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                         "short_factor": [1.0, 1.3, 1.9, 2.6], "long_factor": [1.1, 2.0, 3.5, 7.0]},
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=PAD_TOKEN)


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
        # Gemma 2: query_pre_attn_scalar != head_dim, layer 0 sliding (window 4 < SEQ 9), layer 1 full,
        # attention and final softcaps small enough that the tanh is far from linear here
        ("gemma2_softcap", Gemma2Config(
            vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            hidden_activation="gelu_pytorch_tanh", max_position_embeddings=512, rms_norm_eps=1e-6,
            query_pre_attn_scalar=24, sliding_window=4,
            layer_types=["sliding_attention", "full_attention"],
            attn_logit_softcapping=0.75, final_logit_softcapping=2.0,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=PAD_TOKEN), {}),
        # Gemma 3 (text): q/k norms, local rope base 1e4 on the sliding layer 0, global base 1e6
        # with linear scaling (factor 2) on the full layer 1, no softcaps (as in the released models)
        ("gemma3_sliding", Gemma3TextConfig(
            vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            hidden_activation="gelu_pytorch_tanh", max_position_embeddings=512, rms_norm_eps=1e-6,
            query_pre_attn_scalar=24, sliding_window=4,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0}},
            tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=PAD_TOKEN), {}),
        # Phi-3 family (Phi-4-mini style): joined qkv_proj and gate_up_proj, partial rotary factor
        # 0.5 (8 of 16 dimensions rotate), LongRoPE with original context 8 < SEQ 9, so the
        # training pass takes the long factors (the greedy decode crosses from short to long and
        # is left out: transformers' own cached generate and full forwards disagree there)
        ("phi3_longrope", phi3_config(max_positions=64, original=8),
            {"targets": PHI3_LORA_TARGETS, "greedy": False}),
        # Phi-3 again, within LongRoPE's original context (64 > the 36 positions of the greedy decode):
        # the short factors throughout, so transformers' cached generate and its full forwards agree
        ("phi3_short", phi3_config(max_positions=256, original=64),
            {"targets": PHI3_LORA_TARGETS}),
        # Qwen3-MoE: 4 experts, top 2 renormalised (norm_topk_prob), q/k norms; layer 1 is a
        # dense MLP (mlp_only_layers), layers 0 and 2 route; the load-balancing loss is in the loss
        ("qwen3_moe", Qwen3MoeConfig(
            vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
            norm_topk_prob=True, mlp_only_layers=[1], decoder_sparse_step=1, output_router_logits=True,
            router_aux_loss_coef=MOE_AUX_COEF, rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=512,
            tie_word_embeddings=False, use_sliding_window=False, bos_token_id=1, eos_token_id=2, pad_token_id=PAD_TOKEN),
            {"moe": True}),
        # Mixtral: 4 experts (w1, w3, w2 in block_sparse_moe on disk), top 2 always renormalised
        ("mixtral_moe", MixtralConfig(
            vocab_size=128, hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, output_router_logits=True,
            router_aux_loss_coef=MOE_AUX_COEF, rope_theta=1000000.0, rms_norm_eps=1e-5, max_position_embeddings=512,
            sliding_window=None, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=PAD_TOKEN),
            {"moe": True}),
        # OLMoE: 4 experts, top 2 not renormalised, q and k normed over all heads at once
        ("olmoe_moe", OlmoeConfig(
            vocab_size=128, hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, num_experts=4, num_experts_per_tok=2, norm_topk_prob=False,
            output_router_logits=True, router_aux_loss_coef=MOE_AUX_COEF, rope_theta=50000.0, rms_norm_eps=1e-5,
            max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
            pad_token_id=PAD_TOKEN), {"moe": True}),
    ]


# Gemma's RMSNorm multiplies by (1 + weight): the stored weight is centred on 0, not 1
ZERO_CENTRED_NORM_TYPES = ("gemma2", "gemma3_text")


def randomize(model, gen):
    """Overwrite every parameter with seeded random values (in named_parameters order)."""
    norm_centre = 0.0 if model.config.model_type in ZERO_CENTRED_NORM_TYPES else 1.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            # input/post_attention/final/q/k norms, and Gemma's pre_/post_feedforward_layernorm
            if name.endswith("norm.weight"):
                p.copy_(norm_centre + STD_NORM * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(STD_BIAS * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(STD_EMBED * torch.randn(p.shape, generator=gen))
            elif name.endswith("mlp.gate.weight"):     # a mixture of experts' router
                p.copy_(STD_ROUTER * torch.randn(p.shape, generator=gen))
            elif p.dim() == 2 or name.endswith(("experts.gate_up_proj", "experts.down_proj")):
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


def routing_margins(model, ids, mask):
    """The smallest gap between the k-th and (k+1)-th router probability over every real token
    and routed layer: a gap near 0 would make the chosen experts depend on rounding."""
    logits = model(input_ids=ids, attention_mask=mask, output_router_logits=True).router_logits
    k = model.config.num_experts_per_tok
    real = mask.reshape(-1).bool()
    gaps = []
    for layer in logits:
        top = torch.softmax(layer.float(), dim=-1)[real].topk(k + 1, dim=-1).values
        gaps.append((top[:, k - 1] - top[:, k]).min().item())
    print(f"  routing: {len(logits)} routed layers, smallest top-k gap {min(gaps):.5f}")
    assert min(gaps) > 1e-4, "a routing choice is a near tie"
    counts = torch.zeros(model.config.num_experts if hasattr(model.config, "num_experts") else model.config.num_local_experts)
    for layer in logits:
        counts += torch.bincount(layer[real].topk(k, dim=-1).indices.reshape(-1), minlength=counts.numel()).float()
    print(f"  tokens per expert over the routed layers: {counts.tolist()}")
    assert (counts > 0).all(), "an expert gets no token"


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


def softcap_activity(model, ids, mask):
    """Fraction of the pre-cap attention scores (at unmasked positions) and final logits with
    |x| / cap > 0.5, i.e. where tanh is clearly not the identity."""
    import transformers.models.gemma2.modeling_gemma2 as g2
    cfg = model.config
    scores, logits = [], []
    orig = g2.eager_attention_forward

    def spy(module, query, key, value, attention_mask, scaling=None, softcap=None, **kw):
        keys = g2.repeat_kv(key, module.num_key_value_groups)
        s = torch.matmul(query, keys.transpose(2, 3)) * scaling
        allowed = (attention_mask == 0).expand_as(s)
        scores.append(s[allowed].detach().abs() / softcap)
        return orig(module, query, key, value, attention_mask, scaling=scaling, softcap=softcap, **kw)

    g2.eager_attention_forward = spy
    hook = model.lm_head.register_forward_hook(lambda m, i, o: logits.append(o.detach()))
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    finally:
        g2.eager_attention_forward = orig
        hook.remove()
    assert len(scores) == cfg.num_hidden_layers
    a = torch.cat(scores)
    f = logits[0].abs() / cfg.final_logit_softcapping
    fa, ff = (a > 0.5).float().mean().item(), (f > 0.5).float().mean().item()
    print(f"  softcap activity: attention |s|/{cfg.attn_logit_softcapping} > 0.5 for {fa:.1%} of "
          f"{a.numel()} scores (max {a.max().item():.2f}); final |z|/{cfg.final_logit_softcapping} "
          f"> 0.5 for {ff:.1%} of {f.numel()} logits (max {f.max().item():.2f})")
    assert fa > 0.15 and ff > 0.15, "softcaps are not active enough"


def check_sliding(model, ids, mask):
    """The sliding window must change the output (window < sequence length)."""
    cfg = copy.deepcopy(model.config)
    cfg.sliding_window = 10 * SEQ          # same layer types (and rope), window wider than SEQ
    full = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    full.load_state_dict(model.state_dict())
    full.eval()
    with torch.no_grad():
        d = (full(input_ids=ids, attention_mask=mask).logits
             - model(input_ids=ids, attention_mask=mask).logits).abs().max().item()
    print(f"  sliding window: max |logits(window {model.config.sliding_window}) - logits(no window)| = {d:.4f}")
    assert d > 1e-2, "the sliding window does not change the logits"


def check_longrope(model, ids, mask):
    """The 9-token pass must take LongRoPE's long factors (positions past the original 8), and
    the partial rotary factor must leave dimensions unrotated."""
    rot = model.model.rotary_emb
    cfg = model.config
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    long_inv = getattr(rot, "long_inv_freq", None)
    assert long_inv is not None and torch.equal(rot.inv_freq, long_inv), "the pass did not use the long factors"
    dim = int(cfg.hidden_size // cfg.num_attention_heads * cfg.rope_parameters["partial_rotary_factor"])
    assert rot.inv_freq.numel() == dim // 2 and dim < cfg.hidden_size // cfg.num_attention_heads
    print(f"  longrope: long inv_freq {[round(x, 6) for x in rot.inv_freq.tolist()]}, attention factor "
          f"{rot.attention_scaling:.6f}, rotary dims {dim} of {cfg.hidden_size // cfg.num_attention_heads}")
    assert rot.attention_scaling > 1.0


def greedy(model, prompt):
    """N_GREEDY_NEW greedy tokens after `prompt` [1, P] and the logits each was picked from:
    argmax of a full forward at each step (no cache, no eos handling); checked against
    transformers' generate (incremental, with its cache)."""
    seq = prompt.clone()
    steps = []
    with torch.no_grad():
        for _ in range(N_GREEDY_NEW):
            logits = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[0, -1]
            steps.append(logits)
            seq = torch.cat([seq, logits.argmax().reshape(1, 1)], dim=1)
    new = seq[0, prompt.shape[1]:]
    gcfg = transformers.GenerationConfig(do_sample=False, max_new_tokens=N_GREEDY_NEW,
                                         min_new_tokens=0, eos_token_id=None, pad_token_id=PAD_TOKEN,
                                         return_dict_in_generate=True, output_logits=True)
    model.generation_config.eos_token_id = None   # else generate stops at eos, which the argmax loop does not
    with torch.no_grad():
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                             generation_config=gcfg)
    assert torch.equal(out.sequences[0, prompt.shape[1]:], new), (out.sequences, new)
    cached = torch.stack([l[0] for l in out.logits])
    full = torch.stack(steps)
    assert torch.allclose(cached, full, rtol=1e-4, atol=1e-4), (cached - full).abs().max()
    top2 = full.topk(2, dim=-1).values
    margin = (top2[:, 0] - top2[:, 1]).min().item()
    print(f"  greedy: smallest top-1/top-2 logit gap {margin:.4f}")
    assert margin > 1e-3, "a greedy step is a near tie"
    return new, full


def build(name, cfg, lora_extra, out_root, seed):
    print(f"== {name}")
    gen = torch.Generator().manual_seed(seed)
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    randomize(model, gen)
    if name == "llama_scaled":
        check_llama3_scaling(model, model.config)
    if model.config.model_type in ZERO_CENTRED_NORM_TYPES:
        norms = [p for n, p in model.named_parameters() if n.endswith("norm.weight")]
        assert len(norms) == 6 * cfg.num_hidden_layers + 1 if cfg.model_type == "gemma3_text" \
            else len(norms) == 4 * cfg.num_hidden_layers + 1, len(norms)
        assert all(p.abs().mean().item() < 0.3 for p in norms)   # stored w, scale is 1 + w

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
    if getattr(cfg, "final_logit_softcapping", None) is not None:
        softcap_activity(model, ids, mask)
    if "sliding_attention" in (getattr(cfg, "layer_types", None) or []):
        check_sliding(model, ids, mask)
    is_moe = lora_extra.get("moe", False)
    if is_moe:
        routing_margins(model, ids, mask)
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
    if is_moe:
        assert outb.aux_loss is not None and outb.aux_loss.item() > 0
        tensors["aux_loss"] = outb.aux_loss.detach().reshape(1).float()
        tensors["ce_loss"] = ml.detach().reshape(1).float()
        ml = ml + cfg.router_aux_loss_coef * outb.aux_loss
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
    lora_extra = dict(lora_extra)
    targets = lora_extra.pop("targets", LORA_TARGETS)
    with_greedy = lora_extra.pop("greedy", True)
    if lora_extra.pop("moe", False):
        lora_extra["target_parameters"] = MOE_LORA_PARAMETERS
    lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
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
    if acfg.get("target_parameters"):
        acfg["target_parameters"] = sorted(acfg["target_parameters"])
    with open(acfg_path, "w") as f:
        json.dump(acfg, f, indent=2, sort_keys=True)
        f.write("\n")
    saved = load_file(os.path.join(adir, "adapter_model.safetensors"))

    outl = pmodel(input_ids=ids, attention_mask=mask, labels=labels)
    lora_manual = manual_loss(outl.logits, labels)
    if is_moe:
        tensors["lora_aux_loss"] = outl.aux_loss.detach().reshape(1).float()
        lora_manual = lora_manual + cfg.router_aux_loss_coef * outl.aux_loss
    assert torch.allclose(outl.loss, lora_manual, rtol=1e-6, atol=1e-6)
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

    # --- greedy decode with the base model (uses no random draws)
    if with_greedy:
        prompt = ids[:1, :N_GREEDY_PROMPT]
        tokens, step_logits = greedy(model, prompt)
        tensors["greedy_prompt"] = prompt[0].float().contiguous()
        tensors["greedy_tokens"] = tokens.float().contiguous()
        tensors["greedy_logits"] = step_logits.float().contiguous()
        print(f"  greedy {prompt[0].tolist()} -> {tokens.tolist()}")
    if cfg.model_type == "phi3" and cfg.original_max_position_embeddings < ids.shape[1]:
        check_longrope(model, ids, mask)

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
  (transformers 5 format: `rope_theta`, `rope_type`, plus llama3 scaling fields; Gemma 3 nests
  one such dict per layer type: `sliding_attention`, `full_attention`).
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
  - `greedy_prompt` [4]: the first 4 ids of row 0 (as floats); `greedy_tokens` [32]: the 32 new
    tokens of greedy decoding from that prompt with the base model (argmax at every step, no
    eos stop, ties never closer than 1e-3); `greedy_logits` [32,V]: the logits each token was
    picked from (last position; equal to a full forward over prompt + tokens so far, and to
    transformers' cached `generate` within 1e-4). Only in fixtures written since these keys
    were added: `gemma2_softcap`, `gemma3_sliding` (the others get them when regenerated).

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
| gemma2_softcap | gemma2 (sliding window 4: layer 0 sliding, 1 full; attn softcap 0.75, final softcap 2.0; query_pre_attn_scalar 24) | 128 | 64 | 96 | 4/2 | 16 | yes | theta 1e4 |
| gemma3_sliding | gemma3_text (q/k norm; sliding window 4: layer 0 sliding, 1 full; query_pre_attn_scalar 24; no softcaps) | 128 | 64 | 96 | 4/2 | 16 | yes | sliding layer theta 1e4; full layer theta 1e6, linear factor 2 |
| phi3_longrope | phi3 (qkv_proj and gate_up_proj joined; LoRA on qkv_proj, o_proj, gate_up_proj, down_proj; no greedy keys) | 128 | 64 | 96 | 4/2 | 16 | no | theta 1e4, partial rotary 0.5 (8 of 16 dims), longrope: original 8 < 9 positions, so the long factors, attention factor sqrt(1 + ln 8 / ln 8) |

| phi3_short | phi3 as phi3_longrope, original context 64: the short factors throughout (greedy keys) | 128 | 64 | 96 | 4/2 | 16 | no | theta 1e4, partial rotary 0.5, longrope with max 256 / original 64 |
| qwen3_moe | qwen3_moe (4 experts of width 32, top 2 renormalised; layer 1 dense (mlp_only_layers), layers 0 and 2 routed) | 128 | 64 | 96 | 4/2 | 16 | no | theta 1e6 |
| mixtral_moe | mixtral (4 experts of width 32, top 2; w1/w3/w2 under block_sparse_moe on disk) | 128 | 64 | 32 | 4/2 | 16 | no | theta 1e6 |
| olmoe_moe | olmoe (4 experts of width 32, top 2 not renormalised; q and k normed over all heads) | 128 | 64 | 32 | 4/4 | 16 | no | theta 5e4 |

Mixtures of experts: `output_router_logits` and `router_aux_loss_coef` 0.1, so `loss` is the mean
cross-entropy (`ce_loss`) plus 0.1 x the load-balancing loss (`aux_loss`, transformers'
`load_balancing_loss_func` with the attention mask); `lora_loss` likewise (`lora_aux_loss`).
The router weights are N(0, 0.3) so that choices are clear: the script asserts the k-th and
(k+1)-th router probabilities of every real token differ by more than 1e-4 and that every expert
gets a token. `model.safetensors` holds each expert's projections apart (transformers 5 writes
the checkpoint layout back); `grad.full.*` holds transformers' in-memory names: per layer
`mlp.experts.gate_up_proj` [E, 2I, C] (gate rows, then up), `mlp.experts.down_proj` [E, C, I] and
`mlp.gate.weight` [E, C]. The adapters put LoRA on q/k/v/o and, through PEFT's
`target_parameters`, on `mlp.experts.gate_up_proj` (PEFT's own rank_pattern: rank 8, alpha 16)
and `mlp.experts.down_proj` (rank 4): A [r*E, in] (expert e's rows e*r..), B [out, r*E] (expert
e's column j at j*E + e); with both, gate_up's pair is `mlp.experts.base_layer.lora_*`.

`llama_scaled`'s original_max_position_embeddings=64 makes the 8 rope frequencies hit all
three llama3 regimes (1 unchanged, 1 smoothed, 6 divided by 8); the script asserts this.
Weights: embeddings N(0,0.1), linear N(0,0.08), biases N(0,0.1), every norm weight
(including q_norm/k_norm) 1+0.1*N(0,1), LoRA A/B N(0,0.1). Gemma norms compute x_hat * (1 + w),
so there the stored weight is 0.1*N(0,1) (same draws, effective scale again 1+0.1*N(0,1));
Gemma scales the embeddings by sqrt(hidden) = 8 (exact in F32). `gemma2_softcap`'s caps are
small so that tanh is far from linear: the script prints and asserts the fraction of pre-cap
attention scores and final logits with |x|/cap > 0.5 (26% and 20%). Sliding windows: key j is
visible from query i iff i - window < j <= i (and j is not padding); the script asserts the
window changes the logits. Full Gemma semantics: `reference/GEMMA_SEMANTICS.md`.
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
