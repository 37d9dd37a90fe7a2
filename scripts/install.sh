#!/usr/bin/env bash
# Creates .venv, installs torch 2.11.0 and the build tools, and builds moe_ext in place.
# The CUDA kernels are built whenever nvcc is found (CUDA_HOME, default /usr/local/cuda), also
# on a machine without a GPU (for sm_90 unless TORCH_CUDA_ARCH_LIST says otherwise). Objects go
# to build/temp: a rerun, or a later `pip wheel .`, recompiles only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
[ -x "$CUDA_HOME/bin/nvcc" ] || unset CUDA_HOME
[ -d .venv ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.11.0 ninja "setuptools>=64" wheel packaging pytest numpy
.venv/bin/python -m pip install -q --no-build-isolation -e .
