#!/usr/bin/env bash
# On the GPU machine: build (unless the carried build loads), run the moe_lora_gemm CUDA tests,
# compute-sanitizer memcheck + racecheck on a small case, then the benchmark. Logs go to $OUT.
#   scripts/device_gemm.sh [benchmark args...]      (SKIP_TESTS=1 to benchmark only;
#                                                    PROFILE=1 per-kernel times instead)
set -uo pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 CUDA_HOME=/usr/local/cuda TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c "import moe_ext" 2>/dev/null || python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  python3 -m pytest -q -m cuda tests/test_moe_lora_gemm.py 2>&1 | tee "$OUT/tests.log" | tail -15
  for tool in memcheck racecheck; do
    compute-sanitizer --tool $tool --error-exitcode 9 python3 scripts/sanitize_gemm_case.py \
      > "$OUT/$tool.log" 2>&1; echo "$tool exit $?"; tail -2 "$OUT/$tool.log"
  done
fi
if [ "${PROFILE:-0}" = 1 ]; then
  PYTHONPATH="$PWD:$PWD/benchmarks" python3 benchmarks/profile_moe_lora_gemm.py 2>&1 \
    | grep -v -i warn | tee "$OUT/profile.log"
  exit 0
fi
python3 benchmarks/bench_moe_lora_gemm.py "$@" --out "$OUT" 2>&1 | tee "$OUT/bench.log"
