#!/usr/bin/env bash
# Fetch llama.cpp's tokenizer test vocabularies (models/ggml-vocab-*.gguf with their .inp/.out
# test files) from the llama-cpp-python source archive on PyPI.
#
# Usage: scripts/fetch_tokenizer_vocabs.sh      # prints the folder on stdout
# Cache: ${FINCH_CACHE:-$HOME/.cache/finch}/llama-vocabs/
# The tokenizer tests look there (or in $FINCH_TOKENIZER_VOCABS) and skip the vocabularies
# that are not committed under Tests/FinchTestSupport/Fixtures/tokenizers/llama.cpp when it is absent.
# Idempotent. Needs: python3 with pip, and sha256sum or shasum.
set -euo pipefail

VERSION="0.3.36"
SDIST="llama_cpp_python-$VERSION.tar.gz"
SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

CACHE="${FINCH_CACHE:-$HOME/.cache/finch}"
DIR="$CACHE/llama-vocabs"
STAMP="$DIR/.complete-$VERSION"

log() { echo "fetch_tokenizer_vocabs: $*" >&2; }

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1; else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

if [ -f "$STAMP" ]; then
    echo "$DIR"
    exit 0
fi

mkdir -p "$DIR"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
log "downloading llama-cpp-python==$VERSION (source archive, ~77 MB)"
# --no-binary for this package only: its build dependencies may come as wheels.
python3 -m pip download --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$TMP" >&2
got="$(sha256_of "$TMP/$SDIST")"
if [ "$got" != "$SHA256" ]; then
    log "sha256 mismatch: got $got, want $SHA256"
    exit 1
fi
log "extracting vendor/llama.cpp/models/ggml-vocab-*"
python3 - "$TMP/$SDIST" "$DIR" <<'PY'
import os, sys, tarfile
archive, dest = sys.argv[1:3]
with tarfile.open(archive) as tar:
    for member in tar.getmembers():
        name = os.path.basename(member.name)
        if "/vendor/llama.cpp/models/" in member.name and name.startswith("ggml-vocab-") and member.isfile():
            with tar.extractfile(member) as src, open(os.path.join(dest, name), "wb") as dst:
                dst.write(src.read())
PY
touch "$STAMP"
log "ok"
echo "$DIR"
