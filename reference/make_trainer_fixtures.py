#!/usr/bin/env python3
"""Generate TRL trainer parity fixtures for Finch's Swift tests.

Runs ONE optimizer step of TRL's own trainers (SFTTrainer, DPOTrainer, and the experimental
ORPOTrainer / CPOTrainer) on a tiny random Llama with full fine-tuning, SGD lr=1, no momentum, no
weight decay, no clipping, constant schedule, batch 4 x accumulation 1, sequential sampling, and
records what TRL fed the model, what it logged, and how every weight moved.

Writes Tests/FinchTestSupport/Fixtures/trainers/:
  tokenizer/      tokenizer.json, tokenizer_config.json (+ chat template) of a tiny byte-level BPE
  model/          config.json, model.safetensors: the policy before the step (F32, tied embeddings)
  ref_model/      config.json, model.safetensors: a second random model, the DPO reference
  <case>.safetensors  (all F32; ids stored as floats, exact below 2^24; -100 kept as -100)
      batch.<field>     every tensor of the collated batch handed to `compute_loss`
      model_input.input_ids / model_input.attention_mask   what the policy's forward received
      extra.<name>      per-row intermediates computed by TRL's own code before the step
      update.<param>    weights after the step minus weights before (HF parameter names)
  <case>.json     versions, trainer class, TRL config, dataset rows, step-1 loss, every logged
                  metric exactly as TRL logged it (log_history[0]), extras as lists

Usage: python3 reference/make_trainer_fixtures.py [--out DIR] [--cases a,b,...]
Deterministic: seeded model init, sequential sampler, dropout 0, fp32, eager attention, CPU.
"""
import argparse
import contextlib
import copy
import io
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import torch
import transformers
import tokenizers
import datasets
import trl
import safetensors
from safetensors.torch import save_file
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers as tok_trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "Tests", "FinchTestSupport", "Fixtures", "trainers")

SEED = 1234
VOCAB_SIZE = 320  # 256 byte symbols + 5 specials + merges
SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]

# ChatML-like template. Assistant content and its <|im_end|> sit inside {% generation %} so that
# `assistant_only_loss` / `return_assistant_tokens_mask` work; no BOS is emitted by the template.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}{{- '\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

# ---------------------------------------------------------------------------------------------
# Data (own content; varied lengths so padding and per-row normalisation matter)
# ---------------------------------------------------------------------------------------------

SFT_PROMPT_COMPLETION = [
    {"prompt": "Q: What colour is the sky on a clear day?\nA:", "completion": " Blue."},
    {"prompt": "Q: Name a fruit.\nA:", "completion": " An apple, which is often red or green and grows on trees."},
    {"prompt": "Q: How many legs does a spider have? Think about it carefully before you answer.\nA:",
     "completion": " Eight legs."},
    {"prompt": "Q: Say hi.\nA:", "completion": " Hi there, nice to meet you!"},
]

SFT_TEXT = [
    {"text": "The river runs past the old mill."},
    {"text": "A small cat sleeps in the warm sun, and the dog watches the birds in the garden."},
    {"text": "Rain."},
    {"text": "Bread is made from flour, water, salt and yeast; it rises before baking in a hot oven until golden."},
]

SFT_MESSAGES = [
    {"messages": [
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "Four."},
    ]},
    {"messages": [
        {"role": "system", "content": "You are brief."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Green."},
        {"role": "user", "content": "Another one?"},
        {"role": "assistant", "content": "Red, like a ripe tomato."},
    ]},
    {"messages": [
        {"role": "user", "content": "Tell me about the moon in one sentence, please."},
        {"role": "assistant", "content": "The moon orbits the earth and reflects the light of the sun."},
    ]},
    {"messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye, take care."},
    ]},
]

PREFERENCE = [
    {"prompt": "Q: What is the capital of France?\nA:",
     "chosen": " Paris.",
     "rejected": " I think it might be Lyon, or maybe Marseille, it is hard to say."},
    {"prompt": "Q: Give me a tip for sleeping well.\nA:",
     "chosen": " Go to bed at the same time every night and keep the room dark and cool.",
     "rejected": " Drink coffee."},
    {"prompt": "Q: Is water wet?\nA:",
     "chosen": " Water makes other things wet.",
     "rejected": " No."},
    {"prompt": "Q: Write one word that rhymes with cat. Only one word, and nothing else at all.\nA:",
     "chosen": " Hat.",
     "rejected": " Dog, because it is also an animal."},
]

PREFERENCE_CHAT = [
    {"prompt": [{"role": "user", "content": "Name a planet."}],
     "chosen": [{"role": "assistant", "content": "Mars is a planet."}],
     "rejected": [{"role": "assistant", "content": "The sun."}]},
    {"prompt": [{"role": "system", "content": "Answer kindly."},
                {"role": "user", "content": "How do I boil an egg?"}],
     "chosen": [{"role": "assistant", "content": "Put it in boiling water for about eight minutes, then cool it."}],
     "rejected": [{"role": "assistant", "content": "Use a microwave."}]},
    {"prompt": [{"role": "user", "content": "Count to three."}],
     "chosen": [{"role": "assistant", "content": "One, two, three."}],
     "rejected": [{"role": "assistant", "content": "One, three, two, five, and then I got lost somewhere."}]},
    {"prompt": [{"role": "user", "content": "Is ice cold?"}],
     "chosen": [{"role": "assistant", "content": "Yes."}],
     "rejected": [{"role": "assistant", "content": "It is hot."}]},
]


def corpus():
    """Text the BPE is trained on (all fixture strings, rendered as the trainers will see them)."""
    out = []
    for r in SFT_PROMPT_COMPLETION:
        out.append(r["prompt"] + r["completion"])
    for r in SFT_TEXT:
        out.append(r["text"])
    for r in PREFERENCE:
        out += [r["prompt"] + r["chosen"], r["prompt"] + r["rejected"]]
    for r in SFT_MESSAGES:
        out += [m["role"] + "\n" + m["content"] for m in r["messages"]]
    for r in PREFERENCE_CHAT:
        out += [m["role"] + "\n" + m["content"] for m in r["prompt"] + r["chosen"] + r["rejected"]]
    return out


# ---------------------------------------------------------------------------------------------
# Tokenizer and models
# ---------------------------------------------------------------------------------------------

def build_tokenizer():
    """Tiny byte-level BPE (the same machinery as SmolLM2's tokenizer): full 256-byte alphabet, so
    any text tokenizes, plus merges learnt from the fixture corpus. No post-processor: like
    SmolLM2, calling the tokenizer does NOT add BOS/EOS (TRL adds them where it wants them)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = tok_trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"], padding_side="right",
        clean_up_tokenization_spaces=False)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def llama_config(tokenizer):
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        hidden_act="silu", rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
        attention_dropout=0.0, attention_bias=False, mlp_bias=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)


def random_model(tokenizer, seed):
    """Tiny Llama with seeded weights large enough that logits have O(1) spread."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(llama_config(tokenizer), dtype=torch.float32,
                                             attn_implementation="eager")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(0.25 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=gen))
    return model


def load_model(path):
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    m.config.use_cache = False
    return m


# ---------------------------------------------------------------------------------------------
# Trainer construction
# ---------------------------------------------------------------------------------------------

def common_args(out_dir, batch=4, accum=1):
    """Settings shared by every TRL config: one plain SGD step, nothing else."""
    return dict(
        output_dir=out_dir, per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
        max_steps=1, learning_rate=1.0, optim="sgd", weight_decay=0.0, max_grad_norm=0.0,
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, report_to="none",
        save_strategy="no", bf16=False, fp16=False, gradient_checkpointing=False, seed=SEED,
        data_seed=SEED, train_sampling_strategy="sequential", use_cpu=True, dataloader_num_workers=0,
        disable_tqdm=True)


# KTO: unpaired completions with a desirability label (own content), both labels in the batch
KTO_ROWS = [
    {"prompt": "Q: Name a primary colour.\nA:", "completion": " Red.", "label": True},
    {"prompt": "Q: How many legs does a spider have?\nA:", "completion": " Six, I think.", "label": False},
    {"prompt": "Q: What do bees make?\nA:", "completion": " Honey, stored in wax cells.", "label": True},
    {"prompt": "Q: Is ice colder than steam?\nA:", "completion": " No.", "label": False},
]


CASES = {
    # name: (kind, dataset rows, trainer-specific config, notes)
    "sft_completion": ("sft", SFT_PROMPT_COMPLETION, dict(max_length=1024),
                       "prompt/completion rows; completion_only_loss defaults to True for this format"),
    "sft_text": ("sft", SFT_TEXT, dict(max_length=40),
                 "plain text rows; EOS appended as text; max_length=40 truncates rows 1 and 3 (keep_start, EOS lost)"),
    "sft_messages": ("sft", SFT_MESSAGES, dict(max_length=1024, assistant_only_loss=True),
                     "messages rows; loss on every assistant turn (generation-marked spans)"),
    "orpo": ("orpo", PREFERENCE, dict(beta=0.1, max_length=1024), "string preference rows"),
    "orpo_chat": ("orpo", PREFERENCE_CHAT, dict(beta=0.1, max_length=50),
                  "conversational preference rows; max_length=50 truncates row 1 (chosen and rejected) and row 2 (rejected)"),
    "dpo_sigmoid": ("dpo", PREFERENCE, dict(beta=0.1, loss_type=["sigmoid"]), "separate reference model"),
    "dpo_ipo": ("dpo", PREFERENCE, dict(beta=0.1, loss_type=["ipo"]), "separate reference model"),
    "dpo_hinge": ("dpo", PREFERENCE, dict(beta=0.1, loss_type=["hinge"]), "separate reference model"),
    "dpo_sigmoid_ls": ("dpo", PREFERENCE, dict(beta=0.1, loss_type=["sigmoid"], label_smoothing=0.1),
                       "TRL 1.x ignores label_smoothing for 'sigmoid' (identical to dpo_sigmoid)"),
    "dpo_robust": ("dpo", PREFERENCE, dict(beta=0.1, loss_type=["robust"], label_smoothing=0.1),
                   "TRL 1.x's label-smoothed DPO variant (rDPO)"),
    "dpo_sigmoid_chat": ("dpo", PREFERENCE_CHAT, dict(beta=0.1, loss_type=["sigmoid"]),
                         "conversational preference rows, separate reference model"),
    "cpo_sigmoid": ("cpo", PREFERENCE, dict(beta=0.1, loss_type="sigmoid", cpo_alpha=1.0), "CPO default"),
    "simpo": ("cpo", PREFERENCE, dict(beta=2.0, loss_type="simpo", simpo_gamma=0.5, cpo_alpha=0.0),
              "pure SimPO: CPOTrainer loss_type='simpo' with cpo_alpha=0"),
    "kto": ("kto", KTO_ROWS, dict(beta=0.1, desirable_weight=1.0, undesirable_weight=1.5),
            "KTO with the KL estimate (completions rotated by one within the batch), separate reference model"),
    "kto_apo": ("kto", KTO_ROWS, dict(beta=0.2, loss_type="apo_zero_unpaired"),
                "KTOTrainer loss_type='apo_zero_unpaired': no KL term"),
}


def make_trainer(kind, rows, cfg, model_dir, ref_dir, tokenizer, out_dir, batch=4, accum=1):
    """Build the TRL trainer for `kind` exactly as a user would (no monkey patching of TRL)."""
    ds = Dataset.from_list(copy.deepcopy(rows))
    model = load_model(model_dir)
    tok = copy.deepcopy(tokenizer)
    args = common_args(out_dir, batch, accum)
    if kind == "sft":
        from trl import SFTConfig, SFTTrainer
        conf = SFTConfig(**args, **cfg)
        return SFTTrainer(model=model, args=conf, train_dataset=ds, processing_class=tok), conf
    if kind == "dpo":
        from trl import DPOConfig, DPOTrainer
        conf = DPOConfig(**args, **cfg)
        ref = load_model(ref_dir) if ref_dir else None
        return DPOTrainer(model=model, ref_model=ref, args=conf, train_dataset=ds, processing_class=tok), conf
    if kind == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
        conf = ORPOConfig(**args, **cfg)
        return ORPOTrainer(model=model, args=conf, train_dataset=ds, processing_class=tok), conf
    if kind == "cpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer
        conf = CPOConfig(**args, **cfg)
        return CPOTrainer(model=model, args=conf, train_dataset=ds, processing_class=tok), conf
    if kind == "kto":
        # The two random models trade places: with model/ as the policy its log-probs of the
        # mismatched pairs are below ref_model/'s and the clamped KL estimate would be 0; this way
        # round it is positive and takes part in the loss.
        from trl import KTOConfig, KTOTrainer
        conf = KTOConfig(**args, **cfg)
        policy, ref = load_model(ref_dir), model
        return KTOTrainer(model=policy, ref_model=ref, args=conf, train_dataset=ds, processing_class=tok), conf
    raise ValueError(kind)


# ---------------------------------------------------------------------------------------------
# Capture
# ---------------------------------------------------------------------------------------------

class Capture:
    """Wraps `trainer.compute_loss` (instance attribute, TRL code untouched) to record the batch
    and per-row intermediates of the FIRST call, and hooks the policy forward for its inputs."""

    def __init__(self, trainer, kind):
        self.trainer, self.kind = trainer, kind
        self.calls = []          # one entry per compute_loss call: dict(batch=..., loss=...)
        self.model_inputs = []   # one entry per policy forward
        self.extras = None
        original = trainer.compute_loss

        def wrapped(model, inputs, *a, **kw):
            batch = {k: v.detach().clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
            if self.extras is None:
                self.extras = self._extras(model, inputs)
            loss = original(model, inputs, *a, **kw)
            self.calls.append(dict(batch=batch, loss=float((loss[0] if isinstance(loss, tuple) else loss).item()),
                                   num_items_in_batch=kw.get("num_items_in_batch")))
            return loss

        trainer.compute_loss = wrapped

        def pre_hook(module, args, kwargs):
            ids = args[0] if args else kwargs.get("input_ids")
            am = kwargs.get("attention_mask")
            if torch.is_grad_enabled():  # skip the no-grad extra forwards
                self.model_inputs.append(dict(input_ids=ids.detach().clone(),
                                              attention_mask=None if am is None else am.detach().clone()))

        trainer.model.register_forward_pre_hook(pre_hook, with_kwargs=True)

    @torch.no_grad()
    def _extras(self, model, inputs):
        """Per-row intermediates via TRL's own helper methods, on the pre-step weights."""
        t, ex = self.trainer, {}
        if self.kind in ("orpo", "cpo"):
            out = t.concatenated_forward(model, inputs)
            chosen_logps, rejected_logps, chosen_logits, rejected_logits, nll = out[:5]
            ex["chosen_logps"] = chosen_logps
            ex["rejected_logps"] = rejected_logps
            ex["nll_loss"] = nll.reshape(1)
            if self.kind == "orpo":
                from trl.experimental.orpo.orpo_trainer import log1mexp
                ex["log_odds"] = (chosen_logps - rejected_logps) - (log1mexp(chosen_logps) - log1mexp(rejected_logps))
        elif self.kind == "dpo":
            c, r = t.compute_ref_log_probs(model, inputs)            # policy (it is the model passed)
            ex["chosen_logps"], ex["rejected_logps"] = c, r
            rc, rr = t.compute_ref_log_probs(t.ref_model, inputs)   # the separate reference
            ex["ref_chosen_logps"], ex["ref_rejected_logps"] = rc, rr
            cm = inputs["completion_mask"]
            ex["completion_tokens"] = cm.sum(1).float()
        elif self.kind == "kto":
            ex["kl_logps"] = t._compute_kl_logps(model, inputs) if t.calculate_KL else torch.zeros(1)
            ex["ref_kl_logps"] = t._compute_kl_logps(t.ref_model, inputs) if t.calculate_KL else torch.zeros(1)
        elif self.kind == "sft":
            labels = inputs["labels"]
            ex["label_tokens"] = (labels[:, 1:] != -100).sum(1).float()
        return {k: v.detach().float().cpu() for k, v in ex.items()}


def params_of(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def jsonable(x):
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    if isinstance(x, (int, str, bool)) or x is None:
        return x
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if hasattr(x, "value"):  # enums
        return jsonable(x.value)
    return str(x)


@contextlib.contextmanager
def quiet():
    """Silence TRL/transformers chatter (warnings are about defaults we set on purpose)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        logging.getLogger("trl").setLevel(logging.ERROR)
        try:
            yield
        finally:
            transformers.logging.set_verbosity(old)


def run_one_step(kind, rows, cfg, model_dir, ref_dir, tokenizer, batch=4, accum=1):
    """Build the trainer, run one optimizer step, return (trainer, capture, before, after, conf)."""
    tmp = tempfile.mkdtemp(prefix="finch_trl_")
    try:
        with quiet():
            trainer, conf = make_trainer(kind, rows, cfg, model_dir, ref_dir, tokenizer, tmp, batch, accum)
            trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # no log dicts on stdout
            cap = Capture(trainer, kind)
            before = params_of(trainer.model)
            trainer.train()
            after = params_of(trainer.model)
        return trainer, cap, before, after, conf
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def versions():
    return {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
            "tokenizers": tokenizers.__version__, "datasets": datasets.__version__,
            "safetensors": safetensors.__version__, "python": sys.version.split()[0]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--cases", default=",".join(CASES))
    opts = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    out = opts.out
    os.makedirs(out, exist_ok=True)
    tokenizer = build_tokenizer()
    tok_dir, model_dir, ref_dir = (os.path.join(out, d) for d in ("tokenizer", "model", "ref_model"))
    for d in (tok_dir, model_dir, ref_dir):
        shutil.rmtree(d, ignore_errors=True)
    tokenizer.save_pretrained(tok_dir)
    # Keep the chat template inside tokenizer_config.json, as SmolLM2's files have it.
    jinja = os.path.join(tok_dir, "chat_template.jinja")
    if os.path.exists(jinja):
        cfg_path = os.path.join(tok_dir, "tokenizer_config.json")
        with open(cfg_path) as f:
            tok_cfg = json.load(f)
        with open(jinja) as f:
            tok_cfg["chat_template"] = f.read()
        with open(cfg_path, "w") as f:
            json.dump(tok_cfg, f, indent=2)
            f.write("\n")
        os.remove(jinja)
    random_model(tokenizer, SEED).save_pretrained(model_dir)
    random_model(tokenizer, SEED + 1).save_pretrained(ref_dir)
    for d in (model_dir, ref_dir):  # generation_config.json is irrelevant here
        gc = os.path.join(d, "generation_config.json")
        if os.path.exists(gc):
            os.remove(gc)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)  # use exactly what was saved

    index = {}
    for name in opts.cases.split(","):
        kind, rows, cfg, notes = CASES[name]
        trainer, cap, before, after, conf = run_one_step(
            kind, rows, cfg, model_dir, ref_dir if kind in ("dpo", "kto") else None, tokenizer)
        assert len(cap.calls) == 1 and len(cap.model_inputs) >= 1, (name, len(cap.calls))
        log = dict(trainer.state.log_history[0])
        tensors = {}
        for k, v in cap.calls[0]["batch"].items():
            tensors[f"batch.{k}"] = v.float().contiguous()
        mi = cap.model_inputs[0]
        tensors["model_input.input_ids"] = mi["input_ids"].float().contiguous()
        if mi["attention_mask"] is not None:
            tensors["model_input.attention_mask"] = mi["attention_mask"].float().contiguous()
        for k, v in cap.extras.items():
            tensors[f"extra.{k}"] = v.reshape(-1).contiguous()
        for n in before:
            tensors[f"update.{n}"] = (after[n] - before[n]).float().contiguous()
        save_file(tensors, os.path.join(out, f"{name}.safetensors"),
                  metadata={"generator": "reference/make_trainer_fixtures.py", "trl": trl.__version__})

        full_conf = jsonable(conf.to_dict())
        for k in ("output_dir", "logging_dir"):  # temporary paths; keep the JSON reproducible
            if isinstance(full_conf.get(k), str):
                full_conf[k] = "<tmp>"
        keys = ["per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "optim",
                "weight_decay", "max_grad_norm", "lr_scheduler_type", "warmup_steps", "max_steps", "seed",
                "train_sampling_strategy", "bf16", "gradient_checkpointing", "disable_dropout"]
        keys += sorted(cfg) + [k for k in ("max_length", "truncation_mode", "completion_only_loss",
                                           "assistant_only_loss", "loss_type", "label_smoothing", "beta",
                                           "precompute_ref_log_probs", "cpo_alpha", "simpo_gamma",
                                           "padding_value", "max_completion_length", "packing",
                                           "dataset_text_field", "pad_to_multiple_of", "loss_weights",
                                           "ld_alpha", "use_weighting", "f_divergence_type",
                                           "desirable_weight", "undesirable_weight")
                               if k in full_conf and k not in cfg]
        record = {
            "case": name,
            "notes": notes,
            "trainer": type(trainer).__module__ + "." + type(trainer).__name__,
            "versions": versions(),
            "config": {k: full_conf[k] for k in keys if k in full_conf},
            "config_full": full_conf,
            "rows": rows,
            "policy_model": "ref_model" if kind == "kto" else "model",
            "reference_model": "model" if kind == "kto" else "ref_model" if kind == "dpo" else None,
            "loss": log.get("loss"),
            "compute_loss_value": cap.calls[0]["loss"],
            "num_items_in_batch": jsonable(cap.calls[0]["num_items_in_batch"]),
            "metrics": {k: v for k, v in log.items() if k not in ("step", "epoch")},
            "log_history_0": log,
            "extras": {k: v.tolist() for k, v in cap.extras.items()},
            "batch_shapes": {k: list(v.shape) for k, v in cap.calls[0]["batch"].items()},
            "tensors": "see <case>.safetensors: batch.*, model_input.*, extra.*, update.*",
        }
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(jsonable(record), f, indent=1, sort_keys=False)
            f.write("\n")
        index[name] = {"trainer": record["trainer"], "loss": record["loss"]}
        print(f"{name:18s} {record['trainer'].split('.')[-1]:13s} loss={record['loss']:.6f} "
              f"metrics={len(record['metrics'])} batch={record['batch_shapes']}")
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(out) for f in fs)
    print(f"wrote {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
