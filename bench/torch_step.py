#!/usr/bin/env python3
"""Time one LoRA training step (forward + backward) with torch on CPU.

Model: random LlamaConfig shaped like SmolLM2-135M (30 layers, hidden 576, 9 heads,
3 kv heads, intermediate 1536, vocab 49152, tied embeddings), fp32.
LoRA: r=16, alpha=32, dropout 0 on q/k/v/o/gate/up/down; base weights frozen.
A step is: zero_grad, forward with labels (mean CE), backward [, AdamW step if --optimizer].

Usage: python3 bench/torch_step.py [--batch 4] [--seq 512] [--steps 3] [--threads 2]
"""
import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM
from peft import LoraConfig, get_peft_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--optimizer", action="store_true", help="include an AdamW step on LoRA params")
    ap.add_argument("--json", help="also write results to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                      num_hidden_layers=args.layers, num_attention_heads=9, num_key_value_heads=3,
                      max_position_embeddings=max(8192, args.seq), rms_norm_eps=1e-5,
                      rope_theta=100000.0, tie_word_embeddings=True, hidden_act="silu")
    model = LlamaForCausalLM._from_config(cfg, attn_implementation=args.attn, dtype=torch.float32)
    lcfg = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                      "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, lcfg)
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4) \
        if args.optimizer else None

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=g)

    def step():
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        if opt is not None:
            opt.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    tokens = args.batch * args.seq
    print(f"torch lora step ({args.attn}, {args.threads} threads, batch {args.batch}x{args.seq}, "
          f"r={args.rank}, {trainable / 1e6:.2f}M/{total / 1e6:.1f}M trainable): "
          f"{sec:.3f} s/step, {tokens / sec:.1f} tokens/s (loss {loss:.4f}; steps {[round(t, 3) for t in times]})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "transformers": transformers.__version__,
                       "args": vars(args), "seconds_per_step": sec, "tokens_per_s": tokens / sec,
                       "step_times": times, "trainable_params": trainable, "total_params": total},
                      f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
