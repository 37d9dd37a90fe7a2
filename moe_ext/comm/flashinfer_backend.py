"""All-to-all through FlashInfer's one-sided NVLink kernels (`flashinfer.comm`, moe_a2a_*).

FlashInfer is optional and imported only here, lazily. Each rank writes its tokens straight
into the peers' receive buffers of a shared workspace; rows of one source arrive in the order
the sending threads claimed them, so unlike the torch backend the order of a source's rows is not
the token order (the set of rows and their contents are the same).
"""

import functools
import importlib.util
from typing import Optional

import torch
import torch.distributed as dist
from packaging.version import Version

from ._layout import A2AConfig, DispatchResult, experts_of_rank

FLASHINFER_VERSION = "0.7.2.post1"  # the release whose API, layout and limits are used here
# The top-k values FlashInfer 0.7.2's kernels are instantiated for, and its rank limit.
SUPPORTED_TOP_K = (1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 22)
MAX_RANKS = 64

# FlashInfer's workspace tensor comes from a DLPack capsule whose C struct lives in a Python
# object attached to that one tensor; torch calls the struct's deleter when the last view of the
# storage dies (e.g. a DispatchResult field kept after close()). The structs are a few hundred
# bytes each, so they are kept for the life of the process rather than freed under live views.
_DLPACK_STRUCTS = []


@functools.cache
def flashinfer_unavailable() -> Optional[str]:
    """Why FlashInfer's all-to-all cannot be used in this environment, or None. Imports it (once)
    rather than only finding it, so that backend="auto" falls back on a broken install."""
    if importlib.util.find_spec("flashinfer") is None:
        return "flashinfer-python is not installed"
    try:
        import flashinfer
        import tvm_ffi  # noqa: F401  (needed to run on torch's stream)

        _fi()
    except Exception as error:  # any failure of a third-party import means "not usable"
        return f"importing flashinfer failed: {error!r}"
    installed = getattr(flashinfer, "__version__", None)
    if installed is not None and Version(installed) != Version(FLASHINFER_VERSION):
        return f"flashinfer-python {installed} is installed, not {FLASHINFER_VERSION}"
    return None


def flashinfer_importable() -> bool:
    return flashinfer_unavailable() is None


def unsupported_reason(top_k: int, ep: int):
    """Why FlashInfer's kernels cannot serve this configuration, or None."""
    if top_k not in SUPPORTED_TOP_K:
        return f"top_k={top_k} is not one of FlashInfer's {SUPPORTED_TOP_K}"
    if ep > MAX_RANKS:
        return f"{ep} ranks exceed FlashInfer's limit of {MAX_RANKS}"
    return None


def _fi():
    from flashinfer.comm import trtllm_moe_alltoall

    return trtllm_moe_alltoall


def _torch_stream():
    """Make FlashInfer launch on torch's current stream (each simulated rank has its own)."""
    import tvm_ffi

    return tvm_ffi.use_torch_stream()


def payload_bytes(cfg: A2AConfig) -> tuple[int, int]:
    """(dispatch, combine) bytes per token: ids + weights + NVFP4 row + scales; bf16 row."""
    return 8 * cfg.top_k + cfg.hidden_size // 2 + cfg.hidden_size // 16, 2 * cfg.hidden_size


def workspace_size_per_rank(cfg: A2AConfig) -> int:
    dispatch_bytes, combine_bytes = payload_bytes(cfg)
    return int(
        _fi().moe_a2a_get_workspace_size_per_rank(
            cfg.ep, cfg.max_tokens_per_rank, dispatch_bytes, combine_bytes
        )
    )


class FlashInferAllToAll:
    """One rank's side of a FlashInfer workspace `[ep, size_per_rank]` uint8."""

    def __init__(self, cfg: A2AConfig, workspace: torch.Tensor, metainfo, owner=None):
        self.cfg = cfg
        self.workspace = workspace
        self.metainfo = metainfo
        self._owner = owner  # keeps the peer-mapped allocation alive
        self._combine_offset = None
        self._unrouted = None  # [T, 1] bool: tokens without any valid expert
        self._own_expert = experts_of_rank(cfg.num_experts, cfg.ep, cfg.rank).start

    @classmethod
    def create(cls, cfg: A2AConfig, group) -> "FlashInferAllToAll":
        """Collective over `group`: allocate the workspace, map every peer's part, initialize."""
        from flashinfer.comm.comm_backend import TorchDistBackend
        from flashinfer.comm.mapping import Mapping
        from flashinfer.comm.mnnvl import MnnvlConfig, MnnvlMemory

        mapping = Mapping(
            world_size=cfg.ep, rank=cfg.rank, gpus_per_node=cfg.ep, tp_size=cfg.ep,
            moe_ep_size=cfg.ep,
        )
        MnnvlMemory.initialize()
        MnnvlMemory.set_comm_from_config(mapping, MnnvlConfig(comm_backend=TorchDistBackend(group)))
        memory = MnnvlMemory(mapping, workspace_size_per_rank(cfg))
        workspace = memory.as_torch_strided_tensor(torch.uint8)
        _DLPACK_STRUCTS.append(getattr(workspace, "_capsule_wrapper", None))
        metainfo = _fi().moe_a2a_initialize(workspace, cfg.rank, cfg.ep, cfg.max_tokens_per_rank)
        # No peer may write into this rank's workspace before its initialization is done.
        dist.barrier(group=group)
        return cls(cfg, workspace, metainfo, owner=memory)

    def _routing_ids(self, topk_ids: torch.Tensor) -> torch.Tensor:
        """Ids the kernel routes by: an invalid id is replaced by a valid id of the same token
        (so it adds no destination). A token without any valid id is sent to its own rank, as a
        row whose ids (the original ones, carried as payload) route it to no expert; combine
        returns 0 for it, whatever that row's expert output holds."""
        e = self.cfg.num_experts
        valid = (topk_ids >= 0) & (topk_ids < e)
        routed = valid.any(1, keepdim=True)
        self._unrouted = ~routed
        first = topk_ids.gather(1, valid.int().argmax(1, keepdim=True))
        fallback = torch.where(routed, first, self._own_expert)
        return torch.where(valid, topk_ids, fallback).int().contiguous()

    # Dispatch and combine are split into steps (plan, send, finish) so that ranks simulated in
    # one process can run each step for every rank before the next: a rank's send kernel spins
    # until its peers' send kernels run, and under CUDA's lazy module loading the first launch of
    # any other kernel (a torch op, FlashInfer's sanitize) waits for the running ones, so no
    # new kernel may be launched between the ranks' sends.

    def plan_dispatch(self, topk_ids, topk_weights, x_fp4, x_scales):
        """Routing ids and the payload list (every kernel the send needs runs here)."""
        # FlashInfer packs the payload planes back to back: the 4-byte ones go first so that
        # every plane stays aligned.
        payloads = [
            topk_ids.contiguous(),
            topk_weights.contiguous(),
            x_fp4.contiguous(),
            x_scales.contiguous().view(torch.uint8),
        ]
        return self._routing_ids(topk_ids), payloads

    def send_dispatch(self, plan, t_max):
        cfg = self.cfg
        routing, payloads = plan
        with _torch_stream():
            recv, self._combine_offset, _ = _fi().moe_a2a_dispatch(
                routing, payloads, self.workspace, self.metainfo, t_max, cfg.rank, cfg.ep,
                cfg.top_k, cfg.num_experts,
            )
        return recv

    def finish_dispatch(self, recv) -> DispatchResult:
        ids, weights, fp4, scales = recv
        with _torch_stream():
            _fi().moe_a2a_sanitize_expert_ids(ids, self.workspace, self.metainfo, self.cfg.rank, -1)
        return DispatchResult(
            x_fp4=fp4, x_scales=scales.view(torch.float8_e4m3fn), topk_ids=ids,
            topk_weights=weights,
        )

    def dispatch(self, topk_ids, topk_weights, x_fp4, x_scales, t_max) -> DispatchResult:
        plan = self.plan_dispatch(topk_ids, topk_weights, x_fp4, x_scales)
        return self.finish_dispatch(self.send_dispatch(plan, t_max))

    def send_combine(self, expert_output, out, num_tokens, t_max):
        cfg = self.cfg
        offset, self._combine_offset = self._combine_offset, None
        with _torch_stream():
            return _fi().moe_a2a_combine(
                expert_output, num_tokens, self.workspace, self.metainfo, t_max, cfg.rank,
                cfg.ep, cfg.top_k, offset, output=out,
            )

    def finish_combine(self, out):
        return out.masked_fill_(self._unrouted, 0.0)

    def combine(self, expert_output, out, num_tokens, t_max):
        out = self.send_combine(expert_output.contiguous(), out, num_tokens, t_max)
        return self.finish_combine(out)

    def close(self):
        self.workspace = None
        self.metainfo = None
        self._owner = None
