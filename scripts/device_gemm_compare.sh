#!/usr/bin/env bash
# On the GPU machine: GEMM benchmark (no PyTorch baseline) of the working tree's carried build
# and of reference builds (moe_ext package copies), same cases, one call, then a side-by-side.
#   BASES="dir1 dir2" scripts/device_gemm_compare.sh [bench args...]
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
jsons=()
for base in ${BASES:-}; do
  name=$(basename "$base")
  PYTHONPATH="$PWD/$base" python3 benchmarks/bench_moe_lora_gemm.py --no-baseline "$@" \
    --out "$OUT/$name" > "$OUT/bench_$name.log" 2>&1
  jsons+=("$OUT/$name"/*.json)
done
PYTHONPATH="$PWD" python3 benchmarks/bench_moe_lora_gemm.py --no-baseline "$@" \
  --out "$OUT/new" > "$OUT/bench_new.log" 2>&1
jsons+=("$OUT/new"/*.json)
grep -E "geomean|T=1" "$OUT/bench_new.log"
python3 scripts/compare_gemm_runs.py "${jsons[@]}" | tee "$OUT/compare.txt"
