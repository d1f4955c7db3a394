#!/usr/bin/env python3
"""bf16 mixed-precision fixture for Finch's `--precision bf16`: one step of TRL's own ORPOTrainer
at TRL's default precision (`bf16=True`, the config's default), against which Finch's bf16 step is
compared, and the same step in fp32 (`bf16=False`).

The policy is the tiny trainer-fixture model (Fixtures/trainers/model, f32 weights) with PEFT LoRA
r=4, alpha=8 on q/k/v/o/gate/up/down, A and B drawn from a seeded generator (B non-zero, so every
LoRA gradient is). The data are Fixtures/trainers/orpo.json's rows, collated by the trainer (the
script checks that the batch equals orpo.safetensors' `batch.*`, the one `TRLParityTests` uses);
beta 0.1, sequential sampling, no clipping, no gradient checkpointing, dropout 0. Each run is
`trainer.train()` for one step; the LoRA gradients are read in `on_pre_optimizer_step`, the loss is
what `compute_loss` returned, the metrics are log_history[0]'s.

What bf16=True does on a CPU (TRL 1.16, transformers 5.25, accelerate 1.16, torch 2.13):
TRL's configs default `bf16` to None and resolve it in __post_init__ to `not fp16`, so True
whatever the hardware; transformers accepts it on CPU (use_cpu) and accelerate, with
mixed_precision "bf16" on a CPU, sets native_amp and wraps the model's forward only: forward =
convert_outputs_to_fp32(torch.autocast("cpu", dtype=torch.bfloat16)(forward)). Weights stay fp32
(master weights); the loss (TRL's get_batch_loss_metrics outside the forward) and backward run
outside autocast, backward in whatever dtypes the forward recorded. Checked op by op on torch 2.13
with a TorchDispatchMode trace of the training step (recorded in the JSON, `autocast_ops`):
  bf16 (inputs cast to bf16 by autocast, output bf16; oneDNN's brg_matmul:avx512_core_bf16 here):
    every nn.Linear: base q/k/v/o/gate/up/down, lm_head, and PEFT's lora_A and lora_B products
    (so the LoRA path, and its `scaling` multiply and the add into the base output, are bf16);
    attention's QK^T and PV (matmul -> bmm); and in backward every mm / bmm (activation and weight
    gradients come out bf16 and are cast to fp32 where they reach an fp32 tensor).
  unlisted ops run in their inputs' dtype (type promotion for mixed inputs):
    silu and gate*up: bf16 (their inputs are Linear outputs);
    RoPE: q, k (bf16) times cos / sin (fp32) -> fp32 q, k, cast back to bf16 by the QK^T matmul;
    attention scores + mask (fp32) -> fp32, softmax taken in fp32 (dtype=float32) and kept fp32
    (`.to(query.dtype)` with a post-RoPE fp32 query), cast to bf16 again by the PV matmul;
    residual adds: fp32 stream + bf16 sublayer output -> fp32;
    RMSNorm (pow, mean, rsqrt, weight): fp32 (its input is the fp32 residual stream);
    embedding: fp32 (not an autocast op).
  fp32: the logits leave the forward bf16-rounded and are converted to fp32 by accelerate; TRL's
    per-token log-probs (selective_log_softmax's fp32 path: gather minus logsumexp), the NLL term
    (log_softmax, nll_loss), log-odds, log_sigmoid and the metrics are all fp32.
Finch's bf16 differs by design: products take bf16-rounded inputs but give fp32 results (PyTorch
rounds every Linear / matmul output to bf16, the logits included); LoRA's products take bf16
inputs as here (but lora_A's gradient reads x in fp32), and attention, norms, softmax, log-probs
and losses are fp32.

Surprise worth knowing: calling `trainer.get_batch_loss_metrics` inside `torch.autocast` (as
this script did at first) is not what the Trainer does. The logits then stay bf16, and TRL's
selective_log_softmax takes its row-by-row path, a bf16 log_softmax: CPU autocast has no fp32
policy for log_softmax (CUDA autocast does). That gives loss 6.868553 instead of the Trainer's
6.868217 and LoRA gradients 5.0e-3 relative L2 away from the Trainer's.

Writes Tests/FinchTestSupport/Fixtures/bf16/:
  orpo_lora.safetensors   all F32, names as PEFT saves them (base_model.model.model.layers.N.
                          self_attn.q_proj.lora_A.weight, ...; 2 layers x 7 targets x A/B = 28):
                          lora.<name>       the LoRA A/B values before the step
                          grad_bf16.<name>  their gradients at TRL's default (bf16=True)
                          grad_fp32.<name>  their gradients with bf16=False
  orpo_lora.json          versions, CPU, LoRA settings; "bf16" and "fp32": {loss, metrics (TRL's
                          names), grad_norm, trainer (resolved bf16, accelerate's mixed_precision
                          and native_amp)}; the nn.Module output dtypes hooks saw under autocast
                          (`autocast_output_dtypes`) and the op trace of the bf16 training step
                          (`autocast_ops`: "aten op(floating input dtypes) -> output dtypes: count")

Usage: python3 reference/make_bf16_fixtures.py      (about 10 s on 2 cores; deterministic: byte-identical reruns)
"""
import collections
import json
import os
import platform
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import accelerate
import peft
import torch
import transformers
import trl
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINERS = os.path.join(REPO, "Tests", "FinchTestSupport", "Fixtures", "trainers")
OUT = os.path.join(REPO, "Tests", "FinchTestSupport", "Fixtures", "bf16")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 4, 8
NOT_METRICS = ("loss", "grad_norm", "learning_rate", "epoch", "step")


def policy():
    model = AutoModelForCausalLM.from_pretrained(os.path.join(TRAINERS, "model"), dtype=torch.float32,
                                                 attn_implementation="eager")
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS,
                                             task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                bound = 1 / p.shape[1] ** 0.5
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)
            elif "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def peft_name(name):
    # named_parameters: base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
    return name.replace(".default", "")


def batch_from_fixture():
    batch = {}
    with safe_open(os.path.join(TRAINERS, "orpo.safetensors"), "pt") as f:
        for key in f.keys():
            if key.startswith("batch."):
                batch[key[len("batch."):]] = f.get_tensor(key).long()
    return batch


def trainer_for(model, output_dir, bf16, callbacks=()):
    """TRL's ORPOTrainer; bf16=None leaves TRL's default (True), False is fp32."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    tok = PreTrainedTokenizerFast.from_pretrained(os.path.join(TRAINERS, "tokenizer"))
    rows = json.load(open(os.path.join(TRAINERS, "orpo.json")))["rows"]
    precision = {} if bf16 is None else {"bf16": bf16}
    conf = ORPOConfig(output_dir=output_dir, beta=0.1, max_length=1024, report_to="none", use_cpu=True,
                      per_device_train_batch_size=4, gradient_accumulation_steps=1, max_steps=1, optim="sgd",
                      learning_rate=0.0, max_grad_norm=0.0, lr_scheduler_type="constant", warmup_steps=0,
                      gradient_checkpointing=False, train_sampling_strategy="sequential", disable_dropout=True,
                      logging_steps=1, save_strategy="no", seed=1234, dataloader_num_workers=0, disable_tqdm=True,
                      **precision)
    return ORPOTrainer(model=model, args=conf, train_dataset=Dataset.from_list(rows), processing_class=tok,
                       callbacks=list(callbacks))


class OpTrace(TorchDispatchMode):
    """Counts (aten op, floating input dtypes, output dtypes) below autocast: what really ran."""
    SHORT = {torch.bfloat16: "bf16", torch.float32: "f32"}

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]
        if ins or outs:
            key = (func.overloadpacket.__name__, ",".join(self.SHORT.get(t.dtype, str(t.dtype)) for t in ins),
                   ",".join(self.SHORT.get(t.dtype, str(t.dtype)) for t in outs))
            self.ops[key] += 1
        return out


def step(bf16):
    """One trainer.train() step; bf16=None: TRL's default. Returns loss, log, values, grads, dtypes, ops, trainer facts."""
    model = policy()
    values = {peft_name(n): p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    grads = {}

    class Grads(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kw):   # after backward (and clipping: off)
            for n, p in model.named_parameters():
                if "lora_" in n:
                    grads[peft_name(n)] = p.grad.detach().float().clone()

    with tempfile.TemporaryDirectory() as out:
        trainer = trainer_for(model, out, bf16, callbacks=[Grads()])
        seen = {}
        original = trainer.compute_loss

        def compute_loss(model, inputs, *a, **kw):
            result = original(model, inputs, *a, **kw)
            seen["batch"], seen["loss"] = inputs, float(result.detach())
            return result
        trainer.compute_loss = compute_loss
        dtypes, hooks = {}, []
        for name, module in model.named_modules():
            kind = type(module).__name__
            if kind in ("Linear", "LlamaRMSNorm") and ("layers.0." in name or name.endswith("lm_head")):
                def record(module, inputs, output, name=name, kind=kind):
                    dtypes.setdefault(f"{kind} {name}", str(output.dtype))   # returns None: the output stays
                hooks.append(module.register_forward_hook(record))
        trace = OpTrace()
        training_step = trainer.training_step

        def traced(*a, **kw):
            with trace:
                return training_step(*a, **kw)
        trainer.training_step = traced
        trainer.train()
        for h in hooks:
            h.remove()
    expected = batch_from_fixture()
    for key, tensor in expected.items():
        assert torch.equal(seen["batch"][key].long(), tensor), f"the trainer's {key} is not orpo.safetensors' batch.{key}"
    assert sorted(grads) == sorted(values), "a LoRA parameter has no gradient"
    log = dict(trainer.state.log_history[0])
    facts = {"bf16": bool(trainer.args.bf16), "mixed_precision": trainer.accelerator.mixed_precision,
             "native_amp": bool(trainer.accelerator.native_amp),
             "gradient_checkpointing": bool(trainer.args.gradient_checkpointing)}
    ops = [f"{op}({ins}) -> {outs}: {n}" for (op, ins, outs), n in sorted(trace.ops.items())]
    return seen["loss"], log, values, grads, dtypes, ops, facts


def main():
    torch.manual_seed(0)
    loss16, log16, values, grads16, dtypes, ops16, facts16 = step(bf16=None)
    loss32, log32, values32, grads32, _, _, facts32 = step(bf16=False)
    assert facts16["bf16"] and facts16["native_amp"], f"TRL's default did not train in bf16 autocast: {facts16}"
    assert not facts32["bf16"] and not facts32["native_amp"], facts32
    assert all(torch.equal(values[k], values32[k]) for k in values), "the LoRA draws differ between the runs"
    os.makedirs(OUT, exist_ok=True)
    tensors = {}
    for name in sorted(values):
        tensors["lora." + name] = values[name].contiguous()
        tensors["grad_bf16." + name] = grads16[name].contiguous()
        tensors["grad_fp32." + name] = grads32[name].contiguous()
    save_file(tensors, os.path.join(OUT, "orpo_lora.safetensors"))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
    flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])

    def run(loss, log, facts):
        return {"loss": loss, "metrics": {k: v for k, v in log.items() if k not in NOT_METRICS},
                "grad_norm": log.get("grad_norm"), "trainer": facts}
    record = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "trl": trl.__version__, "accelerate": accelerate.__version__},
        "cpu": {"model": cpu, "torch_capability": torch.backends.cpu.get_cpu_capability(),
                "bf16_flags": [f for f in ("avx512_bf16", "amx_bf16") if f in flags],
                "onednn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())},
        "lora": {"r": RANK, "alpha": ALPHA, "targets": TARGETS},
        "batch": "Fixtures/trainers/orpo.safetensors batch.*",
        "bf16": run(loss16, log16, facts16),
        "fp32": run(loss32, log32, facts32),
        "autocast_output_dtypes": dtypes,
        "autocast_ops": ops16,
    }
    with open(os.path.join(OUT, "orpo_lora.json"), "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")
    rel = (sum(float((grads16[k] - grads32[k]).pow(2).sum()) for k in grads16)
           / sum(float(grads32[k].pow(2).sum()) for k in grads32)) ** 0.5
    print(f"loss bf16 {loss16:.6f} fp32 {loss32:.6f}; LoRA gradients bf16 vs fp32: {rel:.3e} relative L2", file=sys.stderr)


if __name__ == "__main__":
    main()
