#!/usr/bin/env bash
# One GPU: the simulated FlashInfer ranks test and benchmark only, each with a time limit.
set -uo pipefail
source scripts/flashinfer_env.sh
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
timeout 50 python3 -m pytest -q -x -m cuda tests/test_a2a.py -k simulated > "$OUT/sim_test.log" 2>&1; echo "sim test exit $?"; tail -4 "$OUT/sim_test.log"
timeout 25 python3 benchmarks/bench_a2a.py --simulate --ep 2 4 --hidden 7168 --experts 256 --tokens 16 32 64 --iters 20 --out "$OUT/a2a_sim.json" > "$OUT/sim_bench.log" 2>&1; echo "sim bench exit $?"; tail -9 "$OUT/sim_bench.log"
