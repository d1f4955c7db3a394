#!/usr/bin/env bash
# Kills a training run with SIGKILL right after a checkpoint, resumes it, and compares the final
# adapter with an uninterrupted run's, byte for byte. Uses the tiny model of the trainer fixtures.
set -euo pipefail
MAX_STEPS=60 SAVE_STEPS=5
source "$(dirname "$0")/kill-resume-setup.sh"
"$FINCH" "${ARGS[@]}" --output "$WORK/straight" >/dev/null
"$FINCH" "${ARGS[@]}" --output "$WORK/killed" >"$WORK/killed.log" 2>&1 &
PID=$!
while [ ! -d "$WORK/killed/checkpoint-25" ]; do sleep 0.01; done
kill -9 "$PID"; wait "$PID" 2>/dev/null || true
echo "killed with SIGKILL at: $(tail -1 "$WORK/killed.log")"
"$FINCH" "${ARGS[@]}" --output "$WORK/killed" --resume | grep -E "resuming|saved"
cmp "$WORK/straight/adapter_model.safetensors" "$WORK/killed/adapter_model.safetensors" && echo "adapter bytes identical to the uninterrupted run"
