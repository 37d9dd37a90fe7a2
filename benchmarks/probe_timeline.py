"""Kernel timeline of single fused_moe_lora calls (torch.profiler, eager, weights cold in L2).

For each case: medians over calls of each kernel's start and end relative to the call's first
kernel start. Shows how a call's kernels overlap (programmatic dependent launch) and where the
time after the first kernel goes.

    python benchmarks/probe_timeline.py --cases mixtral_8x7b/down/1/64,...
"""

import argparse
import statistics

import torch
from bench_moe_lora_gemm import make_pools, setup_case

from moe_ext.timing import copy_bandwidth_gbps


def timeline(preset, op, T, r, bw, gen, calls=30):
    cs = setup_case(preset, op, T, r, bw, gen, make_pools(preset, op, r))
    for i in range(cs.need):
        cs.call(i)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for i in range(calls):
            cs.call(i)
            torch.cuda.synchronize()
    kernels = sorted(
        (ev.time_range.start, ev.time_range.end, ev.name.split("<")[0].split("::")[-1])
        for ev in prof.events()
        if ev.device_type == torch.autograd.DeviceType.CUDA and "moe_lora" in ev.name
    )
    per_call = len(kernels) // calls
    rows = {}
    for c in range(calls):
        ks = kernels[c * per_call:(c + 1) * per_call]
        t0 = ks[0][0]
        for j, (s, e, name) in enumerate(ks):
            rows.setdefault((j, name), []).append((s - t0, e - t0))
    med = statistics.median
    parts = " | ".join(
        f"{name} {med(v[0] for v in se):.1f}-{med(v[1] for v in se):.1f}"
        for (j, name), se in sorted(rows.items())
    )
    print(f"{preset:14} {op:7} T={T:5d} r={r:3d} floor {cs.floor_us:6.1f} us | {parts}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", required=True)
    args = parser.parse_args()
    bw = copy_bandwidth_gbps(torch.device("cuda")) * 1e9
    print(f"{torch.cuda.get_device_name()}, copy bandwidth {bw / 1e9:.0f} GB/s")
    gen = torch.Generator().manual_seed(0)
    for case in args.cases.split(","):
        preset, op, T, r = case.split("/")
        timeline(preset, op, int(T), int(r), bw, gen)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
