#!/usr/bin/env bash
# On the GPU machine: the GEMM benchmark (no PyTorch baseline) once per variant, same cases, one
# call, then a side-by-side against the first variant. A variant is "name|package dir|env|args":
# the package dir goes first on PYTHONPATH (. for the working tree's build), env is a list of
# VAR=value for that run, args extra benchmark arguments.
#   scripts/device_gemm_variants.sh "base|.wt/v10||" "bs32|.|X=1|--block-size 32" -- [bench args...]
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
variants=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do variants+=("$1"); shift; done
[ $# -gt 0 ] && shift
jsons=()
for v in "${variants[@]}"; do
  IFS='|' read -r name pkg envs extra <<< "$v"
  # shellcheck disable=SC2086
  env PYTHONPATH="$PWD/$pkg" $envs python3 benchmarks/bench_moe_lora_gemm.py --no-baseline \
    $extra "$@" --out "$OUT/$name" > "$OUT/bench_$name.log" 2>&1 || tail -5 "$OUT/bench_$name.log"
  jsons+=("$OUT/$name"/*.json)
  echo "$name: $(grep -E 'geomean speed-up vs vLLM|T>=16' "$OUT/bench_$name.log" | tr '\n' ' ')"
done
python3 scripts/compare_gemm_runs.py "${jsons[@]}" > "$OUT/compare.txt"
grep "geomean speed ratio" "$OUT/compare.txt"
