"""Where a fused_moe_lora call's time goes between its two GEMMs: graph-replay medians of the
fused op, of the standalone shrink op (rank vectors summed and rounded) and of the standalone
expand op (rank vectors already rounded), weights cold in L2 as in the benchmark.

    python benchmarks/probe_split_ops.py [--tokens 1024] [--presets mixtral_8x7b] [--ranks 64]
                                         [--ops down] [--block-size BS]
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

import moe_ext  # noqa: E402
from moe_ext.timing import copy_bandwidth_gbps  # noqa: E402


def probe(preset, op, T, r, bw, gen, block_size):
    pools = make_pools(preset, op, r)
    cs = setup_case(preset, op, T, r, bw, gen, pools, block_size)
    a_pool, b_pool = pools
    sorted_ids, expert_ids, post_pad = cs.align
    inter = torch.empty(cs.S, cs.numel, r, device="cuda", dtype=cs.dtype)

    def shrink(i):
        c = i % cs.need
        moe_ext.fused_moe_lora_shrink(inter, cs.x, [a[c] for a in a_pool], sorted_ids, expert_ids,
                                      post_pad, cs.k)

    def expand(i):
        c = i % cs.need
        moe_ext.fused_moe_lora_expand(cs.out, inter, [b[c] for b in b_pool], cs.weights,
                                      sorted_ids, expert_ids, post_pad, cs.k, cs.mul, True, 0)

    calls = max(cs.need, 20)
    times = [graph_time_us(fn, calls, 5) for fn in (cs.call, shrink, expand)]
    print(f"{preset:16} {op:7} T={T:5d} r={r:3d} BS={cs.block_size:2d} floor {cs.floor_us:6.1f}"
          f" | fused {times[0]:7.1f} shrink op {times[1]:7.1f} expand op {times[2]:7.1f} us",
          flush=True)


def main():
    parser = argparse.ArgumentParser()
    add_case_arguments(parser, tokens="1024")
    parser.add_argument("--block-size", type=int, default=None)
    args = parser.parse_args()
    bw = copy_bandwidth_gbps(torch.device("cuda")) * 1e9
    print(f"{torch.cuda.get_device_name()}, copy bandwidth {bw / 1e9:.0f} GB/s")
    gen = torch.Generator().manual_seed(0)
    for preset in args.presets.split(","):
        for op in args.ops.split(","):
            for T in map(int, args.tokens.split(",")):
                for r in map(int, args.ranks.split(",")):
                    probe(preset, op, T, r, bw, gen, args.block_size)
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
