#!/usr/bin/env bash
# One GPU: nvfp4 CUDA tests + memcheck, FlashInfer all-to-all with simulated ranks (JIT-built
# here in the background while the nvfp4 work runs; the module comes back in $OUT), benchmarks.
set -uo pipefail
source scripts/flashinfer_env.sh
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import moe_ext" 2>/dev/null || python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
python3 -c "
from flashinfer.comm.trtllm_moe_alltoall import get_moe_alltoall_module
get_moe_alltoall_module()" > "$OUT/fi_jit.log" 2>&1 &
JIT=$!
python3 -m pytest -q -m cuda tests/test_nvfp4.py 2>&1 | tee "$OUT/test_nvfp4.log" | tail -3
compute-sanitizer --tool memcheck --error-exitcode 9 python3 -c "
import torch, moe_ext
x = torch.randn(133, 80, device='cuda', dtype=torch.bfloat16)
gs = moe_ext.nvfp4_global_scale(x)
for sw in (False, True):
    p, s = moe_ext.nvfp4_quantize(x, gs, swizzle=sw)
    moe_ext.nvfp4_dequantize(p, s, gs, torch.float16, swizzled=sw)
moe_ext.nvfp4_unswizzle_scales(moe_ext.nvfp4_swizzle_scales(s), 133, 5)
torch.cuda.synchronize()" > "$OUT/memcheck.log" 2>&1; echo "memcheck exit $?"; tail -1 "$OUT/memcheck.log"
python3 benchmarks/bench_nvfp4.py --out "$OUT/nvfp4.json" 2>&1 | tee "$OUT/bench_nvfp4.log"
wait $JIT; echo "flashinfer JIT exit $?"; tail -3 "$OUT/fi_jit.log"
find /tmp/fi -name 'mnnvl_moe_alltoall.so' -exec cp {} "$OUT/" \;
# Simulated ranks: bounded, since a rank whose peers never arrive spins until FlashInfer traps.
timeout 90 python3 -m pytest -q -x -m cuda tests/test_a2a.py > "$OUT/test_a2a.log" 2>&1; echo "a2a tests exit $?"; tail -3 "$OUT/test_a2a.log"
timeout 60 python3 benchmarks/bench_a2a.py --simulate --ep 2 4 --tokens 16 32 64 --out "$OUT/a2a_sim.json" > "$OUT/bench_a2a_sim.log" 2>&1; echo "sim bench exit $?"; tail -12 "$OUT/bench_a2a_sim.log"
