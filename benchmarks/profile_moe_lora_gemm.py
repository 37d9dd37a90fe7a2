"""Per-kernel GPU time of fused_moe_lora (torch.profiler, eager calls, weights cold in L2).

Shows where a case spends its time (e.g. shrink vs expand), next to the bytes floor. With
--timeline, each call runs alone (synchronized) and each kernel's median start-end relative to the
call's first kernel is printed instead: how a call's kernels overlap (programmatic dependent
launch) and what follows the first one.

    python benchmarks/profile_moe_lora_gemm.py [--cases qwen3_30b_a3b/gate_up/4096/16,...]
                                               [--timeline]
"""

import argparse
import collections
import statistics

import torch
from bench_moe_lora_gemm import make_pools, setup_case

from moe_ext.timing import copy_bandwidth_gbps

DEFAULT_CASES = ",".join(
    f"{p}/{op}/{T}/{r}"
    for p in ("qwen3_30b_a3b", "mixtral_8x7b")
    for op in ("gate_up", "down")
    for T in (1, 16, 256, 4096)
    for r in (16, 64)
)


def kernel_name(ev):
    return ev.name.split("<")[0].split("(")[0].split("::")[-1]


def timeline_parts(events, calls):
    """Median start-end of each kernel of a call, relative to the call's first kernel."""
    kernels = sorted((ev.time_range.start, ev.time_range.end, kernel_name(ev)) for ev in events)
    per_call = len(kernels) // calls
    spans = collections.defaultdict(list)
    for c in range(calls):
        ks = kernels[c * per_call:(c + 1) * per_call]
        for j, (start, end, name) in enumerate(ks):
            spans[(j, name)].append((start - ks[0][0], end - ks[0][0]))
    med = statistics.median
    return " | ".join(f"{name} {med(s for s, _ in v):.1f}-{med(e for _, e in v):.1f}"
                      for (_, name), v in sorted(spans.items()))


def profile_case(preset, op, T, r, bw, gen, timeline, calls=40):
    cs = setup_case(preset, op, T, r, bw, gen, make_pools(preset, op, r))
    call, need, floor_us = cs.call, cs.need, cs.floor_us

    for i in range(need):
        call(i)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for i in range(calls):
            call(i)
            if timeline:
                torch.cuda.synchronize()
        torch.cuda.synchronize()
    events = [ev for ev in prof.events() if ev.device_type == torch.autograd.DeviceType.CUDA]
    if timeline:
        parts = timeline_parts([ev for ev in events if "moe_lora" in ev.name], calls)
    else:
        per_kernel = collections.defaultdict(float)
        for ev in events:
            per_kernel[kernel_name(ev)] += ev.device_time / calls
        parts = " ".join(f"{name}={us:.1f}" for name, us in sorted(per_kernel.items()))
    print(f"{preset:14} {op:7} T={T:5d} r={r:3d} floor {floor_us:7.1f} us | {parts}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=DEFAULT_CASES)
    parser.add_argument("--timeline", action="store_true")
    args = parser.parse_args()
    bw = copy_bandwidth_gbps(torch.device("cuda")) * 1e9
    print(f"{torch.cuda.get_device_name()}, copy bandwidth {bw / 1e9:.0f} GB/s")
    gen = torch.Generator().manual_seed(0)
    for case in args.cases.split(","):
        preset, op, T, r = case.split("/")
        profile_case(preset, op, int(T), int(r), bw, gen, args.timeline)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
