#!/usr/bin/env python3
"""Generate TRL GRPOTrainer parity fixtures for Finch's Swift GRPO.

TRL 1.16's own GRPOTrainer is run on the tiny Llama of make_trainer_fixtures.py (reused by import,
nothing there is regenerated) with a LoRA adapter, and with exactly ONE thing replaced: the sampling
step. `trainer._generate_single_turn` is swapped for a function that hands out fixed completion
token ids, so every number downstream of sampling is TRL's own: prompt tokenization, decoding,
rewards, group-relative advantages, reference and old-policy log-probs, the clipped surrogate
loss with its KL term, loss normalisation, metrics, and the SGD update of the LoRA weights.

Setup per case: policy = Tests/FinchTestSupport/Fixtures/trainers/model (fp32, eager attention,
tied embeddings) with a peft LoRA adapter (r=4, alpha=8 so scaling 2, dropout 0, all seven
projections) whose A and B matrices are overwritten with seeded N(0, 0.1^2) values before training,
so both are non-zero and every LoRA parameter gets a gradient. The adapter is made by TRL from
`peft_config`, so with beta != 0 the reference is the same network with the adapter disabled
(the frozen base). NOTE: handing TRL 1.16 a ready PeftModel instead makes it add a frozen "ref"
adapter copying the adapter's current values and use THAT as the reference (reference = initial
adapter, KL exactly 0 at step 1); these fixtures avoid that path on purpose.
2 prompts x num_generations 4 = 8 completions, batch 8 x accumulation 1, SGD lr 0.05 (momentum 0,
weight decay 0), constant schedule, no clipping, fp32, CPU, seed 1234. Completions
(max_completion_length 12) have 2..12 tokens; most end with EOS (which TRL keeps as the last
completion token, inside completion_mask), at least one per prompt is exactly 12 tokens without
EOS (TRL treats it as truncated). Two reward functions, weights [1.0, 0.5]:
  reward_len    = -|len(decoded completion) - 20| / 10
  reward_answer = 1.0 if the row's `answer` occurs in the decoded completion else 0.0

TRL semantics exercised: loss_type grpo / bnpo / dr_grpo / dapo; beta 0 and 0.04 (k3 KL estimator
multiplied by the importance ratio, use_bias_correction_kl=True); num_iterations 1 (old log-probs
are per_token_logps.detach()) and 2 (the second optimizer step reuses the same completions with
ratios against the generation-time log-probs, asymmetric clipping epsilon 0.2 / epsilon_high
0.28); scale_rewards group / batch / none; mask_truncated_completions; sampling temperature (it
divides the logits before log-softmax and entropy); conversational prompts (chat template,
add_generation_prompt=True, completions decoded as assistant messages). TRL shuffles the rows of
the generation batch before the loss, so captured batches are in TRL's shuffled order; match rows
by completion ids.

Writes into Tests/FinchTestSupport/Fixtures/trainers/:
  grpo_<case>.safetensors   (all F32; token ids as floats; 0-d tensors stored with shape [1])
      init.<lora>                   LoRA values before training
      step<k>.update.<lora>         after step k minus before step k (= -lr * grad for SGD)
      step<k>.batch.<field>         every tensor of the `inputs` step k's compute_loss received:
                                    prompt_ids [8,P] (left padded with pad 0), prompt_mask,
                                    completion_ids [8,C] (right padded with 0), completion_mask,
                                    advantages [8], num_items_in_batch [1],
                                    old_per_token_logps [8,C] (num_iterations 2 only),
                                    ref_per_token_logps [8,C] (beta != 0 only)
      step<k>.extra.per_token_logps / step<k>.extra.entropies   [8,C] TRL's own
                                    _get_per_token_logps_and_entropies on the weights the loss
                                    saw (no grad); 0 where completion_mask is 0
    <lora> uses Finch's names: peft's name without the `.default` adapter segment, e.g.
    base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
  grpo_<case>.json          versions, case, notes, config (the GRPOConfig values that matter),
                            config_full, lora (settings, parameter names, name rule), rows
                            (dataset), prompts (per prompt: text or messages, TRL's prompt ids, 4 completions with
                            ids, decoded text/messages, per-function rewards, combined reward,
                            advantage), generation_order (TRL's pre-shuffle rows), steps (per
                            optimizer step: compute_loss values, shuffled row order as indices
                            into generation_order, batch shapes, log_history entry)
  grpo_trl_accumulation.json  per loss_type (beta 0.04, num_iterations 1): the relative L2 distance
                            between the LoRA update of batch 8 x accumulation 1 and 4 x 2 (one
                            generation batch of 8 split into two micro-batches), and the rows of
                            each micro-batch.

Usage: python3 reference/make_grpo_fixtures.py [--out DIR] [--cases a,b,...]
Deterministic: seeded LoRA init, fixed completions, shuffle_dataset=False, dropout 0, fp32,
eager attention, CPU, torch.use_deterministic_algorithms, one thread. Timing metrics
(`step_time`, `train_runtime`, ...) are dropped from the JSON so reruns are byte-identical.
"""
import argparse
import copy
import dataclasses
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_trainer_fixtures as fx  # noqa: E402  (sets the offline / quiet environment variables)

import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import PreTrainedTokenizerFast, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

FIXTURES = fx.DEFAULT_OUT
TOKENIZER_DIR = os.path.join(FIXTURES, "tokenizer")
MODEL_DIR = os.path.join(FIXTURES, "model")

LORA_SEED = 4321
LORA_SCALE = 0.1
LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, bias="none",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            task_type="CAUSAL_LM")

NUM_GENERATIONS = 4
MAX_COMPLETION_LENGTH = 12
REWARD_WEIGHTS = [1.0, 0.5]
# One SGD learning rate for every case. The tiny model is sensitive (lr 0.5 already gives step-2
# importance ratios up to ~14); 0.05 makes step 2 of the num_iterations=2 cases clip 13-27% of the
# completion tokens (clip_ratio/region_mean), with every ratio at least ~1.7e-3 away from the clip
# boundaries 0.8 / 1.28, so a reimplementation cannot land on the other side of a boundary.
LEARNING_RATE = 0.05
EPSILON_IT2 = dict(epsilon=0.2, epsilon_high=0.28)

# ---------------------------------------------------------------------------------------------
# Data (own content)
# ---------------------------------------------------------------------------------------------

TEXT_ROWS = [
    {"prompt": "Q: What is 3 + 4?\nA:", "answer": "7"},
    {"prompt": "Q: Which planet is the largest in our solar system? Answer with one word.\nA:",
     "answer": "Jupiter"},
]

CHAT_ROWS = [
    {"prompt": [{"role": "user", "content": "What is 3 + 4?"}], "answer": "7"},
    {"prompt": [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Which planet is the largest in our solar system?"}],
     "answer": "Jupiter"},
]

# Per prompt, 4 completions as (text, ends_with_eos). With EOS: the text's tokens + EOS (<= 12
# tokens). Without: the first 12 tokens of the text (the text is longer), i.e. truncated.
COMPLETIONS = [
    [("7", True),                                   # 1 token + EOS = 2
     (" It is 7.", True),                           # 6 + EOS = 7
     (" Seven, I think.", True),                    # 11 + EOS = 12 (EOS is the 12th token)
     (" 3 + 4 = 7, so the answer is", False)],      # first 12 of 19 tokens, no EOS: truncated
    [(" Earth", True),                              # 5 + EOS = 6
     (" Jupiter.", True),                           # 7 + EOS = 8
     (" The largest one is Jupiter, by far", False),  # first 12 of 23 tokens: truncated
     (" It is Mars.", True)],                       # 8 + EOS = 9
]


def completion_ids(tokenizer):
    out = []
    for group in COMPLETIONS:
        ids_group = []
        for text, eos in group:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if eos:
                ids = ids + [tokenizer.eos_token_id]
                assert 2 <= len(ids) <= MAX_COMPLETION_LENGTH, (text, len(ids))
            else:
                assert len(ids) > MAX_COMPLETION_LENGTH, (text, len(ids))
                ids = ids[:MAX_COMPLETION_LENGTH]
            ids_group.append(ids)
        out.append(ids_group)
    return out


def _completion_text(completion):
    """Plain-text completions are strings; conversational ones are [{"role": "assistant", ...}]."""
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion if m.get("role") == "assistant")


def reward_len(prompts, completions, answer, **kwargs):
    return [-abs(len(_completion_text(c)) - 20) / 10 for c in completions]


def reward_answer(prompts, completions, answer, **kwargs):
    return [1.0 if a in _completion_text(c) else 0.0 for c, a in zip(completions, answer)]


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------

LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo"]


def build_cases():
    cases = {}
    for loss in LOSS_TYPES:
        for beta in (0.0, 0.04):
            for it in (1, 2):
                name = f"grpo_{loss}_b{'0' if beta == 0 else '004'}_it{it}"
                cfg = dict(loss_type=loss, beta=beta, num_iterations=it, max_steps=it)
                notes = f"loss_type={loss}, beta={beta}, num_iterations={it}"
                if it == 2:
                    cfg.update(EPSILON_IT2)
                    notes += (", 2 optimizer steps on the same completions; step 2 has importance ratios "
                              "against the generation-time log-probs (old_per_token_logps), "
                              "epsilon 0.2 / epsilon_high 0.28")
                cases[name] = ("text", cfg, notes)
    cases["grpo_scale_batch"] = ("text", dict(loss_type="grpo", beta=0.04, scale_rewards="batch"),
                                 "advantages divided by the std of all 8 rewards (not per group)")
    cases["grpo_scale_none"] = ("text", dict(loss_type="grpo", beta=0.04, scale_rewards="none"),
                                "advantages = reward - group mean, no std division")
    cases["grpo_mask_truncated"] = ("text", dict(loss_type="bnpo", beta=0.04, mask_truncated_completions=True),
                                    "completions without EOS/pad at the end get completion_mask 0 (rows "
                                    "still present; also excluded from the attention mask)")
    cases["grpo_temperature"] = ("text", dict(loss_type="grpo", beta=0.04, temperature=0.7),
                                 "log-probs, entropies and reference log-probs all use logits / 0.7")
    cases["grpo_chat"] = ("chat", dict(loss_type="grpo", beta=0.04),
                          "conversational prompts rendered with the chat template (add_generation_prompt); "
                          "completions decoded into [{'role': 'assistant', 'content': text}]")
    return cases


CASES = build_cases()

# ---------------------------------------------------------------------------------------------
# Trainer construction and capture
# ---------------------------------------------------------------------------------------------


def finch_name(peft_name):
    return peft_name.replace(".default.", ".")


def seed_lora(peft_model):
    """Overwrite every lora_A / lora_B weight (named_parameters order) with seeded N(0, 0.1^2)."""
    gen = torch.Generator().manual_seed(LORA_SEED)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * LORA_SCALE)


def lora_params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def grpo_args(out_dir, cfg, batch, accum):
    args = fx.common_args(out_dir, batch, accum)
    # GRPO draws rows with its own RepeatSampler (shuffle_dataset below), so the generic sampler
    # setting does not apply.
    args.pop("train_sampling_strategy", None)
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    args = {k: v for k, v in args.items() if k in fields}
    args.update(learning_rate=LEARNING_RATE, num_generations=NUM_GENERATIONS,
                max_completion_length=MAX_COMPLETION_LENGTH, shuffle_dataset=False,
                reward_weights=REWARD_WEIGHTS)
    args.update(cfg)
    return GRPOConfig(**args)


class Run:
    """One GRPOTrainer run with the sampling replaced and compute_loss / steps recorded."""

    def __init__(self, kind, cfg, tokenizer, batch=8, accum=1):
        self.tokenizer = tokenizer
        self.rows = copy.deepcopy(CHAT_ROWS if kind == "chat" else TEXT_ROWS)
        self.fixed = completion_ids(tokenizer)
        self.tmp = tempfile.mkdtemp(prefix="finch_grpo_")
        self.conf = grpo_args(self.tmp, cfg, batch, accum)
        self.generate_calls = []   # per call: list of prompt id lists (as received)
        self.calls = []            # per compute_loss call
        self.snapshots = []        # LoRA values after each optimizer step

        # The adapter is created by TRL from `peft_config` (not passed as a ready PeftModel): given a PeftModel
        # and beta != 0, TRL 1.16 adds a frozen "ref" adapter copying the current one and uses it as the
        # reference, whereas with `peft_config` the reference is the base with adapters disabled (Finch's
        # semantics). The seeded values are written after construction and before training; nothing TRL
        # computes at construction depends on them (the optimizer is built in train()).
        trainer = GRPOTrainer(model=fx.load_model(MODEL_DIR), reward_funcs=[reward_len, reward_answer],
                              args=self.conf, train_dataset=Dataset.from_list(copy.deepcopy(self.rows)),
                              processing_class=copy.deepcopy(tokenizer), peft_config=LoraConfig(**LORA))
        assert "ref" not in trainer.model.peft_config
        seed_lora(trainer.model)
        trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
        self.trainer = trainer
        self.expected_prompt_ids = [self._tokenize_like_trl(r["prompt"]) for r in self.rows]
        self._patch()

    def _tokenize_like_trl(self, prompt):
        if isinstance(prompt, str):
            return self.tokenizer(text=prompt)["input_ids"]
        return self.tokenizer.apply_chat_template([prompt], add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"][0]

    def _patch(self):
        run, trainer = self, self.trainer
        table = {tuple(ids): i for i, ids in enumerate(self.expected_prompt_ids)}

        def fixed_generate(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
            assert num_generations == NUM_GENERATIONS
            run.generate_calls.append([list(p) for p in prompt_ids])
            seen = {}
            out = []
            for ids in prompt_ids:
                key = tuple(ids)
                assert key in table, f"unexpected prompt ids {ids}"
                k = seen.get(key, 0)
                seen[key] = k + 1
                out.append(list(run.fixed[table[key]][k]))
            return out, None

        trainer._generate_single_turn = fixed_generate

        original = trainer.compute_loss

        def wrapped(model, inputs, *a, **kw):
            batch = {k: v.detach().clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
            with torch.no_grad():
                ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
                am = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
                logps, ent, _ = trainer._get_per_token_logps_and_entropies(
                    model, ids, am, inputs["completion_ids"].size(1), compute_entropy=True)
            loss = original(model, inputs, *a, **kw)
            run.calls.append(dict(step=trainer.state.global_step + 1, batch=batch,
                                  extra=dict(per_token_logps=logps.detach().clone(), entropies=ent.detach().clone()),
                                  loss=float(loss.detach().item())))
            return loss

        trainer.compute_loss = wrapped

        class Snap(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                run.snapshots.append(lora_params(trainer.model))

        trainer.add_callback(Snap())

    def train(self):
        self.before = lora_params(self.trainer.model)
        try:
            self.trainer.train()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return self

    # -- views -------------------------------------------------------------------------------

    def generation_order(self):
        """TRL's pre-shuffle rows (prompt group-major), from its own completion log."""
        t = self.trainer
        names = list(t.reward_func_names)
        logs = t._logs
        n = len(logs["prompt"])
        rows = []
        ids_iter = {}
        for i in range(n):
            prompt = logs["prompt"][i]
            p = next(j for j, r in enumerate(self.rows) if r["prompt"] == prompt)
            k = ids_iter.get(p, 0)
            ids_iter[p] = k + 1
            rewards = {name: logs["rewards"][name][i] for name in names}
            rows.append(dict(prompt_index=p, completion_index=k, completion_ids=self.fixed[p][k],
                             completion=logs["completion"][i], rewards=rewards,
                             reward=sum(w * rewards[name] for w, name in zip(REWARD_WEIGHTS, names)),
                             advantage=logs["advantages"][i]))
        return rows

    def row_index(self, completion_ids_row, completion_mask_row, order):
        ids = [int(x) for x in completion_ids_row.tolist()]
        for i, r in enumerate(order):
            c = r["completion_ids"]
            if ids[:len(c)] == c and all(x == self.tokenizer.pad_token_id for x in ids[len(c):]):
                return i
        raise AssertionError("captured row not found among the fixed completions")


def drop_timing(entry):
    return {k: v for k, v in entry.items()
            if not any(s in k for s in ("step_time", "runtime", "per_second", "total_flos"))}


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------

CONFIG_KEYS = ["loss_type", "beta", "epsilon", "epsilon_high", "num_iterations", "scale_rewards", "temperature",
               "top_p", "top_k", "mask_truncated_completions", "max_completion_length", "num_generations",
               "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation",
               "generation_batch_size", "reward_weights", "importance_sampling_level", "multi_objective_aggregation",
               "use_bias_correction_kl", "delta", "top_entropy_quantile", "entropy_coef", "off_policy_mask_threshold",
               "shuffle_dataset", "max_steps", "optim", "weight_decay", "max_grad_norm", "lr_scheduler_type",
               "warmup_steps", "seed", "bf16", "gradient_checkpointing", "disable_dropout", "cast_lm_head_to_fp32",
               "pad_to_multiple_of", "use_vllm"]


def run_case(name, tokenizer, out):
    kind, cfg, notes = CASES[name]
    torch.manual_seed(fx.SEED)
    with fx.quiet():
        run = Run(kind, cfg, tokenizer).train()
    t = run.trainer
    steps = cfg.get("max_steps", 1)
    assert len(run.calls) == steps and len(run.snapshots) == steps, (name, len(run.calls), len(run.snapshots))
    assert len(run.generate_calls) == 1, len(run.generate_calls)
    received = run.generate_calls[0]
    assert received == [p for p in run.expected_prompt_ids for _ in range(NUM_GENERATIONS)], received
    order = run.generation_order()

    tensors = {}
    for n, v in run.before.items():
        tensors[f"init.{finch_name(n)}"] = v.float().contiguous()
    prev = run.before
    for k, snap in enumerate(run.snapshots, 1):
        for n in snap:
            tensors[f"step{k}.update.{finch_name(n)}"] = (snap[n] - prev[n]).float().contiguous()
        prev = snap
    step_records = []
    log_steps = [drop_timing(e) for e in t.state.log_history if "loss" in e and "train_loss" not in e]
    assert len(log_steps) == steps, t.state.log_history
    for k, call in enumerate(run.calls, 1):
        assert call["step"] == k
        for f, v in call["batch"].items():
            tensors[f"step{k}.batch.{f}"] = v.float().reshape(-1 if v.ndim == 0 else v.shape).contiguous()
        for f, v in call["extra"].items():
            tensors[f"step{k}.extra.{f}"] = v.float().contiguous()
        b = call["batch"]
        rows = [run.row_index(b["completion_ids"][i], b["completion_mask"][i], order)
                for i in range(b["completion_ids"].size(0))]
        step_records.append(dict(
            step=k, compute_loss=call["loss"], rows=rows,
            batch_shapes={f: list(v.shape) for f, v in b.items()},
            num_items_in_batch=float(b["num_items_in_batch"]),
            log_history=log_steps[k - 1]))
    save_file(tensors, os.path.join(out, f"{name}.safetensors"),
              # one metadata key: safetensors writes a multi-key header in hash order (not reproducible)
              metadata={"generator": f"reference/make_grpo_fixtures.py (trl {trl.__version__})"})

    full_conf = fx.jsonable(run.conf.to_dict())
    for key in ("output_dir", "logging_dir"):
        if isinstance(full_conf.get(key), str):
            full_conf[key] = "<tmp>"
    prompts = []
    for p, row in enumerate(run.rows):
        comps = [dict(ids=r["completion_ids"], completion=r["completion"],
                      text=_completion_text(r["completion"]), eos=r["completion_ids"][-1] == tokenizer.eos_token_id,
                      rewards=r["rewards"], reward=r["reward"], advantage=r["advantage"])
                 for r in order if r["prompt_index"] == p]
        prompts.append(dict(prompt=row["prompt"], answer=row["answer"], prompt_ids=run.expected_prompt_ids[p],
                            completions=comps))
    record = {
        "case": name,
        "notes": notes,
        "trainer": type(t).__module__ + "." + type(t).__name__,
        "versions": fx.versions(),
        "config": {k: full_conf.get(k) for k in CONFIG_KEYS},
        "config_full": full_conf,
        "lora": dict(LORA, init=f"every lora_A/lora_B weight = randn(generator seed {LORA_SEED}) * {LORA_SCALE}, "
                                "in named_parameters order", scaling=LORA["lora_alpha"] / LORA["r"],
                     names="Finch name = peft name without the '.default' adapter segment, e.g. "
                           "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight <- "
                           "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
                     parameters=sorted(finch_name(n) for n in run.before)),
        "reward_functions": ["reward_len", "reward_answer"],
        "reward_definitions": {"reward_len": "-abs(len(text) - 20) / 10",
                               "reward_answer": "1.0 if answer in text else 0.0"},
        "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
        "eos_token_ids_trl": t.eos_token_ids,
        "rows": run.rows,
        "prompts": prompts,
        "generation_order": [dict(prompt_index=r["prompt_index"], completion_index=r["completion_index"])
                             for r in order],
        "steps": step_records,
        "tensors": "see <case>.safetensors: init.*, step<k>.update.*, step<k>.batch.*, step<k>.extra.*",
    }
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(fx.jsonable(record), f, indent=1)
        f.write("\n")
    summary = []
    for s in step_records:
        lh = s["log_history"]
        summary.append(f"step{s['step']}: loss={s['compute_loss']:.6f} clip={lh.get('clip_ratio/region_mean')}")
    print(f"{name:24s} " + " | ".join(summary))
    return record


def run_accumulation(tokenizer, out):
    table = {}
    for loss in LOSS_TYPES:
        cfg = dict(loss_type=loss, beta=0.04, num_iterations=1, max_steps=1)
        res = {}
        for batch, accum in ((8, 1), (4, 2)):
            torch.manual_seed(fx.SEED)
            with fx.quiet():
                run = Run("text", cfg, tokenizer, batch, accum).train()
            assert len(run.snapshots) == 1 and len(run.calls) == accum
            assert run.conf.steps_per_generation == accum and run.conf.generation_batch_size == 8
            assert len(run.generate_calls) == 1
            order = run.generation_order()
            update = torch.cat([(run.snapshots[0][n] - run.before[n]).reshape(-1) for n in sorted(run.before)])
            micro = []
            for call in run.calls:
                b = call["batch"]
                micro.append(dict(rows=[run.row_index(b["completion_ids"][i], b["completion_mask"][i], order)
                                        for i in range(b["completion_ids"].size(0))],
                                  compute_loss=call["loss"], num_items_in_batch=float(b["num_items_in_batch"]),
                                  completion_ids_width=b["completion_ids"].size(1),
                                  prompt_ids_width=b["prompt_ids"].size(1),
                                  old_per_token_logps="old_per_token_logps" in b))
            log = [drop_timing(e) for e in run.trainer.state.log_history if "loss" in e and "train_loss" not in e][0]
            res[f"{batch}x{accum}"] = dict(update=update, micro_batches=micro, log_history=log,
                                           steps_per_generation=run.conf.steps_per_generation)
        a, b = res["8x1"]["update"], res["4x2"]["update"]
        rel = float((a - b).norm() / a.norm())
        table[loss] = dict(relative_l2=rel, update_norm_8x1=float(a.norm()), update_norm_4x2=float(b.norm()),
                           runs={k: {kk: vv for kk, vv in v.items() if kk != "update"} for k, v in res.items()})
    record = {
        "versions": fx.versions(),
        "notes": ("Per loss_type, beta 0.04, num_iterations 1, the same fixed completions: one optimizer step with "
                  "per_device_train_batch_size 8 x gradient_accumulation_steps 1, and with 4 x 2. In the second "
                  "run steps_per_generation defaults to gradient_accumulation_steps (2), so generation_batch_size "
                  "is 8: one generation of 8 completions, shuffled, split into two micro-batches of 4 that keep "
                  "the full batch's padded widths. relative_l2 = |u(8x1) - u(4x2)| / |u(8x1)| over all LoRA "
                  "parameters concatenated (sorted peft names). rows index generation_order (prompt-major)."),
        "learning_rate": LEARNING_RATE,
        "generation_order": "row r = prompt r // 4, completion r % 4",
        "loss_types": table,
    }
    with open(os.path.join(out, "grpo_trl_accumulation.json"), "w") as f:
        json.dump(fx.jsonable(record), f, indent=1)
        f.write("\n")
    print(f"{'loss_type':10s} {'rel L2 (8x1 vs 4x2)':>20s}  micro-batch rows (4x2)")
    for loss, v in table.items():
        rows = [m["rows"] for m in v["runs"]["4x2"]["micro_batches"]]
        print(f"{loss:10s} {v['relative_l2']:20.3e}  {rows}")
    return record


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=FIXTURES)
    ap.add_argument("--cases", default=",".join(list(CASES) + ["grpo_trl_accumulation"]))
    opts = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    os.makedirs(opts.out, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(TOKENIZER_DIR)
    written = []
    for name in opts.cases.split(","):
        if name == "grpo_trl_accumulation":
            run_accumulation(tokenizer, opts.out)
            written.append("grpo_trl_accumulation.json")
        else:
            run_case(name, tokenizer, opts.out)
            written += [f"{name}.json", f"{name}.safetensors"]
    total = sum(os.path.getsize(os.path.join(opts.out, f)) for f in written)
    print(f"wrote {len(written)} files to {opts.out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
