"""torchrun --nproc-per-node=2 scripts/a2a_x2_run.py OUT_JSON: one process group for the whole
two-GPU validation, cheapest and least risky first: FlashInfer workspace probe, torch backend
checks and benchmark (H 2048 and 7168, E 64 and 256), then the flashinfer backend's checks
and benchmark. Each step prints
as soon as it is done, so a later step that stops still leaves the earlier results."""

import os
import sys

import torch
import torch.distributed as dist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests"), os.path.join(ROOT, "benchmarks")]

from bench_a2a import bench_backend, report  # noqa: E402
from probe_flashinfer_workspace import probe  # noqa: E402
from torchrun_a2a import validate  # noqa: E402

from moe_ext.comm import flashinfer_importable  # noqa: E402

SWEEP = {"hidden_sizes": [2048, 7168], "expert_counts": [64, 256], "token_counts": [16, 128, 512],
         "iters": 30, "warmup": 5}


def main():
    out = sys.argv[1]
    rank = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", device_id=torch.device("cuda", rank))
    rows = []
    backends = ["torch"] + (["flashinfer"] if flashinfer_importable() else [])
    for backend in backends:
        if backend == "flashinfer":
            probe()
        validate(backend)
        rows += bench_backend(backend, **SWEEP)
        if rank == 0:
            report(out, rows, {"ranks": dist.get_world_size(),
                               "mode": "torchrun, one process per GPU"})
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
