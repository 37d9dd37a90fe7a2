"""Command line of moe_ext: `python -m moe_ext [bench|check] ...` (also the `moe-ext` script).

bench: the LoRA work of one MoE layer (align + gate_up LoRA + down LoRA) over a sweep of token
counts, against the bytes floor and a plain PyTorch baseline. Without a subcommand it runs a
bench: the GPU sweep when a GPU and the CUDA kernels are there, a small CPU case otherwise.
check: every op against the reference on random data, pass/fail.
"""

import argparse
import json
import sys

import torch

import moe_ext

from .presets import PRESETS

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _progress(done: int, total: int, label: str) -> None:
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<24}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if moe_ext.cuda_available() else "cpu"
    if name == "cuda" and not moe_ext.cuda_available():
        raise SystemExit("--device cuda: no CUDA device, or moe_ext was built without CUDA kernels")
    return torch.device(name)


def cmd_bench(args) -> int:
    from .bench import bench_layer
    from .timing import copy_bandwidth_gbps, device_info

    device = _device(args.device)
    gpu = device.type == "cuda"
    tokens = args.tokens or ([1, 16, 64, 256, 1024, 4096] if gpu else [4, 32])
    rank = args.rank or (16 if gpu else 8)
    loras = args.loras or (4 if gpu else 2)
    dtype = DTYPES[args.dtype or ("bf16" if gpu else "fp32")]
    shape = PRESETS[args.model]
    if not gpu:  # a small CPU case: fewer experts keep the weights and the run small
        shape = shape._replace(experts=min(shape.experts, 16))
    info = device_info(device)
    bandwidth = copy_bandwidth_gbps(device)
    results = []
    for n, t in enumerate(tokens):
        _progress(n, len(tokens), f"T={t}")
        results.append(bench_layer(shape, t, rank, loras, dtype, device, bandwidth))
    _progress(len(tokens), len(tokens), "done")
    print(f"# {args.model} {tuple(shape)} (H, I, E, k), rank {rank}, {loras} adapters, "
          f"{str(dtype).replace('torch.', '')}, on {info['device']}, torch {info['torch']}")
    print(f"# layer LoRA = align + gate_up (2 slices) + down (routing weight); "
          f"floor = bytes / {bandwidth:.0f} GB/s copy bandwidth; "
          f"{'CUDA-graph replay' if gpu else 'wall-clock'} medians")
    print(f"{'T':>6} {'us':>10} {'floor us':>10} {'of floor':>9} {'vs PyTorch':>11}")
    for r in results:
        print(f"{r.tokens:>6} {r.us:>10.1f} {r.floor_us:>10.1f} {r.fraction_of_floor:>8.0%} "
              f"{r.speedup:>10.1f}x")
    if args.json:
        payload = {"info": info, "model": args.model, "shape": shape._asdict(), "rank": rank,
                   "loras": loras, "dtype": str(dtype), "bandwidth_gbps": bandwidth,
                   "rows": [dict(vars(r), fraction_of_floor=r.fraction_of_floor,
                                 speedup=r.speedup) for r in results]}
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)
    if args.plot:
        _plot(results, args, info)
    return 0


def _plot(results, args, info) -> None:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r.tokens for r in results]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(t, [r.us for r in results], "o-", label="moe_ext")
    ax.loglog(t, [r.baseline_us for r in results], "s--", label="PyTorch baseline")
    ax.loglog(t, [r.floor_us for r in results], "k:", label="bytes floor")
    ax.set_xlabel("tokens")
    ax.set_ylabel("us per layer (LoRA part)")
    ax.set_title(f"{args.model} on {info['device']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)


def cmd_check(args) -> int:
    from .check import run_checks

    devices = [torch.device("cpu")]
    if args.device in ("auto", "cuda") and moe_ext.cuda_available():
        devices.append(torch.device("cuda"))
    elif args.device == "cuda":
        raise SystemExit("--device cuda: no CUDA device, or moe_ext was built without CUDA kernels")
    failed = 0
    for device, name, ok, detail in run_checks(devices):
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {device:<5} {name:<52} {detail}")
    print(f"{'all checks passed' if not failed else f'{failed} check(s) failed'}")
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="moe-ext", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    bench = sub.add_parser("bench", help="time one MoE layer's LoRA work over token counts")
    bench.add_argument("--model", choices=sorted(PRESETS), default="qwen3-30b-a3b")
    bench.add_argument("--tokens", type=lambda s: [int(t) for t in s.split(",")],
                       help="comma-separated token counts (default: a sweep)")
    bench.add_argument("--rank", type=int, help="LoRA rank (default 16 on GPU, 8 on CPU)")
    bench.add_argument("--loras", type=int, help="adapter slots (default 4 on GPU, 2 on CPU)")
    bench.add_argument("--dtype", choices=sorted(DTYPES), help="default bf16 on GPU, fp32 on CPU")
    bench.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    bench.add_argument("--json", help="write the results to this JSON file")
    bench.add_argument("--plot", help="write a PNG plot of time vs floor to this file")
    check = sub.add_parser("check", help="compare every op with the reference on random data")
    check.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["bench", *(argv or [])])
    return cmd_check(args) if args.command == "check" else cmd_bench(args)


if __name__ == "__main__":
    sys.exit(main())
