"""Benchmark of moe_lora_align_block_size / moe_align_block_size on the GPU (graph replay).

Sweeps T x (E, k) presets x adapter slots L at block size 64, plus the setup of the published
comparison figures (L=4, block size by T). Every output row is written on every call, and routes
keep ascending order. Usage: python benchmarks/bench_moe_align.py [--quick] [--out FILE]
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import device_info, empty_kernel_us, graph_replay_us, save_json  # noqa: E402

import moe_ext  # noqa: E402
from moe_ext._shapes import padded_length  # noqa: E402

PRESETS = {"qwen3-30b-a3b": (128, 8), "deepseek-v2-lite": (64, 6), "gpt-oss-20b": (32, 4)}
COMPARISON = {"qwen3-30b-a3b": (128, 8), "olmoe-1b-7b": (64, 8), "deepseek-v2-lite": (64, 6),
              "gpt-oss-20b": (32, 4), "mixtral-8x7b": (8, 2)}
COMPARISON_BS = {16: 16, 64: 32, 256: 64, 1024: 128, 4096: 128}


def routing(T, k, E, L):
    ids = torch.rand(T, E, device="cuda").argsort(dim=1)[:, :k].int().contiguous()
    slots = torch.arange(T, device="cuda", dtype=torch.int32) % L  # spread over the slots
    return ids, slots[torch.randperm(T, device="cuda")]


def time_lora_align(T, E, k, L, BS):
    ids, slots = routing(T, k, E, L)
    p = padded_length(T * k, E, BS)
    outs = [torch.empty(L, p, dtype=torch.int32, device="cuda"),
            torch.empty(L, p // BS, dtype=torch.int32, device="cuda"),
            torch.empty(L, dtype=torch.int32, device="cuda")]
    return graph_replay_us(
        lambda: moe_ext.moe_lora_align_block_size_out(ids, slots, E, BS, L, *outs)
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer sizes")
    parser.add_argument("--out", default="benchmarks/results/moe_align_h100.json")
    args = parser.parse_args()
    info = device_info()
    info["empty_kernel_us"] = empty_kernel_us()
    rows = []
    tokens = [1, 16, 256, 4096] if args.quick else [1, 16, 64, 256, 1024, 4096, 16384]
    for name, (E, k) in PRESETS.items():
        for L in (1, 4, 16):
            for T in tokens:
                us = time_lora_align(T, E, k, L, 64)
                rows.append({"sweep": "bs64", "model": name, "E": E, "k": k, "L": L, "T": T,
                             "block_size": 64, "us": us})
    for name, (E, k) in COMPARISON.items():
        for T, BS in COMPARISON_BS.items():
            us = time_lora_align(T, E, k, 4, BS)
            rows.append({"sweep": "comparison", "model": name, "E": E, "k": k, "L": 4, "T": T,
                         "block_size": BS, "us": us})
    save_json(args.out, {"info": info, "rows": rows})
    print(f"# {info['device']}  torch {info['torch']}  "
          f"empty kernel {info['empty_kernel_us']:.2f} us per call")
    print(f"{'sweep':<11}{'model':<18}{'L':>3}{'T':>7}{'BS':>5}{'us':>9}")
    for r in rows:
        print(f"{r['sweep']:<11}{r['model']:<18}{r['L']:>3}{r['T']:>7}{r['block_size']:>5}"
              f"{r['us']:>9.2f}")


if __name__ == "__main__":
    main()
