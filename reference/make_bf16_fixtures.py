#!/usr/bin/env python3
"""bf16 mixed-precision fixture for Finch's `--precision bf16`: one ORPO step of TRL's own
ORPOTrainer under PyTorch's bf16 autocast, against which Finch's bf16 step is compared.

The policy is the tiny trainer-fixture model (Fixtures/trainers/model, f32 weights) with PEFT LoRA
r=4, alpha=8 on q/k/v/o/gate/up/down, A and B drawn from a seeded generator (B non-zero, so every
LoRA gradient is). The batch is TRL's collated ORPO batch of Fixtures/trainers/orpo.safetensors
(the one `TRLParityTests` uses). `ORPOTrainer.get_batch_loss_metrics` runs inside
`torch.autocast("cpu", dtype=torch.bfloat16)`, as HF Trainer does with `bf16=True` on a CPU
(fp32 master weights; autocast casts the inputs of linear / matmul to bf16, while log_softmax,
layer norms and the losses stay fp32); the same step runs again in fp32.

What autocast ran in bf16 on torch 2.13 was checked with forward hooks (recorded in the JSON):
every nn.Linear output (base, LoRA A and B, lm_head) is bf16; RMSNorm outputs are fp32. From
transformers' eager Llama attention: QK^T and PV are matmuls, so bf16 under autocast, with the
softmax taken in fp32 and cast back; TRL upcasts the bf16 logits before its log-softmax. Finch
differs by design in two places: LoRA products and attention run in fp32.

Writes Tests/FinchTests/Fixtures/bf16/:
  orpo_lora.safetensors   lora.<PEFT name>       the LoRA A/B values (F32)
                          grad_bf16.<PEFT name>  their gradients under bf16 autocast
                          grad_fp32.<PEFT name>  their gradients in fp32
  orpo_lora.json          versions, LoRA settings, loss and metrics of both runs, and the
                          dtypes hooks saw under autocast

Usage: python3 reference/make_bf16_fixtures.py
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import peft
import torch
import transformers
import trl
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINERS = os.path.join(REPO, "Tests", "FinchTests", "Fixtures", "trainers")
OUT = os.path.join(REPO, "Tests", "FinchTests", "Fixtures", "bf16")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 4, 8


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


def trainer_for(model):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    tok = PreTrainedTokenizerFast.from_pretrained(os.path.join(TRAINERS, "tokenizer"))
    rows = json.load(open(os.path.join(TRAINERS, "orpo.json")))["rows"]
    conf = ORPOConfig(output_dir="/tmp/finch-bf16-fixture", beta=0.1, max_length=1024, report_to="none", use_cpu=True,
                      bf16=False, per_device_train_batch_size=4, disable_dropout=True)
    return ORPOTrainer(model=model, args=conf, train_dataset=Dataset.from_list(rows), processing_class=tok)


def step(autocast):
    model = policy()
    trainer = trainer_for(model)
    batch = batch_from_fixture()
    dtypes = {}
    hooks = []
    if autocast:
        for name, module in model.named_modules():
            kind = type(module).__name__
            if kind in ("Linear", "LlamaRMSNorm") and ("layers.0." in name or name.endswith("lm_head")):
                def record(module, inputs, output, name=name, kind=kind):
                    dtypes.setdefault(f"{kind} {name}", str(output.dtype))   # returns None: the output stays
                hooks.append(module.register_forward_hook(record))
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss, metrics = trainer.get_batch_loss_metrics(model, batch, train_eval="train")
    loss.backward()
    for h in hooks:
        h.remove()
    values = {peft_name(n): p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    grads = {peft_name(n): p.grad.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    return float(loss.detach()), metrics, values, grads, dtypes


def main():
    torch.manual_seed(0)
    loss16, metrics16, values, grads16, dtypes = step(autocast=True)
    loss32, metrics32, values32, grads32, _ = step(autocast=False)
    assert all(torch.equal(values[k], values32[k]) for k in values), "the LoRA draws differ between the runs"
    os.makedirs(OUT, exist_ok=True)
    tensors = {}
    for name in sorted(values):
        tensors["lora." + name] = values[name].contiguous()
        tensors["grad_bf16." + name] = grads16[name].float().contiguous()
        tensors["grad_fp32." + name] = grads32[name].float().contiguous()
    save_file(tensors, os.path.join(OUT, "orpo_lora.safetensors"))
    record = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "trl": trl.__version__},
        "lora": {"r": RANK, "alpha": ALPHA, "targets": TARGETS},
        "batch": "Fixtures/trainers/orpo.safetensors batch.*",
        "bf16": {"loss": loss16, "metrics": metrics16},
        "fp32": {"loss": loss32, "metrics": metrics32},
        "autocast_output_dtypes": dtypes,
    }
    with open(os.path.join(OUT, "orpo_lora.json"), "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")
    rel = (sum(float((grads16[k] - grads32[k]).pow(2).sum()) for k in grads16)
           / sum(float(grads32[k].pow(2).sum()) for k in grads32)) ** 0.5
    print(f"loss bf16 {loss16:.6f} fp32 {loss32:.6f}; LoRA gradients bf16 vs fp32: {rel:.3e} relative L2", file=sys.stderr)


if __name__ == "__main__":
    main()
