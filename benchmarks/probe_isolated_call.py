"""Latency of one fused_moe_lora call when the kernel before it does not let it start early.

The GEMM benchmark replays calls back to back: with programmatic dependent launch the decode
kernel of each call is scheduled while the previous call runs. Here every call follows a plain
PyTorch kernel (an in-place add over 32 MB, which never triggers its dependents early), so the
call starts from nothing, as after a kernel that knows nothing of PDL. Per call: (graph of
[add, call] x n - graph of [add] x n) / n, median of replays, weights cold in L2 as in the
benchmark.

    python benchmarks/probe_isolated_call.py [--tokens 1,16] [--presets ...] [--ranks 16,64]
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_moe_lora_gemm import (  # noqa: E402
    add_case_arguments,
    graph_time_us,
    make_pools,
    setup_case,
)

from moe_ext.timing import copy_bandwidth_gbps  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    add_case_arguments(parser, tokens="1,16")
    args = parser.parse_args()
    bw = copy_bandwidth_gbps(torch.device("cuda")) * 1e9
    gen = torch.Generator().manual_seed(0)
    filler = torch.zeros(8 << 20, device="cuda")

    def add_only(i):
        filler.add_(1.0)

    add_us = graph_time_us(add_only, calls=40, replays=7)
    print(f"{torch.cuda.get_device_name()}: filler add {add_us:.1f} us")
    print(f"{'preset':16} {'op':7} {'T':>5} {'r':>3} {'isolated us':>12}")
    for preset in args.presets.split(","):
        for op in args.ops.split(","):
            for r in map(int, args.ranks.split(",")):
                pools = make_pools(preset, op, r)
                for T in map(int, args.tokens.split(",")):
                    cs = setup_case(preset, op, T, r, bw, gen, pools)

                    def add_then_call(i, cs=cs):
                        filler.add_(1.0)
                        cs.call(i)

                    calls = max(cs.need, 40)
                    us = graph_time_us(add_then_call, calls=calls, replays=7) - add_us
                    print(f"{preset:16} {op:7} {T:5d} {r:3d} {us:12.1f}", flush=True)
                del pools


if __name__ == "__main__":
    main()
