#!/usr/bin/env bash
# Installs what Finch needs on a fresh Debian machine that has the Swift toolchain:
# OpenBLAS (loaded at run time, see Sources/FinchKernels/Kernels/BLAS.swift), oneDNN and Open MPI for
# data parallel training under mpirun (loaded at run time too, see Sources/FinchDistributed/MPI.swift).
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# libcurl: Foundation's URLSession (downloads from the Hugging Face hub, Sources/FinchModels/HubDownload.swift)
# links it; the Swift toolchain's own dependencies include it, installed here in case.
if ! ldconfig -p | grep -q 'libcurl\.so\.4'; then
    echo "setup: installing libcurl (libcurl4)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libcurl4 >/dev/null
fi

if ! ldconfig -p | grep -q 'libopenblas\.so\.0'; then
    echo "setup: installing OpenBLAS (libopenblas0-pthread)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libopenblas0-pthread >/dev/null
fi

# oneDNN (loaded at run time, see Sources/FinchCPU/onednn.c): matmuls with kernels chosen for the
# running CPU (AVX2, AVX-512, AVX512_BF16, AMX). Without it Finch falls back to OpenBLAS.
if ! ldconfig -p | grep -q 'libdnnl\.so\.2'; then
    echo "setup: installing oneDNN (libdnnl-dev)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libdnnl-dev >/dev/null
fi

if ! command -v mpirun >/dev/null || ! ldconfig -p | grep -q 'libmpi\.so\.40'; then
    echo "setup: installing Open MPI (openmpi-bin)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openmpi-bin >/dev/null
fi

command -v swift >/dev/null || { echo "setup: the Swift toolchain is not on PATH (https://swift.org/install)"; exit 1; }
echo "setup: ok ($(swift --version 2>&1 | head -1); $(ldconfig -p | grep -m1 'libopenblas\.so\.0' | sed 's/.*=> //'); $(ldconfig -p | grep -m1 'libdnnl\.so\.2' | sed 's/.*=> //'); $(mpirun --version 2>&1 | head -1))"
