#!/usr/bin/env bash
# On the GPU machine: Nsight Compute stall reasons (cycles per issued instruction), instruction
# count and DRAM / L2 bytes of every kernel in one eager call per case.
#   scripts/device_ncu_stalls.sh preset/op/T/r [...]
set -uo pipefail
export PYTHONPATH="$PWD:$PWD/benchmarks" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
M=""
for s in long_scoreboard short_scoreboard mio_throttle lg_throttle barrier math_pipe_throttle wait not_selected selected membar drain dispatch_stall no_instruction sleeping branch_resolving tex_throttle imc_miss misc; do
  M="$M,smsp__average_warps_issue_stalled_${s}_per_issue_active.ratio"; done
M="${M:1},smsp__inst_executed.sum,sm__cycles_elapsed.avg,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_bytes.sum"
ncu --profile-from-start off --clock-control none --cache-control all --metrics "$M" --csv \
  python3 scripts/ncu_gemm_cases.py "$@" > "$OUT/stall.csv" 2> "$OUT/stall.err"
python3 - "$OUT/stall.csv" <<'PY'
import csv, sys
rows=[r for r in csv.reader(open(sys.argv[1])) if len(r)>10]
h=rows[0]; ki,mi,vi,ii=h.index("Kernel Name"),h.index("Metric Name"),h.index("Metric Value"),h.index("ID")
cur=None
for r in rows[1:]:
    if r[ii]!=cur: cur=r[ii]; print("---",cur,r[ki].split("(")[0][5:60])
    n=r[mi].replace("smsp__average_warps_issue_stalled_","").replace("_per_issue_active.ratio","")
    try: v=float(r[vi].replace(",",""))
    except ValueError: continue
    if v>0.05: print(f"   {n:40} {v:,.2f}")
PY
