#!/usr/bin/env python3
"""How far TRL's gradient accumulation is from the full batch.

For each trainer, one SGD step (lr 1, no momentum, no clipping) on the same 4 rows of varied
lengths, from the same tiny random Llama, with per_device_train_batch_size x
gradient_accumulation_steps = 4x1, 2x2 and 1x4 (sequential sampling, so the micro-batches are
rows [0..3], [0,1][2,3] and [0][1][2][3]). Prints the relative L2 distance of the 2x2 and 1x4
updates (all parameters concatenated) from the 4x1 update, and the loss TRL logged.

An exact accumulation gives ~1e-7 (fp32 rounding). Where TRL divides a per-micro-batch mean by
the number of micro-batches, the update is a mean of micro-batch means and differs whenever a
term is normalised by a count that varies between micro-batches (tokens for a token-mean NLL).

Usage: python3 reference/trl_accumulation_gap.py
"""
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_trainer_fixtures as fx  # noqa: E402  (tokenizer, model, data and trainer setup)

import torch  # noqa: E402
import trl  # noqa: E402
import transformers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

CASES = [
    # label, kind, rows, config
    ("SFT prompt/completion", "sft", fx.SFT_PROMPT_COMPLETION, dict(max_length=1024)),
    ("SFT text", "sft", fx.SFT_TEXT, dict(max_length=1024)),
    ("ORPO beta 0.1", "orpo", fx.PREFERENCE, dict(beta=0.1, max_length=1024)),
    ("DPO sigmoid", "dpo", fx.PREFERENCE, dict(beta=0.1, loss_type=["sigmoid"])),
    ("DPO ipo", "dpo", fx.PREFERENCE, dict(beta=0.1, loss_type=["ipo"])),
    ("CPO sigmoid", "cpo", fx.PREFERENCE, dict(beta=0.1, loss_type="sigmoid", cpo_alpha=1.0)),
    ("SimPO", "cpo", fx.PREFERENCE, dict(beta=2.0, loss_type="simpo", simpo_gamma=0.5, cpo_alpha=0.0)),
]
SHAPES = [(4, 1), (2, 2), (1, 4)]


def flat_update(before, after):
    return torch.cat([(after[n] - before[n]).reshape(-1).double() for n in sorted(before)])


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="finch_gap_")
    try:
        tok = fx.build_tokenizer()
        tok.save_pretrained(os.path.join(work, "tokenizer"))
        tok = PreTrainedTokenizerFast.from_pretrained(os.path.join(work, "tokenizer"))
        model_dir, ref_dir = os.path.join(work, "model"), os.path.join(work, "ref_model")
        fx.random_model(tok, fx.SEED).save_pretrained(model_dir)
        fx.random_model(tok, fx.SEED + 1).save_pretrained(ref_dir)

        print(f"TRL {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}; "
              f"one SGD step (lr 1), 4 rows, full fine-tuning, fp32 CPU")
        print(f"{'objective':24s} {'2x2 vs 4x1':>12s} {'1x4 vs 4x1':>12s}   logged loss 4x1 / 2x2 / 1x4")
        for label, kind, rows, cfg in CASES:
            ups, losses = {}, {}
            for bs, ga in SHAPES:
                trainer, cap, before, after, _ = fx.run_one_step(
                    kind, rows, cfg, model_dir, ref_dir if kind == "dpo" else None, tok, batch=bs, accum=ga)
                assert len(cap.calls) == ga, (label, bs, ga, len(cap.calls))
                ups[(bs, ga)] = flat_update(before, after)
                losses[(bs, ga)] = trainer.state.log_history[0]["loss"]
            ref = ups[(4, 1)]
            gaps = [float((ups[s] - ref).norm() / ref.norm()) for s in SHAPES[1:]]
            print(f"{label:24s} {gaps[0]:12.2e} {gaps[1]:12.2e}   "
                  + " / ".join(f"{losses[s]:.5f}" for s in SHAPES))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
