#!/usr/bin/env bash
# Two GPUs: how they are linked, then one torchrun (scripts/a2a_x2_run.py) with the FlashInfer
# workspace probe, both backends' checks and the benchmark, the one-GPU simulated FlashInfer
# ranks test, and the pytest torchrun test (multigpu marker). Every step has a time limit: a
# FlashInfer kernel whose peer never arrives spins for minutes before it traps.
set -uo pipefail
source scripts/flashinfer_env.sh
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nvidia-smi topo -m;
  nvidia-smi nvlink --status | head -24; env | grep -E 'NVLS|MULTICAST'; } > "$OUT/probe.txt" 2>&1
python3 -c "
import torch
print('peer access 0->1', torch.cuda.can_device_access_peer(0, 1), '1->0', torch.cuda.can_device_access_peer(1, 0))
" >> "$OUT/probe.txt" 2>&1
cat "$OUT/probe.txt"
python3 -c "import moe_ext" 2>/dev/null || python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
timeout "${X2_LIMIT:-85}" torchrun --standalone --nproc-per-node=2 scripts/a2a_x2_run.py "$OUT/a2a_h200x2.json" > "$OUT/x2.log" 2>&1
echo "torchrun exit $?"; grep -E "probe|ok$|Error|error|passed" "$OUT/x2.log" | head -30
python3 -c "
import json; d = json.load(open('$OUT/a2a_h200x2.json'))
for r in d['results']: print(r['backend'], r['H'], r['E'], r['tokens_per_rank'], round(r['dispatch_us'], 1), round(r['combine_us'], 1))
" 2>&1 | tail -8
CUDA_VISIBLE_DEVICES=0 timeout "${SIM_LIMIT:-30}" python3 -m pytest -q -x -m cuda tests/test_a2a.py -k simulated > "$OUT/sim.log" 2>&1; echo "sim exit $?"; tail -3 "$OUT/sim.log"
timeout "${PYTEST_LIMIT:-150}" python3 -m pytest -q -m multigpu tests/test_a2a.py > "$OUT/multigpu.log" 2>&1; echo "multigpu pytest exit $?"; tail -2 "$OUT/multigpu.log"
