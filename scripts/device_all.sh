#!/usr/bin/env bash
# One GPU: every CUDA test of the project (simulated FlashInfer ranks included), sanitizers on
# small GEMM and align cases, and the command line's check and default bench. Logs go to $OUT.
set -uo pipefail
WHL=.whl source scripts/flashinfer_env.sh
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c "import moe_ext" 2>/dev/null || python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
timeout 420 python3 -m pytest -q -m cuda tests/ -p no:cacheprovider > "$OUT/tests.log" 2>&1
echo "cuda tests exit $?"; grep -E "passed|failed|error" "$OUT/tests.log" | tail -3
for tool in memcheck racecheck; do
  compute-sanitizer --tool $tool --error-exitcode 9 python3 scripts/sanitize_gemm_case.py \
    > "$OUT/gemm_$tool.log" 2>&1; echo "gemm $tool exit $?"; tail -1 "$OUT/gemm_$tool.log"
done
python3 -m moe_ext check 2>&1 | tee "$OUT/check.log"
python3 -m moe_ext bench --json "$OUT/cli_bench.json" --plot "$OUT/cli_bench.png" 2>/dev/null | tee "$OUT/cli_bench.log"
