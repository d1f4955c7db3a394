#!/usr/bin/env bash
# Kills a training run with SIGKILL right after a checkpoint, resumes it, and compares the final
# adapter with an uninterrupted run's, byte for byte. Uses the tiny model of the trainer fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
FINCH=${FINCH:-.build/release/finch}
[ -x "$FINCH" ] || swift build -c release --product finch >/dev/null
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cp -r Tests/FinchTests/Fixtures/trainers/model "$WORK/model"
cp Tests/FinchTests/Fixtures/trainers/tokenizer/tokenizer*.json "$WORK/model/"
for i in $(seq 0 39); do
    echo "{\"prompt\": \"Question $i: what is $i plus $i?\", \"chosen\": \"$i plus $i is $((2 * i)).\", \"rejected\": \"It might be $((2 * i + 1)), I think, but check.\"}"
done > "$WORK/pairs.jsonl"
ARGS=(train --method orpo --model "$WORK/model" --data "$WORK/pairs.jsonl" --max-steps 60 --batch-size 2 --grad-accum 2
      --save-steps 5 --lora-r 8 --lora-dropout 0.1 --lr 1e-3 --seed 9)
"$FINCH" "${ARGS[@]}" --output "$WORK/straight" >/dev/null
"$FINCH" "${ARGS[@]}" --output "$WORK/killed" >"$WORK/killed.log" 2>&1 &
PID=$!
while [ ! -d "$WORK/killed/checkpoint-25" ]; do sleep 0.01; done
kill -9 "$PID"; wait "$PID" 2>/dev/null || true
echo "killed with SIGKILL at: $(tail -1 "$WORK/killed.log")"
"$FINCH" "${ARGS[@]}" --output "$WORK/killed" --resume | grep -E "resuming|saved"
cmp "$WORK/straight/adapter_model.safetensors" "$WORK/killed/adapter_model.safetensors" && echo "adapter bytes identical to the uninterrupted run"
