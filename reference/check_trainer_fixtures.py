#!/usr/bin/env python3
"""Independent re-derivation of the TRL trainer fixtures (no TRL code is called).

For every case written by make_trainer_fixtures.py this script
  1. re-tokenizes the dataset rows following reference/TRL_SEMANTICS.md and checks the result
     against the batch TRL collated (batch.* tensors), and
  2. recomputes, from model/ (and ref_model/) with plain PyTorch autograd, the step-1 loss, every
     logged metric, and the SGD update (= -grad at lr 1), and compares them with what TRL logged.
It is the executable form of TRL_SEMANTICS.md: if a claim there is wrong, this fails.

Usage: python3 reference/check_trainer_fixtures.py [--dir DIR]
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DIR = os.path.join(REPO, "Tests", "FinchTestSupport", "Fixtures", "trainers")


def load_model(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")


def log1mexp(x):
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def pad_right(rows, value):
    T = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (T - len(r)) for r in rows], dtype=torch.long)


def render_chat(tok, example):
    """String rendering of a conversational preference row, as TRL's apply_chat_template does."""
    prompt = tok.apply_chat_template(example["prompt"], tokenize=False, add_generation_prompt=True)
    pc = tok.apply_chat_template(example["prompt"] + example["chosen"], tokenize=False)
    pr = tok.apply_chat_template(example["prompt"] + example["rejected"], tokenize=False)
    common = os.path.commonprefix([prompt, pc, pr])
    return common, pc[len(common):], pr[len(common):]


# --------------------------------------------------------------------------- tokenization

def tok_sft(tok, rows, cfg):
    ids_rows, lab_rows = [], []
    for r in rows:
        if "messages" in r:
            out = tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True,
                                          return_assistant_tokens_mask=cfg.get("assistant_only_loss", False))
            ids = list(out["input_ids"])
            mask = out.get("assistant_masks") or [1] * len(ids)
            labels = [t if m else -100 for t, m in zip(ids, mask)]
        elif "prompt" in r:
            completion = r["completion"] if r["completion"].endswith(tok.eos_token) else r["completion"] + tok.eos_token
            p = tok(r["prompt"]).input_ids
            ids = tok(r["prompt"] + completion).input_ids
            n = len(os.path.commonprefix([p, ids]))
            labels = [-100] * n + ids[n:] if cfg.get("completion_only_loss", True) is not False else list(ids)
        else:
            text = r["text"] if r["text"].endswith(tok.eos_token) else r["text"] + tok.eos_token
            ids = tok(text).input_ids
            labels = list(ids)
        L = cfg.get("max_length")
        if L is not None:
            ids, labels = ids[:L], labels[:L]
        ids_rows.append(ids)
        lab_rows.append(labels)
    return {"input_ids": pad_right(ids_rows, tok.pad_token_id), "labels": pad_right(lab_rows, -100),
            "attention_mask": pad_right([[1] * len(r) for r in ids_rows], 0)}


def tok_orpo_cpo(tok, rows, cfg):
    """ORPO/CPO tokenize_row for a decoder-only model."""
    out = {k: [] for k in ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")}
    L = cfg.get("max_length") or 512
    for r in rows:
        if isinstance(r["prompt"], list):
            prompt, chosen, rejected = render_chat(tok, r)
        else:
            prompt, chosen, rejected = r["prompt"], r["chosen"], r["rejected"]
        p = tok(prompt, add_special_tokens=False).input_ids
        for name, ans in (("chosen", chosen), ("rejected", rejected)):
            full = tok(prompt + ans, add_special_tokens=False).input_ids
            assert full[:len(p)] == p, "prompt tokens merge with the answer (not exercised here)"
            prompt_ids, ans_ids = list(p), full[len(p):]
            if tok.bos_token_id is not None and (not prompt_ids or prompt_ids[0] != tok.bos_token_id):
                prompt_ids = [tok.bos_token_id] + prompt_ids
            if not ans_ids or ans_ids[-1] != tok.eos_token_id:
                ans_ids = ans_ids + [tok.eos_token_id]
            if len(prompt_ids) + len(ans_ids) > L:
                ans_ids = ans_ids[:max(0, L - len(prompt_ids))]
            out[f"{name}_input_ids"].append(prompt_ids + ans_ids)
            out[f"{name}_labels"].append([-100] * len(prompt_ids) + ans_ids)
    res = {}
    for name in ("chosen", "rejected"):
        res[f"{name}_input_ids"] = pad_right(out[f"{name}_input_ids"], tok.pad_token_id)
        res[f"{name}_labels"] = pad_right(out[f"{name}_labels"], -100)
        res[f"{name}_attention_mask"] = pad_right([[1] * len(x) for x in out[f"{name}_input_ids"]], 0)
    return res


def tok_dpo(tok, rows, cfg):
    seqs, masks = [[], []], [[], []]
    L = cfg.get("max_length", 1024)
    for r in rows:
        if isinstance(r["prompt"], list):
            p = tok.apply_chat_template(r["prompt"], tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
            pcs = [tok.apply_chat_template(r["prompt"] + r[k], tokenize=True, return_dict=True)["input_ids"]
                   for k in ("chosen", "rejected")]
        else:
            eos = tok.eos_token
            p = tok(r["prompt"]).input_ids
            pcs = [tok(r["prompt"] + (r[k] if r[k].endswith(eos) else r[k] + eos)).input_ids for k in ("chosen", "rejected")]
        n = min(len(os.path.commonprefix([list(p), list(pc)])) for pc in pcs)
        for i, pc in enumerate(pcs):
            pc = list(pc)
            m = [0] * n + [1] * (len(pc) - n)
            seqs[i].append(pc[:L])
            masks[i].append(m[:L])
    allseq, allmask = seqs[0] + seqs[1], masks[0] + masks[1]
    return {"input_ids": pad_right(allseq, tok.pad_token_id), "completion_mask": pad_right(allmask, 0),
            "attention_mask": pad_right([[1] * len(s) for s in allseq], 0)}


# --------------------------------------------------------------------------- objectives

def token_logps(logits, ids, mask_next):
    """log p(ids[t+1] | <=t) at positions where mask_next[t+1] is set; returns [B, T-1] (0 elsewhere)."""
    lp = torch.log_softmax(logits[:, :-1].float(), -1)
    tgt = ids[:, 1:].clamp(min=0)
    out = lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return out * mask_next[:, 1:].float()


def sft_objective(model, b, cfg):
    ids, am, labels = b["input_ids"], b["attention_mask"], b["labels"]
    logits = model(input_ids=ids, attention_mask=am).logits
    valid = labels != -100
    lp = token_logps(logits, labels, valid)
    n = valid[:, 1:].sum()
    loss = -lp.sum() / n
    with torch.no_grad():
        lsm = torch.log_softmax(logits[:, :-1], -1)
        ent = -(lsm.exp() * lsm).sum(-1)
        v = valid[:, 1:]
        top1 = logits[:, :-1].argmax(-1) == labels[:, 1:]
        metrics = {"entropy": (ent * v).sum() / n, "mean_token_accuracy": (top1 & v).sum() / n,
                   "num_tokens": am.sum()}
    return loss, metrics


def orpo_cpo_objective(model, b, cfg, kind, tok):
    B = b["chosen_input_ids"].shape[0]
    T = max(b["chosen_input_ids"].shape[1], b["rejected_input_ids"].shape[1])
    def padT(x, v):
        return F.pad(x, (0, T - x.shape[1]), value=v)
    ids = torch.cat([padT(b["chosen_input_ids"], tok.pad_token_id), padT(b["rejected_input_ids"], tok.pad_token_id)])
    am = torch.cat([padT(b["chosen_attention_mask"], 0), padT(b["rejected_attention_mask"], 0)])
    labels = torch.cat([padT(b["chosen_labels"], -100), padT(b["rejected_labels"], -100)])
    logits = model(input_ids=ids, attention_mask=am).logits
    beta = cfg["beta"]
    if kind == "orpo":
        nll_labels = torch.where(am == 1, ids, -100)[:B]          # prompt + completion of chosen rows
    else:
        nll_labels = labels[:B]                                    # CPO: completion only
    nll_mask = nll_labels != -100
    nll = -token_logps(logits[:B], nll_labels, nll_mask).sum() / nll_mask[:, 1:].sum()
    cmask = labels != -100
    lp_sum = token_logps(logits, labels, cmask).sum(-1)
    ntok = cmask[:, 1:].sum(-1)
    metrics = {}
    if kind == "orpo":
        logps = lp_sum / ntok
        c, r = logps[:B], logps[B:]
        log_odds = (c - r) - (log1mexp(c) - log1mexp(r))
        ratio = F.logsigmoid(log_odds)
        loss = nll - (beta * ratio).mean()
        metrics["log_odds_ratio"] = ratio.mean()
        metrics["log_odds_chosen"] = log_odds.mean()
        metrics["logits/chosen"] = logits[:B, :-1].mean()
        metrics["logits/rejected"] = logits[B:, :-1].mean()
    else:
        lt, ls = cfg["loss_type"], cfg.get("label_smoothing", 0.0)
        logps = lp_sum / ntok if lt in ("ipo", "simpo") else lp_sum
        c, r = logps[:B], logps[B:]
        z = c - r
        if lt == "simpo":
            z = z - cfg["simpo_gamma"] / beta
        if lt in ("sigmoid", "simpo"):
            losses = -F.logsigmoid(beta * z) * (1 - ls) - F.logsigmoid(-beta * z) * ls
        elif lt == "hinge":
            losses = torch.relu(1 - beta * z)
        else:
            losses = (z - 1 / (2 * beta)) ** 2
        loss = losses.mean() + cfg["cpo_alpha"] * (nll if cfg["cpo_alpha"] != 0 else 0.0)
        metrics["logits/chosen"] = logits[:B].mean()
        metrics["logits/rejected"] = logits[B:].mean()
    rc, rr = beta * c.detach(), beta * r.detach()
    metrics.update({"rewards/chosen": rc.mean(), "rewards/rejected": rr.mean(),
                    "rewards/accuracies": (rc > rr).float().mean(), "rewards/margins": (rc - rr).mean(),
                    "logps/chosen": c.mean(), "logps/rejected": r.mean(),
                    "nll_loss": nll if (kind == "orpo" or cfg["cpo_alpha"] != 0) else torch.tensor(0.0)})
    return loss, {k: v.detach() for k, v in metrics.items()}


def dpo_objective(model, ref, b, cfg):
    ids, am, cm = b["input_ids"], b["attention_mask"], b["completion_mask"]
    B = ids.shape[0] // 2
    logits = model(input_ids=ids, attention_mask=am).logits
    lp = token_logps(logits, ids, cm)
    logps = lp.sum(-1)
    with torch.no_grad():
        ref_logps = token_logps(ref(input_ids=ids, attention_mask=am).logits, ids, cm).sum(-1)
    c, r = logps[:B], logps[B:]
    cr, rr_ = c - ref_logps[:B], r - ref_logps[B:]
    d = cr - rr_
    beta, ls = cfg["beta"], cfg.get("label_smoothing", 0.0)
    lt = cfg["loss_type"][0]
    if lt == "sigmoid":
        per = -F.logsigmoid(beta * d)
    elif lt == "hinge":
        per = torch.relu(1 - beta * d)
    elif lt == "ipo":
        n = cm.sum(1).clamp(min=1)
        per = (cr / n[:B] - rr_ / n[B:] - 1 / (2 * beta)) ** 2
    elif lt == "robust":
        per = (-(1 - ls) * F.logsigmoid(beta * d) + ls * F.logsigmoid(-beta * d)) / (1 - 2 * ls)
    loss = per.mean()
    with torch.no_grad():
        sm = cm[:, 1:].float()
        lsm = torch.log_softmax(logits[:, :-1], -1)
        ent = -(lsm.exp() * lsm).sum(-1)
        mean_logit = logits[:, :-1].mean(-1)
        top1 = (logits[:, :-1].argmax(-1) == ids[:, 1:]).float()
        rc, rj = beta * cr, beta * rr_
        metrics = {"entropy": (ent * sm).sum() / sm.sum(), "num_tokens": am.sum(),
                   "logits/chosen": (mean_logit[:B] * sm[:B]).sum() / sm[:B].sum(),
                   "logits/rejected": (mean_logit[B:] * sm[B:]).sum() / sm[B:].sum(),
                   "mean_token_accuracy": (top1[:B] * sm[:B]).sum() / sm[:B].sum(),
                   "rewards/chosen": rc.mean(), "rewards/rejected": rj.mean(),
                   "rewards/accuracies": (rc > rj).float().mean(), "rewards/margins": (rc - rj).mean(),
                   "logps/chosen": c.mean(), "logps/rejected": r.mean()}
    return loss, {k: v.detach() for k, v in metrics.items()}


# --------------------------------------------------------------------------- driver

def rel(a, b):
    a, b = float(a), float(b)
    return abs(a - b) / max(abs(b), 1e-6)


def check_case(d, name, tok):
    meta = json.load(open(os.path.join(d, f"{name}.json")))
    t = load_file(os.path.join(d, f"{name}.safetensors"))
    batch = {k[6:]: v.long() for k, v in t.items() if k.startswith("batch.")}
    cfg = meta["config"]
    trainer = meta["trainer"].split(".")[-1]
    kind = {"SFTTrainer": "sft", "ORPOTrainer": "orpo", "CPOTrainer": "cpo", "DPOTrainer": "dpo"}[trainer]
    problems = []

    # 1. tokenization
    mine = {"sft": tok_sft, "orpo": tok_orpo_cpo, "cpo": tok_orpo_cpo, "dpo": tok_dpo}[kind](tok, meta["rows"], cfg)
    for k, v in mine.items():
        if not torch.equal(v, batch[k]):
            problems.append(f"tokenization differs for {k}")

    # 2. loss, metrics, update
    model = load_model(os.path.join(d, "model"))
    model.train()
    if kind == "sft":
        loss, metrics = sft_objective(model, batch, cfg)
    elif kind == "dpo":
        ref = load_model(os.path.join(d, "ref_model"))
        loss, metrics = dpo_objective(model, ref, batch, cfg)
    else:
        loss, metrics = orpo_cpo_objective(model, batch, cfg, kind, tok)
    loss.backward()
    loss = loss.detach()
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}
    gnorm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values()))
    metrics["loss"] = loss.detach()
    metrics["grad_norm"] = gnorm
    metrics["learning_rate"] = torch.tensor(1.0)
    logged = meta["metrics"]
    worst_metric = 0.0
    for k, v in logged.items():
        if k not in metrics:
            problems.append(f"logged metric {k} not re-derived")
            continue
        e = rel(metrics[k], v)
        worst_metric = max(worst_metric, e)
        if e > 1e-4:
            problems.append(f"{k}: mine {float(metrics[k]):.7g} vs TRL {v:.7g} (rel {e:.1e})")
    for k in metrics:
        if k not in logged:
            problems.append(f"re-derived metric {k} was not logged by TRL")
    worst_update = 0.0
    for n, g in grads.items():
        u = t[f"update.{n}"]
        e = (u + g).norm() / max(u.norm(), 1e-12)
        worst_update = max(worst_update, float(e))
        if e > 1e-3:
            problems.append(f"update.{n}: rel L2 {float(e):.1e}")
    status = "ok" if not problems else "FAIL"
    print(f"{name:18s} {status:4s} loss {float(loss):.6f} (TRL {meta['loss']:.6f})  worst metric rel {worst_metric:.1e}"
          f"  worst update rel L2 {worst_update:.1e}")
    for p in problems:
        print("    " + p)
    return not problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=DEFAULT_DIR)
    d = ap.parse_args().dir
    torch.manual_seed(0)
    import transformers
    transformers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    tok = PreTrainedTokenizerFast.from_pretrained(os.path.join(d, "tokenizer"))
    names = sorted(f[:-5] for f in os.listdir(d) if f.endswith(".json"))
    ok = all([check_case(d, n, tok) for n in names])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
