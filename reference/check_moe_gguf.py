#!/usr/bin/env python3
"""Checks Finch's mixture-of-experts GGUF exports against llama.cpp and transformers.

Three tiny models: the `olmoe_moe` and `mixtral_moe` parity fixtures (llama.cpp architectures
`olmoe` and `llama` with experts; transformers has no GGUF reader for either) and a Qwen3-MoE built here with every layer routed (llama.cpp's
`qwen3moe` routes every layer; 4 experts of width 32, top 2 renormalised, q/k norms). For each:
`finch export --format gguf`, then
  (a) llama-cpp-python evaluates the rows (the file marked as having no vocabulary, as
      check_phi3_gguf.py does) and its logits are compared with transformers' on the HF folder;
  (b) qwen3moe only: transformers loads the GGUF (`gguf_file=`) and its loss on the rows is
      compared with the HF folder's. transformers' GGUF reader does not map
      `qwen3moe.expert_feed_forward_length` (it assumes Qwen3-MoE's default 768), so the
      expert width is passed to it.
Prints PASS where (a) is within 1e-4 of the largest logit (f32 KV cache) and (b) within 1e-4 relative.

Usage: python3 reference/check_moe_gguf.py [--finch .build/release/finch]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")
warnings.filterwarnings("ignore")

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Qwen3MoeConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_phi3_gguf import llama_cpp_logit_gap, with_placeholder_vocab  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "Tests", "FinchTestSupport", "Fixtures", "parity")


def routed_qwen3_moe(folder):
    """A tiny Qwen3-MoE with every layer routed, seeded, saved to `folder`."""
    gen = torch.Generator().manual_seed(7)
    cfg = Qwen3MoeConfig(vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
                         norm_topk_prob=True, mlp_only_layers=[], rope_theta=1000000.0, rms_norm_eps=1e-6,
                         max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("mlp.gate.weight"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(folder, safe_serialization=True)
    ids = torch.randint(3, 128, (2, 9), generator=gen)
    return ids, torch.ones_like(ids)


def llama_cpp_gap(path, work, ids, mask, logits):
    full = os.path.join(work, os.path.basename(path).replace(".gguf", "-vocab.gguf"))
    with_placeholder_vocab(path, full, logits.shape[-1])
    return llama_cpp_logit_gap(full, ids, mask, logits)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--finch", default=os.path.join(REPO, ".build", "release", "finch"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    ok = True
    with tempfile.TemporaryDirectory() as work:
        qwen = os.path.join(work, "qwen3_moe_routed")
        qwen_ids, qwen_mask = routed_qwen3_moe(qwen)
        cases = [("olmoe_moe", os.path.join(FIXTURES, "olmoe_moe"), None, None), ("mixtral_moe", os.path.join(FIXTURES, "mixtral_moe"), None, None),
                 ("qwen3_moe_routed", qwen, qwen_ids, qwen_mask)]
        for name, folder, ids, mask in cases:
            if ids is None:
                expected = load_file(os.path.join(folder, "expected.safetensors"))
                ids, mask = expected["input_ids"].long(), expected["attention_mask"].long()
            path = os.path.join(work, name + ".gguf")
            subprocess.run([args.finch, "export", "--model", folder, "--format", "gguf", "--output", path], check=True, capture_output=True)
            hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
            with torch.no_grad():
                out = hf(input_ids=ids, attention_mask=mask, labels=ids)
            gap = llama_cpp_gap(path, work, ids.numpy(), mask.numpy(), out.logits.numpy())
            verdict = gap < 1e-4
            ok &= verdict
            print(f"{name}: llama.cpp logits vs transformers (HF folder): max gap / max |logit| = {gap:.2e} {'PASS' if verdict else 'FAIL'}")
            if name.startswith("qwen3"):
                gg = AutoModelForCausalLM.from_pretrained(work, gguf_file=name + ".gguf", dtype=torch.float32, attn_implementation="eager",
                                                          moe_intermediate_size=hf.config.moe_intermediate_size).eval()
                with torch.no_grad():
                    loss = gg(input_ids=ids, attention_mask=mask, labels=ids).loss.item()
                rel = abs(loss - out.loss.item()) / out.loss.item()
                verdict = rel < 1e-4
                ok &= verdict
                print(f"{name}: transformers from the GGUF, loss {loss:.7f} vs HF folder {out.loss.item():.7f} ({rel:.1e} rel) "
                      f"{'PASS' if verdict else 'FAIL'}")
    print("mixture-of-experts GGUF:", "PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
