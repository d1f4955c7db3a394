#!/usr/bin/env bash
# The bundled GRPO example: SmolLM2-135M-Instruct (Q4_1 GGUF, checksum verified) learns to answer
# arithmetic word problems (data/arithmetic.jsonl) in the form "Answer: <number>", rewarded by an
# exact match of that number with the row's answer plus a format reward, with 8 sampled
# completions per prompt. Prints the progress (mean reward per step, time spent sampling) and
# the reward curve from the run's metrics.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
GGUF=$(bash scripts/fetch_smollm2.sh | tail -1)
swift build -c release --product finch 2>&1 | tail -1
RUN=${FINCH_RUN:-runs/grpo-example}

.build/release/finch train --method grpo --model "$GGUF" --data data/arithmetic.jsonl --output "$RUN" --overwrite \
    --reward-function exact_match --reward-function 'format:Answer: *-?[0-9]+' \
    --num-generations 8 --max-completion-length 64 --batch-size 2 --max-steps "${FINCH_STEPS:-30}" \
    --lr 1e-4 --lora-r 16 --lora-alpha 32 --seed 42 --precision "${FINCH_PRECISION:-auto}"

echo "== mean reward per 5 steps (exact match + format), from $RUN/metrics.jsonl"
python3 -c 'import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for start in range(0, len(rows), 5):
    part = rows[start:start + 5]
    mean = lambda key: sum(r[key] for r in part) / len(part)
    print("steps %2d-%2d: reward %.3f  (exact_match %.3f, format %.3f)  length %.0f  generation %.1f s/step"
          % (part[0]["step"], part[-1]["step"], mean("reward"), mean("rewards/exact_match/mean"), mean("rewards/format/mean"),
             mean("completions/mean_length"), mean("time/generation")))
q = max(len(rows) // 4, 1)
first, last = [r["reward"] for r in rows[:q]], [r["reward"] for r in rows[-q:]]
print("first quarter: %.3f   last quarter: %.3f" % (sum(first) / q, sum(last) / q))' "$RUN/metrics.jsonl"
