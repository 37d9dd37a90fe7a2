#!/usr/bin/env bash
# On the GPU machine: GEMM benchmark (no PyTorch baseline) of reference builds (moe_ext package
# copies) and of the working tree's carried build, same cases, one call, then a side-by-side:
# device_gemm_variants.sh with one variant per build.
#   BASES="dir1 dir2" scripts/device_gemm_compare.sh [bench args...]
set -uo pipefail
variants=()
for base in ${BASES:-}; do variants+=("$(basename "$base")|$base||"); done
exec "$(dirname "$0")/device_gemm_variants.sh" "${variants[@]}" "new|.||" -- "$@"
