"""Per-kernel GPU time of fused_moe_lora (torch.profiler, eager calls, weights cold in L2).

Shows where a case spends its time (e.g. shrink vs expand), next to the bytes floor.

    python benchmarks/profile_moe_lora_gemm.py [--cases qwen3_30b_a3b/gate_up/4096/16,...]
"""

import argparse
import collections

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


def profile_case(preset, op, T, r, bw, gen, calls=40):
    cs = setup_case(preset, op, T, r, bw, gen, make_pools(preset, op, r))
    call, need, floor_us = cs.call, cs.need, cs.floor_us

    for i in range(need):
        call(i)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for i in range(calls):
            call(i)
        torch.cuda.synchronize()
    per_kernel = collections.defaultdict(float)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[ev.name.split("<")[0].split("(")[0]] += ev.device_time / calls
    parts = " ".join(f"{name}={us:.1f}" for name, us in sorted(per_kernel.items()))
    print(f"{preset:14} {op:7} T={T:5d} r={r:3d} floor {floor_us:7.1f} us | {parts}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=DEFAULT_CASES)
    args = parser.parse_args()
    bw = copy_bandwidth_gbps(torch.device("cuda")) * 1e9
    print(f"{torch.cuda.get_device_name()}, copy bandwidth {bw / 1e9:.0f} GB/s")
    gen = torch.Generator().manual_seed(0)
    for case in args.cases.split(","):
        preset, op, T, r = case.split("/")
        profile_case(preset, op, int(T), int(r), bw, gen)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
