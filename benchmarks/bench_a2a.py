"""Dispatch and combine latency of moe_ext.comm.NvFp4AllToAll.

Under torchrun (one process per GPU): every available backend (torch over NCCL, flashinfer),
k=8, H x E x tokens-per-rank sweep; each iteration starts after a barrier, dispatch and combine
are timed with CUDA events on every rank, the table shows the median over iterations of the
slowest rank. Without torchrun (`--simulate`): FlashInfer's kernels with `ep` ranks simulated on
one GPU (all ranks' kernels run at once on one device: a kernel-cost figure, not a link figure).
Peer checks are off while timing (they add an all-gather and a host sync per dispatch).

  torchrun --nproc-per-node=2 benchmarks/bench_a2a.py --out FILE
  python benchmarks/bench_a2a.py --simulate --out FILE
"""

import argparse
import os
import statistics
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import device_info, save_json  # noqa: E402

from moe_ext.comm import NvFp4AllToAll, flashinfer_importable  # noqa: E402

TOP_K = 8


def make_tokens(t, num_experts, hidden, device):
    ids = torch.rand(t, num_experts, device=device).argsort(dim=1)[:, :TOP_K].int().contiguous()
    weights = torch.rand(t, TOP_K, device=device)
    x_fp4 = torch.randint(0, 256, (t, hidden // 2), dtype=torch.uint8, device=device)
    x_scales = torch.rand(t, hidden // 16, device=device).to(torch.float8_e4m3fn)
    return {"topk_ids": ids, "topk_weights": weights, "x_fp4": x_fp4, "x_scales": x_scales}


def time_distributed(a2a, tokens, ep, t_max, hidden, iters, warmup):
    expert_out = torch.randn(ep, t_max, hidden, device="cuda").bfloat16()
    events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
    dispatch_ms, combine_ms = [], []
    for it in range(warmup + iters):
        dist.barrier()
        torch.cuda.synchronize()
        events[0].record()
        a2a.dispatch(**tokens)
        events[1].record()
        a2a.combine(expert_out)
        events[2].record()
        torch.cuda.synchronize()
        if it >= warmup:
            dispatch_ms.append(events[0].elapsed_time(events[1]))
            combine_ms.append(events[1].elapsed_time(events[2]))
    mine = torch.tensor([dispatch_ms, combine_ms], device="cuda")
    every = [torch.empty_like(mine) for _ in range(ep)]
    dist.all_gather(every, mine)
    slowest = torch.stack(every).amax(0).cpu()  # per iteration, the slowest rank
    dispatch_us = statistics.median(slowest[0].tolist()) * 1e3
    return dispatch_us, statistics.median(slowest[1].tolist()) * 1e3


def bench_backend(backend, hidden_sizes, expert_counts, token_counts, iters, warmup):
    """Rows of the sweep for one backend (the NCCL group is initialized, one GPU per rank)."""
    rank, ep = dist.get_rank(), dist.get_world_size()
    rows = []
    for hidden in hidden_sizes:
        for num_experts in expert_counts:
            a2a = NvFp4AllToAll(None, num_experts, TOP_K, hidden, max(token_counts),
                                backend=backend, check_peers=False)
            for t in token_counts:
                torch.manual_seed(1000 * rank + t)
                tokens = make_tokens(t, num_experts, hidden, "cuda")
                tokens["runtime_max_tokens_per_rank"] = t
                d_us, c_us = time_distributed(a2a, tokens, ep, t, hidden, iters, warmup)
                rows.append({"backend": backend, "ep": ep, "H": hidden, "E": num_experts,
                             "k": TOP_K, "tokens_per_rank": t, "dispatch_us": d_us,
                             "combine_us": c_us})
            a2a.close()
    return rows


def run_distributed(args):
    rank = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", device_id=torch.device("cuda", rank))
    backends = ["torch"] + (["flashinfer"] if flashinfer_importable() else [])
    rows = []
    for backend in backends:
        rows += bench_backend(backend, args.hidden, args.experts, args.tokens, args.iters,
                              args.warmup)
    if rank == 0:
        report(args.out, rows, {"ranks": dist.get_world_size(),
                                "mode": "torchrun, one process per GPU"})
    dist.barrier()
    dist.destroy_process_group()


def run_simulated(args):
    from moe_ext.comm.simulate import SimulatedFlashInferRanks

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for ep in args.ep:
        for hidden in args.hidden:
            for num_experts in args.experts:
                # Every rank's kernels must be resident at once: keep tokens * ep within the SMs.
                tokens = [t for t in args.tokens if t * ep <= sms]
                if not tokens:
                    continue
                sim = SimulatedFlashInferRanks(ep, num_experts, TOP_K, hidden, max(tokens))
                for t in tokens:
                    per_rank = []
                    for _ in range(ep):
                        kw = make_tokens(t, num_experts, hidden, "cuda")
                        kw["runtime_max_tokens_per_rank"] = t
                        per_rank.append(kw)
                    outs = [torch.randn(ep, t, hidden, device="cuda").bfloat16()
                            for _ in range(ep)]
                    d_ms, c_ms = [], []
                    events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
                    for it in range(args.warmup + args.iters):
                        events[0].record()
                        sim.dispatch(per_rank)
                        events[1].record()
                        sim.combine(outs)
                        events[2].record()
                        torch.cuda.synchronize()
                        if it >= args.warmup:
                            d_ms.append(events[0].elapsed_time(events[1]))
                            c_ms.append(events[1].elapsed_time(events[2]))
                    rows.append({"backend": "flashinfer-simulated", "ep": ep, "H": hidden,
                                 "E": num_experts, "k": TOP_K, "tokens_per_rank": t,
                                 "dispatch_us": statistics.median(d_ms) * 1e3,
                                 "combine_us": statistics.median(c_ms) * 1e3})
                sim.close()
    report(args.out, rows, {"mode": "ranks simulated on one GPU, one stream each"})


def report(out, rows, extra):
    info = {**device_info(), **extra}
    save_json(out, {"info": info, "results": rows})
    print(f"# {info['device']} x{torch.cuda.device_count()}, torch {info['torch']}, {extra}")
    print(f"{'backend':<21} {'ep':>2} {'H':>5} {'E':>4} {'T/rank':>6} {'dispatch us':>12} "
          f"{'combine us':>11}")
    for r in rows:
        print(f"{r['backend']:<21} {r['ep']:>2} {r['H']:>5} {r['E']:>4} {r['tokens_per_rank']:>6} "
              f"{r['dispatch_us']:>12.1f} {r['combine_us']:>11.1f}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--simulate", action="store_true", help="one GPU, simulated ranks")
    parser.add_argument("--ep", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--hidden", type=int, nargs="+", default=[2048, 7168])
    parser.add_argument("--experts", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 128, 512])
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/a2a.json")
    args = parser.parse_args()
    if args.simulate:
        run_simulated(args)
    else:
        run_distributed(args)


if __name__ == "__main__":
    main()
