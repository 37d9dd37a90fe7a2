"""Benchmark of fused_moe_lora on the GPU: CUDA-graph-replay medians against the bytes floor.

For each preset (H, I, E, k), T, rank and GEMM (gate_up: 2 slices, input [T, H]; down: 1 slice,
input [T*k, I], routing weight), L = 4 adapters with tokens spread uniformly. Weights are kept
cold in L2 by rotating over enough weight copies that >= 3x L2 (150 MB) of touched weights pass
between two uses of one copy. floor = (LoRA bytes of the touched (adapter, expert) pairs +
activations read + output read and written) / copy bandwidth measured in the same run. The
baseline is plain PyTorch per (adapter, expert) group (gather, two matmuls, index_add), captured
in a CUDA graph too. Writes JSON and a PNG (time vs floor) under benchmarks/results/.

    python benchmarks/bench_moe_lora_gemm.py [--presets qwen3_30b_a3b,...] [--tokens 1,16,...]
"""

import argparse
import json
import math
import os
import statistics
import sys
from types import SimpleNamespace

import torch

import moe_ext
from moe_ext import reference
from moe_ext.layer import choose_block_size
from moe_ext.presets import PRESETS as MODEL_PRESETS
from moe_ext.timing import copy_bandwidth_gbps

# (hidden H, expert intermediate I, experts E, top-k), keyed as in the published figures
PRESETS = {name.replace("-", "_"): tuple(shape) for name, shape in MODEL_PRESETS.items()}
L = 4
COLD_BYTES = 150e6
POOL_BYTES = 16e9
HERE = os.path.dirname(os.path.abspath(__file__))


def graph_time_us(fn, calls: int, replays: int) -> float:
    """Median over replays of (graph time / calls), the graph holding `calls` calls of fn(i)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn(0)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i)
    graph.replay()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / calls)
    del graph
    return statistics.median(times)


def routing(T, k, E, gen):
    """Random distinct top-k experts per token; tokens spread uniformly over the L adapters."""
    topk_ids = torch.rand(T, E, generator=gen).topk(k, dim=1).indices.int()
    mapping = (torch.arange(T) % L).int()
    return topk_ids, mapping


def align(topk_ids, mapping, E, block_size):
    if torch._C._dispatch_has_kernel_for_dispatch_key("moe_ext::moe_lora_align_block_size", "CUDA"):
        out = torch.ops.moe_ext.moe_lora_align_block_size(
            topk_ids.cuda(), mapping.cuda(), E, block_size, L
        )
    else:
        out = reference.moe_lora_align_block_size(topk_ids, mapping, E, block_size, L)
    return [t.cuda() for t in out]


def setup_case(preset, op, T, r, bw, gen, pools, block_size=None):
    """Inputs of one case, its bytes floor and `call(i)`: fused_moe_lora on weight copy i."""
    H, inter_size, E, k = PRESETS[preset]
    S, K, N = (2, H, inter_size) if op == "gate_up" else (1, inter_size, H)
    numel = T * k
    dtype = torch.bfloat16
    topk_ids, mapping = routing(T, k, E, gen)
    bs = block_size or choose_block_size(numel, E, L)
    sorted_ids, expert_ids, post_pad = align(topk_ids, mapping, E, bs)
    pairs = len({(int(mapping[t]), int(e)) for t in range(T) for e in topk_ids[t].tolist()})
    pair_bytes = S * (r * K + N * r) * 2
    x = torch.randn(T if op == "gate_up" else numel, K, device="cuda", dtype=dtype)
    out = torch.randn(T, k, S * N, device="cuda", dtype=dtype)
    weights = torch.rand(T, k, device="cuda")
    floor_bytes = pairs * pair_bytes + x.numel() * 2 + 2 * out.numel() * 2

    a_pool, b_pool = pools
    copies = a_pool[0].shape[0]
    need = min(copies, max(2, math.ceil(COLD_BYTES / (pairs * pair_bytes)) + 1))
    mul = op == "down"

    def call(i):
        c = i % need
        moe_ext.fused_moe_lora(
            out, x, [a[c] for a in a_pool], [b[c] for b in b_pool], weights, sorted_ids,
            expert_ids, post_pad, k, mul, True, 0,
        )

    return SimpleNamespace(S=S, N=N, k=k, E=E, numel=numel, dtype=dtype, topk_ids=topk_ids,
                           mapping=mapping, block_size=bs, pairs=pairs, x=x, out=out,
                           align=(sorted_ids, expert_ids, post_pad),
                           weights=weights, floor_us=floor_bytes / bw * 1e6, need=need, mul=mul,
                           call=call)


def bench_case(preset, op, T, r, bw, gen, pools, baseline=True, block_size=None):
    cs = setup_case(preset, op, T, r, bw, gen, pools, block_size)
    S, N, k, E, numel, dtype = cs.S, cs.N, cs.k, cs.E, cs.numel, cs.dtype
    topk_ids, mapping, x, out, weights = cs.topk_ids, cs.mapping, cs.x, cs.out, cs.weights
    need, mul, floor_us = cs.need, cs.mul, cs.floor_us
    a_pool, b_pool = pools
    us = graph_time_us(cs.call, calls=max(need, 20), replays=7 if T < 1024 else 5)
    row = dict(preset=preset, op=op, T=T, rank=r, block_size=cs.block_size, pairs=cs.pairs, us=us,
               floor_us=floor_us, floor_ratio=us / floor_us, weight_copies=need,
               torch_us=float("nan"), speedup_vs_torch=float("nan"))
    if not baseline:
        return row

    # Baseline: plain PyTorch per (adapter, expert) group, index lists built ahead (host side).
    route_slot = mapping.repeat_interleave(k)
    route_exp = topk_ids.reshape(-1).long()
    groups = []
    for slot in range(L):
        for e in range(E):
            routes = torch.nonzero((route_slot == slot) & (route_exp == e)).flatten()
            if routes.numel():
                rows = routes if op == "down" else routes // k
                groups.append((slot, e, routes.cuda(), rows.cuda()))
    out2 = out.view(numel, S * N)
    wflat = weights.reshape(-1)

    def baseline(i):
        c = i % need
        for slot, e, routes, rows in groups:
            xs = x.index_select(0, rows)
            for s in range(S):
                d = (xs @ a_pool[s][c, slot, e].T) @ b_pool[s][c, slot, e].T
                if mul:
                    d = d * wflat[routes].unsqueeze(1).to(dtype)
                out2[:, s * N : (s + 1) * N].index_add_(0, routes, d)

    base_calls = 2 if len(groups) > 64 else 8
    row["torch_us"] = graph_time_us(baseline, calls=base_calls, replays=3)
    row["speedup_vs_torch"] = row["torch_us"] / us
    return row


def make_pools(preset, op, r):
    H, inter_size, E, k = PRESETS[preset]
    S, K, N = (2, H, inter_size) if op == "gate_up" else (1, inter_size, H)
    copy_bytes = S * L * E * (r * K + N * r) * 2
    copies = int(max(2, min(200, POOL_BYTES // copy_bytes)))
    a = [torch.randn(copies, L, E, r, K, device="cuda", dtype=torch.bfloat16).mul_(K**-0.5)
         for _ in range(S)]
    b = [torch.randn(copies, L, E, N, r, device="cuda", dtype=torch.bfloat16).mul_(r**-0.5)
         for _ in range(S)]
    return a, b


def add_case_arguments(parser, tokens="1,16,64,256,1024,4096"):
    """The case grid options (comma lists) shared by the benchmark and its probes."""
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--tokens", default=tokens)
    parser.add_argument("--ranks", default="16,64")
    parser.add_argument("--ops", default="gate_up,down")


def main():
    parser = argparse.ArgumentParser()
    add_case_arguments(parser)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--no-baseline", action="store_true", help="skip the PyTorch baseline")
    parser.add_argument("--block-size", type=int, default=None,
                        help="alignment block size for every case (default: choose_block_size)")
    args = parser.parse_args()
    anchors = json.load(open(os.path.join(HERE, "vllm_h100_anchors.json")))["cases"]
    device = torch.cuda.get_device_name()
    bw = copy_bandwidth_gbps(torch.device("cuda")) * 1e9  # bytes/s
    print(f"device {device}, torch {torch.__version__}, copy bandwidth {bw / 1e9:.0f} GB/s",
          flush=True)
    gen = torch.Generator().manual_seed(0)
    rows = []
    header = (f"{'preset':18} {'op':7} {'T':>5} {'r':>3} {'us':>8} {'floor':>7} {'x fl':>5} "
              f"{'vllm':>7} {'x vllm':>6} {'torch':>9} {'x torch':>7}")
    print(header, flush=True)
    for preset in args.presets.split(","):
        for op in args.ops.split(","):
            for r in [int(v) for v in args.ranks.split(",")]:
                pools = make_pools(preset, op, r)
                for T in [int(v) for v in args.tokens.split(",")]:
                    row = bench_case(preset, op, T, r, bw, gen, pools, not args.no_baseline,
                                     args.block_size)
                    ref = anchors.get(f"{preset}/{op}/T{T}/r{r}")
                    row["vllm_us"] = ref["vllm_us"] if ref else None
                    row["speedup_vs_vllm"] = ref["vllm_us"] / row["us"] if ref else None
                    rows.append(row)
                    v = f"{row['vllm_us']:7.1f} {row['speedup_vs_vllm']:6.2f}" if ref else " " * 14
                    print(f"{preset:18} {op:7} {T:5d} {r:3d} {row['us']:8.2f} "
                          f"{row['floor_us']:7.2f} {row['floor_ratio']:5.2f} {v} "
                          f"{row['torch_us']:9.1f} {row['speedup_vs_torch']:7.1f}", flush=True)
                del pools
                torch.cuda.empty_cache()
    summarize(rows)
    save(rows, args.out, device, bw)


def geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def summarize(rows):
    with_ref = [r for r in rows if r["vllm_us"]]
    big = [r for r in rows if r["T"] >= 16]
    t1 = [r for r in rows if r["T"] == 1]
    print(f"geomean speed-up vs vLLM: {geomean([r['speedup_vs_vllm'] for r in with_ref]):.2f}x "
          f"(min {min((r['speedup_vs_vllm'] for r in with_ref), default=float('nan')):.2f}x, "
          f"{sum(r['speedup_vs_vllm'] > 1 for r in with_ref)}/{len(with_ref)} faster)")
    print(f"T>=16 ratio to floor: geomean {geomean([r['floor_ratio'] for r in big]):.2f}, "
          f"max {max((r['floor_ratio'] for r in big), default=float('nan')):.2f}")
    if t1:
        worst = max(t1, key=lambda r: r["us"] if r["preset"] != "mixtral_8x7b" else 0)
        print(f"T=1: max {worst['us']:.2f} us (non-Mixtral, {worst['preset']} {worst['op']}), "
              f"Mixtral max {max(r['us'] for r in t1 if r['preset'] == 'mixtral_8x7b'):.2f} us"
              if any(r["preset"] == "mixtral_8x7b" for r in t1) else "")
    print(f"geomean speed-up vs torch baseline: "
          f"{geomean([r['speedup_vs_torch'] for r in rows]):.1f}x")


def save(rows, out_dir, device, bw):
    os.makedirs(out_dir, exist_ok=True)
    tag = device.replace(" ", "_").replace("/", "_")
    meta = dict(device=device, torch=torch.__version__, copy_bandwidth_gbs=bw / 1e9,
                moe_ext=moe_ext.__version__, rows=rows)
    path = os.path.join(out_dir, f"bench_moe_lora_gemm_{tag}.json")
    with open(path, "w") as f:
        json.dump(meta, f, indent=1)
    print(f"saved {path}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7, 6))
    for op, marker in (("gate_up", "o"), ("down", "s")):
        pts = [r for r in rows if r["op"] == op]
        ax.scatter([r["floor_us"] for r in pts], [r["us"] for r in pts], marker=marker,
                   c=[math.log2(r["T"]) for r in pts], cmap="viridis", label=op)
        vpts = [r for r in pts if r["vllm_us"]]
        ax.scatter([r["floor_us"] for r in vpts], [r["vllm_us"] for r in vpts], marker=marker,
                   facecolors="none", edgecolors="red", s=20, alpha=0.5)
    lim = [0.1, 1000]
    ax.plot(lim, lim, "k-", lw=0.8, label="floor")
    ax.plot(lim, [1.5 * v for v in lim], "k--", lw=0.8, label="1.5x floor")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("bytes floor (us)")
    ax.set_ylabel("graph-replay median (us); red rings: vLLM 0.33 figure")
    ax.set_title(f"fused_moe_lora, bf16, L=4 — {device}")
    ax.legend()
    png = os.path.join(out_dir, f"bench_moe_lora_gemm_{tag}.png")
    fig.savefig(png, dpi=120, bbox_inches="tight")
    print(f"saved {png}")


if __name__ == "__main__":
    main()
