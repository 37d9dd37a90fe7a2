#!/usr/bin/env bash
# On the GPU machine: build (unless a build is present), run the align CUDA tests, a
# compute-sanitizer pass on a small case, and the align benchmark. Logs go to $OUT.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 CUDA_HOME=/usr/local/cuda TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c "import moe_ext" 2>/dev/null || python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
python3 -m pytest -q -m cuda tests/test_moe_align.py 2>&1 | tee "$OUT/tests.log" | tail -5
for tool in memcheck racecheck; do
  compute-sanitizer --tool $tool --error-exitcode 9 python3 -c "
import torch, moe_ext
for T in (37, 1500):  # one chunk, then the multi-chunk path
    ids = torch.randint(-3, 70, (T, 6), dtype=torch.int32, device='cuda')
    slots = torch.randint(-2, 6, (T,), dtype=torch.int32, device='cuda')
    moe_ext.moe_lora_align_block_size(ids, slots, 64, 16, 4); torch.cuda.synchronize()
" > "$OUT/$tool.log" 2>&1; echo "$tool exit $?"; tail -1 "$OUT/$tool.log"
done
python3 benchmarks/bench_moe_align.py "$@" --out "$OUT/moe_align.json" 2>&1 | tee "$OUT/bench.log"
