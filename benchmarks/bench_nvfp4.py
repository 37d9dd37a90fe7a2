"""Bandwidth of nvfp4_quantize / nvfp4_dequantize / nvfp4_swizzle_scales on the GPU, against the
copy floor (bytes read + written / measured device copy bandwidth).

Each timed call reads a different input (a pool of inputs larger than L2 where memory allows),
calls are replayed from a CUDA graph, medians of many replays. Usage:
python benchmarks/bench_nvfp4.py [--quick] [--out FILE]
"""

import argparse
import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import copy_bandwidth_gbps, device_info, graph_replay_us, save_json  # noqa: E402

import moe_ext  # noqa: E402

L2_ROTATE_BYTES = 256 << 20  # input pool per case: several times the 50-60 MB L2


def pool(make, nbytes_each):
    count = max(1, min(32, L2_ROTATE_BYTES // max(nbytes_each, 1)))
    return [make() for _ in range(count)]


def rotating(fn, items):
    it = itertools.cycle(items)
    return lambda: fn(next(it))


def bench_case(m, k, bw):
    x_bytes = m * k * 2
    fp4_bytes, sf_bytes = m * k // 2, m * k // 16
    xs = pool(lambda: torch.randn(m, k, device="cuda", dtype=torch.bfloat16), x_bytes)
    gs = moe_ext.nvfp4_global_scale(xs[0])
    quant = [moe_ext.nvfp4_quantize(x, gs) for x in xs[: max(1, len(xs) // 2)]]
    cases = {
        "quantize": (rotating(lambda x: moe_ext.nvfp4_quantize(x, gs), xs),
                     x_bytes + fp4_bytes + sf_bytes),
        # + the zero fill of the swizzled scales' padding
        "quantize_swizzled": (rotating(lambda x: moe_ext.nvfp4_quantize(x, gs, swizzle=True), xs),
                              x_bytes + fp4_bytes + 2 * sf_bytes),
        "dequantize": (rotating(lambda q: moe_ext.nvfp4_dequantize(q[0], q[1], gs), quant),
                       fp4_bytes + sf_bytes + x_bytes),
        "swizzle_scales": (rotating(lambda q: moe_ext.nvfp4_swizzle_scales(q[1]), quant),
                           2 * sf_bytes),
    }
    rows = []
    for op, (fn, nbytes) in cases.items():
        us = graph_replay_us(fn)
        floor_us = nbytes / (bw * 1e9) * 1e6
        rows.append({"op": op, "M": m, "K": k, "us": us, "floor_us": floor_us,
                     "gbps": nbytes / (us * 1e-6) / 1e9})
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/nvfp4.json")
    args = parser.parse_args()
    info = device_info()
    bw = copy_bandwidth_gbps()
    info["copy_gbps"] = bw
    rows_list = [16, 512, 16384] if args.quick else [16, 128, 512, 2048, 8192, 32768]
    results = []
    for m, k in itertools.product(rows_list, [2048, 7168]):
        results += bench_case(m, k, bw)
        torch.cuda.empty_cache()
    save_json(args.out, {"info": info, "results": results})
    print(f"# {info['device']}, torch {info['torch']}, copy {bw:.0f} GB/s (read+write)")
    print(f"{'op':<18} {'M':>6} {'K':>5} {'us':>9} {'floor us':>9} {'GB/s':>7} {'% floor':>8}")
    for r in results:
        print(f"{r['op']:<18} {r['M']:>6} {r['K']:>5} {r['us']:>9.2f} {r['floor_us']:>9.2f} "
              f"{r['gbps']:>7.0f} {100 * r['floor_us'] / r['us']:>7.0f}%")


if __name__ == "__main__":
    main()
