#!/usr/bin/env python3
"""Time real LoRA training steps of the Python stacks, run by bench/compare_training.py.

--system hf:      transformers + peft, trained by TRL's own trainers: ORPOTrainer (trl.experimental.orpo)
                  for --method orpo, SFTTrainer for --method sft, with the configs' defaults: TRL 1.x
                  defaults gradient_checkpointing=True (recorded in the RESULT line).
--system unsloth: Unsloth's CPU path (FastLanguageModel + its patched SFTTrainer; SFT only), with
                  Unsloth's defaults (use_gradient_checkpointing="unsloth").

Both: LoRA r=16, alpha=32, dropout 0, on q/k/v/o/gate/up/down; fp32 weights; --precision default
keeps the trainer config's bf16 default (TRL: bf16=True, autocast; native where the CPU has
AVX512_BF16 or AMX), --precision fp32 sets bf16=False; AdamW (torch), lr 1e-4
constant, max_grad_norm 1 (the trainers' default clipping), batch --batch, no accumulation.
A step is what the HF Trainer does between on_step_begin and on_step_end: forward, loss,
backward, clipping, optimizer step, zero_grad (the batch is already collated). The first
--warmup steps are not timed; the median of the next --steps is reported.

Shapes match `finch bench step --method ...`:
  sft:  --batch rows of --seq random token ids, pre-tokenized (SFTTrainer skips tokenization),
        loss on every token.
  orpo: --batch pairs; chosen and rejected rows are --seq tokens each: BOS + a prompt of
        --prompt-length - 1 tokens (masked) + a completion of --seq - --prompt-length tokens
        ending in EOS. ORPOTrainer only takes text, so the prompt is "hello" + " the" * k and the
        completions " yes" * k / " no" * k (one token per word in SmolLM2's tokenizer); the
        lengths are checked after the trainer's tokenization.

Prints one JSON line starting with "RESULT ".
"""
import argparse
import json
import os
import statistics
import sys
import time

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--system", choices=["hf", "unsloth"], required=True)
    ap.add_argument("--method", choices=["sft", "orpo"], required=True)
    ap.add_argument("--model", required=True, help="an HF model folder (with its tokenizer)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--prompt-length", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--gradient-checkpointing", choices=["default", "off"], default="default",
                    help="default: the trainer config's own (TRL 1.x: on); off: gradient_checkpointing=False")
    ap.add_argument("--precision", choices=["default", "fp32"], default="default",
                    help="default: the trainer config's own (TRL: bf16=True); fp32: bf16=False")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", default="/tmp/finch-bench-trainer")
    args = ap.parse_args()

    if args.system == "unsloth":
        if args.method != "sft":
            sys.exit("unsloth's CPU path supports SFT only")
        os.environ.setdefault("UNSLOTH_SKIP_TORCHVISION_CHECK", "1")
        import unsloth  # noqa: F401  (must come before transformers / trl to patch them)
        from unsloth import FastLanguageModel
    import torch
    import transformers
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    timer = StepTimer()
    total_steps = args.warmup + args.steps
    common = dict(output_dir=args.output, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                  max_steps=total_steps, learning_rate=1e-4, lr_scheduler_type="constant", warmup_steps=0,
                  optim="adamw_torch", weight_decay=0.0, max_grad_norm=1.0, logging_steps=10**6,
                  save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, seed=0,
                  dataloader_num_workers=0)
    # --precision default leaves bf16 unset: TRL's configs then default to bf16=True (fp32 master
    # weights, matmuls autocast to bf16: native on CPUs with AVX512_BF16 or AMX, emulated and
    # ~10x slower on AVX2). fp32 sets bf16=False.
    if args.precision == "fp32":
        common.update(bf16=False, fp16=False)
    if args.gradient_checkpointing == "off" and args.system == "hf":
        common.update(gradient_checkpointing=False)

    if args.system == "unsloth":
        model, tok = FastLanguageModel.from_pretrained(args.model, max_seq_length=args.seq, dtype=torch.float32,
                                                       load_in_4bit=False)
        model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=32, lora_dropout=0, bias="none",
                                                 target_modules=TARGETS, random_state=0)
    else:
        from peft import LoraConfig, get_peft_model
        tok = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS,
                                                 task_type="CAUSAL_LM"))
    vocab = model.config.vocab_size

    if args.method == "sft":
        from trl import SFTConfig, SFTTrainer
        g = torch.Generator().manual_seed(1)
        rows = torch.randint(0, vocab, (args.batch * total_steps, args.seq), generator=g).tolist()
        data = Dataset.from_dict({"input_ids": rows})
        cfg = SFTConfig(max_length=args.seq, packing=False, dataset_num_proc=None, **common)
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok, callbacks=[timer])
        lengths = [len(r) for r in list(trainer.train_dataset["input_ids"])]
        tokens_per_step = args.batch * args.seq
    else:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
        completion = args.seq - args.prompt_length
        n = args.batch * total_steps
        data = Dataset.from_dict({"prompt": ["hello" + " the" * (args.prompt_length - 2)] * n,
                                  "chosen": [" yes" * (completion - 1)] * n,
                                  "rejected": [" no" * (completion - 1)] * n})
        cfg = ORPOConfig(beta=0.1, max_length=args.seq, **common)
        trainer = ORPOTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok, callbacks=[timer])
        lengths = [len(r) for k in ("chosen_input_ids", "rejected_input_ids") for r in list(trainer.train_dataset[k])]
        tokens_per_step = 2 * args.batch * args.seq
    if set(lengths) != {args.seq}:
        sys.exit(f"rows are {sorted(set(lengths))} tokens after the trainer's tokenization, expected {args.seq}")

    out = trainer.train()
    times = timer.times[args.warmup:]
    sec = statistics.median(times)
    result = {"system": args.system, "method": args.method, "seconds_per_step": sec,
              "tokens_per_step": tokens_per_step, "tokens_per_s": tokens_per_step / sec,
              "bf16": bool(trainer.args.bf16), "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
              "step_times": timer.times, "train_loss": out.training_loss,
              "torch": torch.__version__, "transformers": transformers.__version__}
    if args.system == "unsloth":
        result["unsloth"] = unsloth.__version__
    else:
        import peft
        import trl
        result["peft"], result["trl"] = peft.__version__, trl.__version__
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
