#!/usr/bin/env bash
# Two GPUs: probe how they are linked and whether FlashInfer's POSIX-fd workspace maps the
# peer's memory, then the torchrun test of both backends and the all-to-all benchmark.
set -uo pipefail
source scripts/flashinfer_env.sh
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nvidia-smi topo -m;
  nvidia-smi nvlink --status | head -40; env | grep -E 'NVLS|MULTICAST'; } 2>&1 | tee "$OUT/probe.txt"
python3 -c "
import torch
n = torch.cuda.device_count()
print('devices', n, [torch.cuda.get_device_name(i) for i in range(n)])
print('peer access 0->1', torch.cuda.can_device_access_peer(0, 1), '1->0', torch.cuda.can_device_access_peer(1, 0))
" 2>&1 | tee -a "$OUT/probe.txt"
python3 -c "import moe_ext" 2>/dev/null || python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
timeout 240 torchrun --standalone --nproc-per-node=2 scripts/probe_flashinfer_workspace.py 2>&1 | tee -a "$OUT/probe.txt" | tail -8
timeout 300 torchrun --standalone --nproc-per-node=2 tests/torchrun_a2a.py 2>&1 | tee "$OUT/torchrun_a2a.log" | tail -12
timeout 300 torchrun --standalone --nproc-per-node=2 benchmarks/bench_a2a.py --hidden 7168 2048 --experts 256 64 --out "$OUT/a2a_2gpu.json" 2>&1 | tee "$OUT/bench_a2a.log" | tail -30
