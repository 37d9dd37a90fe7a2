"""`NvFp4AllToAll`: expert-parallel dispatch / combine of NVFP4 tokens over a process group.

Every rank must call `dispatch` and then `combine` once per step, with the same T_max and the
same global scale. Misuse is a Python error raised before anything is launched: FlashInfer's
kernels wait for their peers (about 300 s, then trap), and NCCL collectives with mismatched sizes
hang. With `check_peers` the ranks first share whether their own checks passed, so a misuse on one
rank raises on every rank instead of leaving the others waiting.
"""

import math
from typing import Optional

import torch
import torch.distributed as dist

from ..ops.nvfp4 import nvfp4_quantize
from ._layout import (
    A2AConfig,
    DispatchResult,
    check_combine_args,
    check_config,
    check_dispatch_args,
)
from .flashinfer_backend import (
    FLASHINFER_VERSION,
    FlashInferAllToAll,
    flashinfer_importable,
    flashinfer_unavailable,
    unsupported_reason,
)
from .torch_backend import TorchAllToAll

BACKENDS = ("auto", "flashinfer", "torch")
_DISPATCH, _COMBINE = 1, 2  # the step each rank is at, compared by the peer check


def _group_device(group) -> torch.device:
    if dist.get_backend(group) == "gloo":
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def _choose_backend(backend: str, device: torch.device, group, top_k: int, ep: int) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    unsupported = unsupported_reason(top_k, ep)
    if backend == "flashinfer":
        if device.type != "cuda":
            raise ValueError("backend='flashinfer' needs a CUDA (NCCL) process group")
        if unsupported:
            raise ValueError(f"backend='flashinfer': {unsupported}")
        missing = flashinfer_unavailable()
        if missing:
            raise ImportError(
                f"backend='flashinfer' needs flashinfer-python=={FLASHINFER_VERSION} "
                f"(pip install 'moe_ext[a2a]'): {missing}"
            )
        return backend
    if backend == "torch":
        return backend
    local = device.type == "cuda" and not unsupported and flashinfer_importable()
    votes = [None] * dist.get_world_size(group)
    dist.all_gather_object(votes, local, group=group)  # every rank must pick the same backend
    return "flashinfer" if all(votes) else "torch"


class NvFp4AllToAll:
    """Dispatch NVFP4 tokens to the ranks owning their experts, and combine expert outputs.

    `group` (None = default group) holds `ep` ranks; experts are split contiguously (the first
    `E % ep` ranks own one more). `backend`: "flashinfer" (one-sided NVLink kernels, CUDA),
    "torch" (all_to_all_single: NCCL or gloo) or "auto" (flashinfer when importable on a CUDA
    group). `check_peers=True` all-gathers, before each dispatch and each combine, the step,
    whether this rank's own argument checks passed, T_max and the global scale (one small
    collective and a host sync), so a misuse or mismatch on any rank raises on every rank
    instead of hanging; turn it off for CUDA-graph capture.
    """

    def __init__(
        self,
        group,
        num_experts: int,
        top_k: int,
        hidden_size: int,
        max_tokens_per_rank: int,
        backend: str = "auto",
        check_peers: bool = True,
    ):
        ep = dist.get_world_size(group)
        check_config(num_experts, top_k, hidden_size, max_tokens_per_rank, ep)
        device = _group_device(group)
        self.group = group
        self.cfg = A2AConfig(
            ep, dist.get_rank(group), num_experts, top_k, hidden_size, max_tokens_per_rank, device
        )
        self.backend = _choose_backend(backend, device, group, top_k, ep)
        self.check_peers = check_peers
        if self.backend == "flashinfer":
            self._impl = FlashInferAllToAll.create(self.cfg, group)
        else:
            self._impl = TorchAllToAll(self.cfg, group)
        self._pending = None  # (num_tokens, T_max) between dispatch and combine

    @classmethod
    def _with_impl(cls, cfg: A2AConfig, impl, backend: str) -> "NvFp4AllToAll":
        """An instance around an existing backend object (ranks simulated in one process)."""
        self = cls.__new__(cls)
        self.group, self.cfg, self.backend, self.check_peers = None, cfg, backend, False
        self._impl, self._pending = impl, None
        return self

    @property
    def ep(self) -> int:
        return self.cfg.ep

    @property
    def rank(self) -> int:
        return self.cfg.rank

    def _prepare(self, topk_ids, topk_weights, hidden_states, global_scale, x_fp4, x_scales,
                 runtime_max_tokens_per_rank):
        """Validate (no communication, no launch); returns (T_max, x_fp4, x_scales)."""
        if self._impl is None:
            raise RuntimeError("this NvFp4AllToAll was closed")
        if self._pending is not None:
            raise RuntimeError("dispatch called twice without combine in between")
        t_max = check_dispatch_args(
            self.cfg, topk_ids, topk_weights, hidden_states, global_scale, x_fp4, x_scales,
            runtime_max_tokens_per_rank,
        )
        return t_max, x_fp4, x_scales

    @staticmethod
    def _payload(hidden_states, global_scale, x_fp4, x_scales):
        if hidden_states is not None:
            return nvfp4_quantize(hidden_states, global_scale)
        return x_fp4, x_scales

    def _launch(self, topk_ids, topk_weights, hidden_states, global_scale, x_fp4, x_scales,
                t_max) -> DispatchResult:
        x_fp4, x_scales = self._payload(hidden_states, global_scale, x_fp4, x_scales)
        result = self._impl.dispatch(topk_ids, topk_weights, x_fp4, x_scales, t_max)
        self._pending = (topk_ids.shape[0], t_max)
        return result

    def _check_peers(self, step: int, error: Optional[Exception], t_max: int = 0,
                     global_scale: Optional[torch.Tensor] = None):
        """Share (step, own checks passed, T_max, global scale) with every rank; raise `error`
        here, and on the other ranks an error naming this one."""
        mine = torch.tensor(
            [step, error is None, t_max, math.nan], dtype=torch.float64, device=self.cfg.device
        )
        if global_scale is not None and error is None:
            mine[3] = global_scale.reshape(-1)[0]
        every = torch.empty(self.cfg.ep * 4, dtype=torch.float64, device=self.cfg.device)
        dist.all_gather_into_tensor(every, mine, group=self.group)
        if error is not None:
            raise error
        rows = every.view(self.cfg.ep, 4).tolist()
        steps = ["dispatch" if row[0] == _DISPATCH else "combine" for row in rows]
        failed = [r for r, row in enumerate(rows) if not row[1]]
        if failed:
            raise RuntimeError(
                f"{steps[failed[0]]} failed its argument checks on rank(s) {failed} (the error is "
                f"raised there); no rank launched anything"
            )
        if len(set(steps)) != 1:
            raise RuntimeError(
                f"ranks called different steps {steps}: every rank must call dispatch, then "
                f"combine"
            )
        t_maxes = [int(row[2]) for row in rows]
        if len(set(t_maxes)) != 1:
            raise ValueError(
                f"runtime_max_tokens_per_rank must be the same on every rank, got {t_maxes}"
            )
        scales = {row[3] for row in rows if not math.isnan(row[3])}
        if len(scales) > 1:
            raise ValueError(
                f"global_scale must be the same on every rank (the received rows carry no "
                f"global scale), got {[row[3] for row in rows]}"
            )

    def dispatch(
        self,
        topk_ids: torch.Tensor,
        topk_weights: torch.Tensor,
        hidden_states: Optional[torch.Tensor] = None,
        global_scale: Optional[torch.Tensor] = None,
        x_fp4: Optional[torch.Tensor] = None,
        x_scales: Optional[torch.Tensor] = None,
        runtime_max_tokens_per_rank: Optional[int] = None,
    ) -> DispatchResult:
        """Send this rank's tokens to the ranks owning their experts.

        `topk_ids` [T, k] int32 (global ids; ids outside [0, E) route nowhere), `topk_weights`
        [T, k] float32, and either `hidden_states` [T, H] bf16 with `global_scale` [1] float32
        (quantized here with `nvfp4_quantize`) or `x_fp4` [T, H/2] uint8 with `x_scales`
        [T, H/16] float8_e4m3fn. T <= T_max = `runtime_max_tokens_per_rank` (default
        `max_tokens_per_rank`). `global_scale` must be the same on every rank: the received rows
        carry none. Returns the received rows, each field `[ep, T_max, *]`; with the flashinfer
        backend they are views of the workspace, valid until the next dispatch.
        """
        try:
            t_max, x_fp4, x_scales = self._prepare(
                topk_ids, topk_weights, hidden_states, global_scale, x_fp4, x_scales,
                runtime_max_tokens_per_rank,
            )
        except (TypeError, ValueError, RuntimeError) as error:
            if not self.check_peers or self._impl is None:
                raise
            self._check_peers(_DISPATCH, error)  # raises, here and on every other rank
        if self.check_peers:
            self._check_peers(_DISPATCH, None, t_max, global_scale)
        return self._launch(topk_ids, topk_weights, hidden_states, global_scale, x_fp4, x_scales,
                            t_max)

    def _check_combine(self, expert_output, out):
        if self._pending is None:
            raise RuntimeError("combine called without a dispatch before it")
        num_tokens, t_max = self._pending
        check_combine_args(self.cfg, t_max, expert_output, out, num_tokens)
        return num_tokens, t_max

    def combine(self, expert_output: torch.Tensor, out: Optional[torch.Tensor] = None):
        """Return `[T, H]` bf16: for each token of the last dispatch, the sum over the ranks it
        went to of their row of `expert_output` [ep, T_max, H] bf16 (the already-weighted expert
        outputs of the received rows)."""
        try:
            num_tokens, t_max = self._check_combine(expert_output, out)
        except (TypeError, ValueError, RuntimeError) as error:
            if not self.check_peers or self._impl is None:
                raise
            self._check_peers(_COMBINE, error)  # raises, here and on every other rank
        if self.check_peers:
            self._check_peers(_COMBINE, None, t_max)
        self._pending = None
        return self._impl.combine(expert_output, out, num_tokens, t_max)

    def close(self):
        """Release the workspace. The instance cannot be used afterwards."""
        if self._impl is not None:
            self._impl.close()
        self._impl = None
        self._pending = None
