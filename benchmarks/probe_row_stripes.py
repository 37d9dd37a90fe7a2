"""Does the order in which a gathered x row is read change DRAM throughput? Two Triton kernels
read the same gathered rows (DeepSeek-V2-Lite down input at T = 4096, rows in the alignment's
order) and keep only a sum, timed by CUDA-graph replay:
  whole    each program reads ROWS whole rows, one after the other (as a row copy does);
  stripes  each program owns 64 rows and walks K in stripes of BK columns, all 64 rows per
           stripe, pipelined (as the shrink's 64-row tiles do).
Needs Triton and a GPU.

    python benchmarks/probe_row_stripes.py
"""

import torch
import triton
import triton.language as tl

from moe_ext.timing import graph_replay_us


@triton.jit
def read_whole(x_ptr, idx_ptr, out_ptr, K: tl.constexpr, KP: tl.constexpr, ROWS: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, KP)
    acc = tl.zeros([KP], dtype=tl.float32)
    for j in range(ROWS):
        row = tl.load(idx_ptr + pid * ROWS + j).to(tl.int64)
        acc += tl.load(x_ptr + row * K + cols, mask=cols < K, other=0.0).to(tl.float32)
    tl.store(out_ptr + pid, tl.sum(acc))


@triton.jit
def read_stripes(x_ptr, idx_ptr, out_ptr, K: tl.constexpr, BK: tl.constexpr,
                 STAGES: tl.constexpr):
    pid = tl.program_id(0)
    rows = tl.load(idx_ptr + pid * 64 + tl.arange(0, 64)).to(tl.int64)
    acc = tl.zeros([64, BK], dtype=tl.float32)
    for k0 in tl.range(0, K, BK, num_stages=STAGES):
        cols = k0 + tl.arange(0, BK)
        acc += tl.load(x_ptr + rows[:, None] * K + cols[None, :], mask=cols[None, :] < K,
                       other=0.0).to(tl.float32)
    tl.store(out_ptr + pid, tl.sum(acc))


def main():
    T, k, K = 4096, 6, 1408
    numel = T * k
    x = torch.randn(numel, K, device="cuda", dtype=torch.bfloat16)
    idx = torch.randperm(numel, device="cuda").int()
    out = torch.empty(numel, device="cuda")
    nbytes = x.numel() * 2
    print(torch.cuda.get_device_name(), f"{nbytes / 1e6:.0f} MB of rows of {K * 2} bytes")
    for rows in (1, 4, 16):
        us = graph_replay_us(
            lambda rows=rows: read_whole[(numel // rows,)](x, idx, out, K, 2048, rows),
            calls_per_graph=10, replays=20)
        print(f"whole   rows/program {rows:3d}        {us:7.1f} us {nbytes / us / 1e3:6.0f} GB/s")
    for bk in (64, 128, 256):
        for stages in (3, 6):
            us = graph_replay_us(
                lambda bk=bk, st=stages: read_stripes[(numel // 64,)](x, idx, out, K, bk, st),
                calls_per_graph=10, replays=20)
            print(f"stripes BK {bk:3d} stages {stages}     {us:7.1f} us "
                  f"{nbytes / us / 1e3:6.0f} GB/s")


if __name__ == "__main__":
    main()
