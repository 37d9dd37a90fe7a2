"""Ceiling for the expand's output traffic: a plain read-modify-write of 64 x 128 bf16 tiles.

Rows are contiguous or scattered (sorted within each 64-row block, like the route ids of an
aligned block); tiles are visited tile-major (consecutive programs take consecutive blocks of
one column tile, as the expand does) or row-sweep. Needs Triton and a GPU.

    python benchmarks/probe_rmw_bandwidth.py
"""

import functools

import torch
import triton
import triton.language as tl

CASES = (("qwen3 down T4096", 32768, 2048), ("mixtral gate_up T4096", 8192, 28672))


@triton.jit
def rmw_tiles(out_ptr, rows_ptr, width, nblk, ntiles, ROW_SWEEP: tl.constexpr, BM: tl.constexpr,
              BN: tl.constexpr):
    pid = tl.program_id(0)
    if ROW_SWEEP:
        blk = pid // ntiles
        tile = pid % ntiles
    else:
        tile = pid // nblk
        blk = pid % nblk
    rows = tl.load(rows_ptr + blk * BM + tl.arange(0, BM)).to(tl.int64)
    ptrs = out_ptr + rows[:, None] * width + tile * BN + tl.arange(0, BN)[None, :]
    tl.store(ptrs, tl.load(ptrs) + 1.0)


def launch(out, rows, width, nblk, ntiles, sweep):
    rmw_tiles[(nblk * ntiles,)](out, rows, width, nblk, ntiles, sweep, 64, 128)


def main():
    print(torch.cuda.get_device_name())
    for name, numel, width in CASES:
        out = torch.randn(numel, width, device="cuda", dtype=torch.bfloat16)
        nblk, ntiles = numel // 64, width // 128
        scattered = torch.randperm(numel, device="cuda").view(nblk, 64).sort(dim=1).values
        row_sets = (("contiguous", torch.arange(numel, device="cuda", dtype=torch.int32)),
                    ("scattered", scattered.reshape(-1).int()))
        gbytes = 2 * out.numel() * out.element_size() / 1e9
        for rows_name, rows in row_sets:
            for sweep in (False, True):
                run = functools.partial(launch, out, rows, width, nblk, ntiles, sweep)
                ms = triton.testing.do_bench(run, warmup=10, rep=100)
                order = "row-sweep" if sweep else "tile-major"
                print(f"{name:22} {rows_name:10} {order:10} {ms * 1e3:8.1f} us "
                      f"{gbytes / ms:6.2f} TB/s")


if __name__ == "__main__":
    main()
