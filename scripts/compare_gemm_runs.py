"""Side-by-side of two or more bench_moe_lora_gemm JSON results (same cases): us per case and
the per-T geomean speed ratio of each run against the first.

    python scripts/compare_gemm_runs.py base.json new.json [...]
"""

import json
import math
import sys


def main():
    runs = [{(r["preset"], r["op"], r["T"], r["rank"]): r for r in json.load(open(p))["rows"]}
            for p in sys.argv[1:]]
    keys = [k for k in runs[0] if all(k in run for run in runs[1:])]
    ratios = {}
    for key in keys:
        us = [run[key]["us"] for run in runs]
        vllm = runs[0][key].get("vllm_us")
        fl = runs[0][key]["floor_us"]
        cols = " ".join(f"{u:8.1f}" for u in us)
        extra = f"  x fl {us[-1] / fl:5.2f}" + (f"  x vllm {vllm / us[-1]:5.2f}" if vllm else "")
        print(f"{key[0]:16} {key[1]:7} {key[2]:5d} {key[3]:3d} {cols}{extra}")
        for i in range(1, len(runs)):
            ratios.setdefault((i, key[2]), []).append(us[0] / us[i])
    for (i, T), v in sorted(ratios.items()):
        print(f"run {i} vs run 0, T={T:5d}: geomean speed ratio "
              f"{math.exp(sum(map(math.log, v)) / len(v)):.3f} over {len(v)} cases")


if __name__ == "__main__":
    main()
