"""Both all-to-all backends over several GPUs on the same inputs (launch: torchrun
--nproc-per-node=N tests/torchrun_a2a.py; tests/test_a2a.py::test_two_gpus_torchrun does).

Checks on every rank: every token reaches exactly the ranks owning its experts, payload bytes are
intact, rows past each source's count have ids -1, combine equals the sum of the weighted expert
outputs, and the flashinfer backend receives the same rows as the torch backend."""

import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from a2a_cases import (  # noqa: E402
    check_received,
    expected_combine,
    expert_output_of,
    rank_inputs,
    row_set,
)

from moe_ext import reference as ref  # noqa: E402
from moe_ext.comm import NvFp4AllToAll, flashinfer_importable  # noqa: E402

# (num_experts, top_k, hidden, max_tokens_per_rank, tokens of each rank)
CONFIGS = [(256, 8, 7168, 64, [64, 37, 50, 1]), (7, 4, 1024, 16, [5, 16, 0, 9])]


def validate(backend: str) -> None:
    """Run every check for one backend (the process group is initialized, one GPU per rank);
    the rows it receives are compared with the torch backend's."""
    rank, ep = dist.get_rank(), dist.get_world_size()
    gloo = dist.get_backend() == "gloo"
    device = "cpu" if gloo else "cuda"
    for num_experts, top_k, hidden, max_tokens, tokens in CONFIGS:
        a2as = {b: NvFp4AllToAll(None, num_experts, top_k, hidden, max_tokens, backend=b)
                for b in dict.fromkeys(["torch", backend])}
        for seed, runtime_max, from_bf16 in [(1, None, True), (2, max_tokens - 1, False)]:
            t_max = runtime_max or max_tokens
            counts = [min(tokens[r % len(tokens)], t_max) for r in range(ep)]
            every = [rank_inputs(r, ep, num_experts, top_k, hidden, counts[r], seed, device)
                     for r in range(ep)]
            mine = every[rank]
            expected = ref.a2a_dispatch(every, num_experts, ep, t_max)[rank]
            want = expected_combine(mine, num_experts, ep)
            rows = {}
            for name, a2a in a2as.items():
                if from_bf16:
                    kw = {"hidden_states": mine["hidden_states"],
                          "global_scale": mine["global_scale"]}
                else:
                    kw = {"x_fp4": mine["x_fp4"], "x_scales": mine["x_scales"]}
                recv = a2a.dispatch(mine["topk_ids"], mine["topk_weights"],
                                    runtime_max_tokens_per_rank=runtime_max, **kw)
                if not gloo:
                    torch.cuda.synchronize()
                check_received(recv, expected, exact_order=name == "torch")
                got = {"topk_ids": recv.topk_ids, "topk_weights": recv.topk_weights,
                       "x_fp4": recv.x_fp4, "x_scales": recv.x_scales}
                rows[name] = [row_set(got, s) for s in range(ep)]
                expert_out = expert_output_of(recv, rank, num_experts, ep, t_max, hidden).to(device)
                out = a2a.combine(expert_out).cpu()
                if name == "torch":
                    assert torch.equal(out, want), f"torch combine differs on rank {rank}"
                else:
                    torch.testing.assert_close(out, want, rtol=1e-2, atol=1e-2)
            assert rows[backend] == rows["torch"], "backends received different rows"
            print(f"rank {rank} {backend} E={num_experts} k={top_k} H={hidden} T_max={t_max} ok",
                  flush=True)
        for a2a in a2as.values():
            a2a.close()


def main():
    rank = int(os.environ["LOCAL_RANK"])
    if not torch.cuda.is_available():  # gloo on CPU: the torch backend only
        dist.init_process_group("gloo")
        validate("torch")
        print(f"torchrun_a2a: all checks passed (rank {rank}, backends ['torch'], gloo)")
        dist.destroy_process_group()
        return
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", device_id=torch.device("cuda", rank))
    backends = ["torch"]
    if flashinfer_importable() and os.environ.get("MOE_EXT_A2A_BACKENDS", "") != "torch":
        backends.append("flashinfer")
    for backend in backends:
        validate(backend)
    dist.barrier()
    print(f"torchrun_a2a: all checks passed (rank {rank}, backends {backends})", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
