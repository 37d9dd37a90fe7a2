"""How fast can the prefill shrink read its gathered x rows? Bandwidth of the pieces, measured
the way the GEMM benchmark measures (CUDA-graph replay medians):
  copy      x copied whole (contiguous read + write);
  gather    x rows gathered in the alignment's order (torch.index_select: read + write);
  shrink    fused_moe_lora_shrink alone (gathered read of the same rows, rank vectors out);
  expand    fused_moe_lora_expand alone (output rows read and written once per column tile).
Bandwidth counts the bytes each one must move (x or output rows; weights are small here).

    python benchmarks/probe_gather.py
"""

import torch
from bench_moe_lora_gemm import PRESETS, L, align, routing

import moe_ext
from moe_ext.layer import choose_block_size
from moe_ext.timing import graph_replay_us

CASES = (("deepseek_v2_lite", 4096), ("qwen3_30b_a3b", 4096), ("gpt_oss_20b", 4096),
         ("mixtral_8x7b", 1024))


def probe(preset, T, r=16):
    H, inter_size, E, k = PRESETS[preset]
    K, N, numel = inter_size, H, T * k
    topk_ids, mapping = routing(T, k, E, torch.Generator().manual_seed(0))
    bs = choose_block_size(numel, E, L)
    sorted_ids, expert_ids, post_pad = align(topk_ids, mapping, E, bs)
    x = torch.randn(numel, K, device="cuda", dtype=torch.bfloat16)
    a = [torch.randn(L, E, r, K, device="cuda", dtype=torch.bfloat16) * K**-0.5]
    b = [torch.randn(L, E, N, r, device="cuda", dtype=torch.bfloat16) * r**-0.5]
    inter = torch.empty(1, numel, r, device="cuda", dtype=torch.bfloat16)
    out = torch.randn(numel, N, device="cuda", dtype=torch.bfloat16)
    weights = torch.rand(T, k, device="cuda")
    order = sorted_ids.flatten()
    order = order[order < numel].long()
    x_copy, x_gathered = torch.empty_like(x), torch.empty_like(x)
    x_bytes, out_bytes = x.numel() * 2, out.numel() * 2
    rows = {
        "copy": (lambda: x_copy.copy_(x), 2 * x_bytes),
        "gather": (lambda: torch.index_select(x, 0, order, out=x_gathered), 2 * x_bytes),
        "shrink": (lambda: moe_ext.fused_moe_lora_shrink(
            inter, x, a, sorted_ids, expert_ids, post_pad, k), x_bytes),
        "expand": (lambda: moe_ext.fused_moe_lora_expand(
            out, inter, b, weights, sorted_ids, expert_ids, post_pad, k, True, True),
            2 * out_bytes),
    }
    for name, (fn, nbytes) in rows.items():
        us = graph_replay_us(fn, calls_per_graph=10, replays=20)
        print(f"{preset:18} T={T:5d} BS={bs:3d} {name:7} {us:8.1f} us "
              f"{nbytes / us / 1e3:7.0f} GB/s", flush=True)


def main():
    print(torch.cuda.get_device_name())
    for preset, T in CASES:
        probe(preset, T)


if __name__ == "__main__":
    main()
