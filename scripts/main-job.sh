#!/usr/bin/env bash
# The main job: fetch SmolLM2-135M-Instruct (Q4_1 GGUF, checksum verified), show its answers to
# held-out prompts, train an ORPO LoRA adapter on data/pairs.jsonl, and show the answers again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
GGUF=$(bash scripts/fetch_smollm2.sh | tail -1)
swift build -c release --product finch 2>&1 | tail -1
FINCH=.build/release/finch
RUN=${FINCH_RUN:-runs/main-job}
PROMPTS=$(mktemp --suffix=.jsonl)
head -n 4 data/pairs_eval.jsonl > "$PROMPTS"
GENERATE=(generate --model "$GGUF" --chat --prompts "$PROMPTS" --max-new-tokens 48 --temperature 0)

echo "== before training: SmolLM2-135M-Instruct answers held-out prompts"
"$FINCH" "${GENERATE[@]}"

echo "== training: ORPO, LoRA r=16 on all projections, data/pairs.jsonl"
"$FINCH" train --method orpo --model "$GGUF" --data data/pairs.jsonl --eval-data data/pairs_eval.jsonl \
    --chat-template --output "$RUN" --overwrite --beta 0.1 --lr 3e-4 --lr-scheduler cosine --warmup-steps 3 \
    --batch-size 4 --grad-accum 2 --epochs 1 --lora-r 16 --lora-alpha 32 --eval-steps 10 --save-steps 10 --seed 42 \
    --precision "${FINCH_PRECISION:-auto}"

echo "== after training: the same prompts with the adapter"
"$FINCH" "${GENERATE[@]}" --adapter "$RUN"

echo "== held-out metrics (step 0 = before training), from $RUN/metrics.jsonl"
python3 -c 'import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if "eval_loss" in m:
        print("step %3d: eval loss %.4f, eval rewards/accuracies %.3f, eval rewards/margins %.4f"
              % (m["step"], m["eval_loss"], m["eval_rewards/accuracies"], m["eval_rewards/margins"]))' "$RUN/metrics.jsonl"
rm -f "$PROMPTS"
