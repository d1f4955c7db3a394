#!/usr/bin/env bash
# Finch as a versioned dependency (issue 17): clones this repository (its committed state), tags
# the clone with the library's version, builds Examples/FineTune in a clean directory against it
# through `.package(url:, from:)` in release mode, runs it on the test fixtures' tiny model, and
# checks that it trained, saved an adapter and generated. SwiftPM refuses a versioned dependency
# whose targets use unsafe flags, so this also checks that Finch has none.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
version=$(sed -n 's/.*public static let version = "\(.*\)"/\1/p' "$root/Sources/FinchKernels/Support/Version.swift")
git clone -q "$root" "$work/finch"
git -C "$work/finch" tag "$version"
cp -r "$root/Examples/FineTune" "$work/app"
rm -rf "$work/app/.build"
model="$work/tiny-model"
mkdir "$model"
cp "$root"/Tests/FinchTestSupport/Fixtures/trainers/model/* "$root"/Tests/FinchTestSupport/Fixtures/trainers/tokenizer/* "$model"/
cd "$work/app"
echo "example: building Examples/FineTune against Finch $version (a tagged clone) in release mode"
FINCH_PACKAGE_URL="$work/finch" swift build -c release 2>&1 | grep -E "error|warning: |Build complete" || true
out=$(FINCH_PACKAGE_URL="$work/finch" .build/release/FineTune "$model" train.jsonl "$work/run")
echo "$out"
fail() { echo "example: FAILED: $1"; exit 1; }
[ "$(echo "$out" | grep -c '^step ')" = 4 ] || fail "expected 4 training steps"
echo "$out" | grep -qE '^Say hi -> .*\[[0-9]+ tokens, (eos|length)\]' || fail "expected a greedy reply"
[ -f "$work/run/adapter_model.safetensors" ] || fail "no adapter_model.safetensors in the output"
grep -q "\"$version\"" "$work/app/Package.resolved" 2>/dev/null || fail "Finch did not resolve to version $version"
echo "example: passed (Finch $version as a versioned dependency)"
