#!/usr/bin/env bash
# Trainer step time on 1 process and on 2 ranks of `mpirun` on this machine, same global batch,
# with the time in collectives (and the gradient all-reduce alone) apart.
# Usage: bash bench/data_parallel.sh [finch bench data-parallel options, e.g. --full --batch 8 --seq 128]
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release >/dev/null
F=.build/release/finch
# As root (containers): Open MPI refuses to run unless told it may.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
"$F" bench data-parallel "$@" | tail -1
mpirun --oversubscribe -np 2 "$F" bench data-parallel "$@" | tail -1
