#!/usr/bin/env bash
# On the GPU machine: Nsight Compute warp-stall samples per SASS instruction of one kernel (name
# regex $KERNEL) in one eager call per case; prints the instructions holding most samples.
#   KERNEL=expand scripts/device_ncu_source.sh preset/op/T/r
set -uo pipefail
export PYTHONPATH="$PWD:$PWD/benchmarks" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
ncu --profile-from-start off --clock-control none --cache-control all -k "regex:${KERNEL:-expand}" \
  -c 1 --section SourceCounters --section WarpStateStats --import-source no \
  -o "$OUT/src" python3 scripts/ncu_gemm_cases.py "$@" > "$OUT/src.log" 2>&1
ncu -i "$OUT/src.ncu-rep" --page source --print-source sass --csv > "$OUT/src.csv" 2>> "$OUT/src.log"
python3 - "$OUT/src.csv" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
h = next(i for i, r in enumerate(rows) if "Source" in r)
head, body = rows[h], rows[h + 1:]
si = head.index("Source")
ci = [i for i, n in enumerate(head) if n.startswith("Warp Stall Sampling (All")][0]
tot = sum(float(r[ci] or 0) for r in body if len(r) > ci)
print("columns:", [n for n in head if "Stall" in n][:4], "total samples", tot)
top = sorted((r for r in body if len(r) > ci), key=lambda r: -float(r[ci] or 0))[:40]
for r in top:
    print(f"{float(r[ci]) / tot * 100:5.1f}%  {r[0]:>6}  {r[si][:90]}")
PY
