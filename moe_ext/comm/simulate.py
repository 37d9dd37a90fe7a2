"""Several FlashInfer ranks in one process on one GPU, for tests and benchmarks.

One `[ep, size_per_rank]` workspace on the GPU stands in for the peer-mapped one; each rank
dispatches and combines on its own CUDA stream, so all of them run at the same time (their
kernels wait for each other). Each step (plan, send, finish) runs for every rank before the next:
under CUDA's lazy module loading, launching a kernel for the first time waits for the kernels
running on the device, so a first launch between two ranks' sends would never return while the
first rank's send spins. Keep tokens * ep within the GPU's SM count.
"""

import torch

from ._layout import A2AConfig, DispatchResult, check_config
from .alltoall import NvFp4AllToAll
from .flashinfer_backend import (
    FlashInferAllToAll,
    _fi,
    unsupported_reason,
    workspace_size_per_rank,
)


class SimulatedFlashInferRanks:
    def __init__(self, ep, num_experts, top_k, hidden_size, max_tokens_per_rank, device="cuda"):
        check_config(num_experts, top_k, hidden_size, max_tokens_per_rank, ep)
        unsupported = unsupported_reason(top_k, ep)
        if unsupported:
            raise ValueError(unsupported)
        device = torch.device(device)
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        cfgs = [
            A2AConfig(ep, r, num_experts, top_k, hidden_size, max_tokens_per_rank, device)
            for r in range(ep)
        ]
        self.workspace = torch.zeros(
            ep, workspace_size_per_rank(cfgs[0]), dtype=torch.uint8, device=device
        )
        fi = _fi()
        self.ranks = [
            NvFp4AllToAll._with_impl(
                cfg,
                FlashInferAllToAll(
                    cfg, self.workspace,
                    fi.moe_a2a_initialize(self.workspace, cfg.rank, ep, max_tokens_per_rank),
                ),
                "flashinfer",
            )
            for cfg in cfgs
        ]
        self.streams = [torch.cuda.Stream(device=device) for _ in range(ep)]

    def _run(self, fn, args):
        """fn(rank, arg) for every rank, each on its own stream, all at once."""
        current = torch.cuda.current_stream()
        results = []
        for a2a, stream, arg in zip(self.ranks, self.streams, args):
            stream.wait_stream(current)
            with torch.cuda.stream(stream):
                results.append(fn(a2a, arg))
        for stream in self.streams:
            current.wait_stream(stream)
        return results

    def dispatch(self, per_rank: list) -> list[DispatchResult]:
        """per_rank[r]: keyword arguments of NvFp4AllToAll.dispatch for rank r. Every rank's
        arguments are checked (T_max equal on all) before anything is launched."""
        if len(per_rank) != len(self.ranks):
            raise ValueError(f"need arguments for {len(self.ranks)} ranks, got {len(per_rank)}")
        prepared = []
        for a2a, kw in zip(self.ranks, per_rank):
            kw = dict(kw)
            t_max, _, _ = a2a._prepare(
                kw["topk_ids"], kw["topk_weights"], kw.get("hidden_states"),
                kw.get("global_scale"), kw.get("x_fp4"), kw.get("x_scales"),
                kw.get("runtime_max_tokens_per_rank"),
            )
            kw["t_max"] = t_max
            kw.pop("runtime_max_tokens_per_rank", None)
            prepared.append(kw)
        t_maxes = [kw["t_max"] for kw in prepared]
        if len(set(t_maxes)) != 1:
            raise ValueError(
                f"runtime_max_tokens_per_rank must be the same on every rank, got {t_maxes}"
            )
        # Step by step for every rank (see FlashInferAllToAll): nothing is launched between the
        # ranks' send kernels, which wait for each other.
        def plan(a2a, kw):
            x_fp4, x_scales = a2a._payload(
                kw.get("hidden_states"), kw.get("global_scale"), kw.get("x_fp4"),
                kw.get("x_scales"),
            )
            return a2a._impl.plan_dispatch(kw["topk_ids"], kw["topk_weights"], x_fp4, x_scales)

        plans = self._run(plan, prepared)
        recvs = self._run(lambda a2a, p: a2a._impl.send_dispatch(p, t_maxes[0]), plans)
        results = self._run(lambda a2a, recv: a2a._impl.finish_dispatch(recv), recvs)
        for a2a, kw in zip(self.ranks, prepared):
            a2a._pending = (kw["topk_ids"].shape[0], t_maxes[0])
        return results

    def combine(self, expert_outputs: list) -> list[torch.Tensor]:
        pending = [a2a._check_combine(eo, None) for a2a, eo in zip(self.ranks, expert_outputs)]
        outputs = [eo.contiguous() for eo in expert_outputs]
        outs = self._run(
            lambda a2a, arg: a2a._impl.send_combine(arg[0], None, *arg[1]),
            list(zip(outputs, pending)),
        )
        for a2a in self.ranks:
            a2a._pending = None
        return self._run(lambda a2a, out: a2a._impl.finish_combine(out), outs)

    def close(self):
        for a2a in self.ranks:
            a2a.close()
        self.workspace = None
