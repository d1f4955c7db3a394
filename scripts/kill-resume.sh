#!/usr/bin/env bash
# kill -9 at N random moments of training runs (a checkpoint every step, so many kills land while
# one is being written), then `--resume` until the run finishes; every final adapter must equal an
# uninterrupted run's byte for byte, or the resume must refuse with a one-line error.
# Usage: scripts/kill-resume.sh [N=30] [seed=1]
set -euo pipefail
N=${1:-30}
RANDOM=${2:-1}
MAX_STEPS=40 SAVE_STEPS=1
source "$(dirname "$0")/kill-resume-setup.sh"
start=$(date +%s%N)
"$FINCH" "${ARGS[@]}" --output "$WORK/straight" >/dev/null
duration_ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "uninterrupted run: ${duration_ms} ms"
identical=0; refused=0; different=0
for trial in $(seq 1 "$N"); do
    out="$WORK/run-$trial"
    # Kill 1 to 3 times at random moments, then let the last resume finish.
    kills=$(( RANDOM % 3 + 1 ))
    for k in $(seq 1 "$kills"); do
        extra=(); [ "$k" -gt 1 ] && extra=(--resume)
        [ "$k" -gt 1 ] && [ ! -d "$out" ] && extra=()
        "$FINCH" "${ARGS[@]}" --output "$out" "${extra[@]}" >"$out.log" 2>&1 &
        pid=$!
        sleep "$(awk -v r=$RANDOM -v d="$duration_ms" 'BEGIN { printf "%.3f", (r / 32768.0) * d / 1000.0 }')"
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -d "$out" ]; then resume=(--resume); else resume=(); fi
    if "$FINCH" "${ARGS[@]}" --output "$out" "${resume[@]}" >"$out.log" 2>&1; then
        if cmp -s "$WORK/straight/adapter_model.safetensors" "$out/adapter_model.safetensors"; then
            identical=$((identical + 1))
        else
            different=$((different + 1)); echo "trial $trial: the final adapter differs from the uninterrupted run's"
        fi
    else
        refused=$((refused + 1)); echo "trial $trial: resume refused: $(tail -1 "$out.log")"
    fi
done
echo "kill -9 trials: $N, identical adapters: $identical, clear refusals: $refused, different adapters: $different"
[ "$different" -eq 0 ]
