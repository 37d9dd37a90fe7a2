"""How fast one CTA can pull cold weights: P programs each loading X KB at once (one tl.load),
graph-replay medians as in the GEMM benchmark, weights cold in L2. Needs Triton and a GPU.

    python benchmarks/probe_cta_stream.py
"""

import itertools

import torch
import triton
import triton.language as tl

from moe_ext.timing import graph_replay_us

COLD_BYTES = 150e6


@triton.jit
def pull(w_ptr, out_ptr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    v = tl.load(w_ptr + pid * BLOCK + tl.arange(0, BLOCK)).to(tl.float32)
    tl.store(out_ptr + pid, tl.sum(v))


def pull_us(programs, kb):
    """us per call of `programs` programs each pulling kb KB of cold weights at once."""
    block = kb * 512  # bf16 elements
    copies = max(2, int(COLD_BYTES / (programs * block * 2)) + 1)
    w = torch.randn(copies, programs * block, device="cuda", dtype=torch.bfloat16)
    out = torch.zeros(programs, device="cuda")
    calls = itertools.count()

    def run():
        pull[(programs,)](w[next(calls) % copies], out, BLOCK=block,
                          num_warps=4 if kb <= 16 else 16)

    return graph_replay_us(run, calls_per_graph=32, replays=9)


def main():
    print(torch.cuda.get_device_name())
    print(f"{'programs':>8} {'KB each':>7} {'us':>6} {'GB/s per program':>16} {'GB/s total':>10}")
    for programs, kb in itertools.product((16, 64, 132), (8, 32, 64, 128)):
        us = pull_us(programs, kb)
        print(f"{programs:8d} {kb:7d} {us:6.2f} {kb * 1024 / us / 1e3:16.1f} "
              f"{programs * kb * 1024 / us / 1e3:10.0f}")


if __name__ == "__main__":
    main()
