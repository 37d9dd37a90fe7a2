#!/usr/bin/env bash
# On the GPU machine: Nsight Compute summary (time, DRAM/L2 throughput, occupancy, stalls) of the
# GEMM kernels of one eager call per case. Needs the carried build. Logs go to $OUT.
#   scripts/device_ncu.sh preset/op/T/r ...
set -uo pipefail
export PYTHONPATH="$PWD:$PWD/benchmarks" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
ncu --profile-from-start off --clock-control none --cache-control all \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  --section MemoryWorkloadAnalysis --csv --page details \
  python3 scripts/ncu_gemm_cases.py "$@" > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
echo "ncu exit $?"; tail -3 "$OUT/ncu.err"
python3 - "$OUT/ncu.csv" <<'PY'
import csv, sys
keep = ("Duration", "DRAM Throughput", "Memory Throughput", "L2 Cache Throughput", "Achieved Occupancy",
        "Registers Per Thread", "Grid Size", "Dynamic Shared Memory Per Block", "Theoretical Occupancy",
        "Warp Cycles Per Issued Instruction", "Block Limit Shared Mem", "Block Limit Registers")
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 12]
head = rows[0]
ki, mi, vi, ui = head.index("Kernel Name"), head.index("Metric Name"), head.index("Metric Value"), head.index("Metric Unit")
ii = head.index("ID")
cur = None
for r in rows[1:]:
    if r[ii] != cur:
        cur = r[ii]
        print(f"--- {cur} {r[ki].split('(')[0][:60]}")
    if r[mi] in keep:
        print(f"   {r[mi]:40} {r[vi]:>12} {r[ui]}")
PY
