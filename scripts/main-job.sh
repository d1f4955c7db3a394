#!/usr/bin/env bash
# The main job. Today (before the trainers of issue 4 land): fetch SmolLM2-135M-Instruct,
# score the bundled text with it, and time one LoRA training step on its shape.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
GGUF=$(bash scripts/fetch_smollm2.sh | tail -1)
swift build -c release --product finch
echo "== perplexity of SmolLM2-135M-Instruct (Q4_1) on Tests/FinchTests/Fixtures/smollm2/text.txt"
.build/release/finch perplexity --model "$GGUF" --token-ids Tests/FinchTests/Fixtures/smollm2/token_ids.jsonl --json
echo "== one LoRA step (r=16, all projections, batch 2 x 256)"
.build/release/finch bench step --model "$GGUF" --batch 2 --seq 256 --repetitions 2
