"""Layout shared by every all-to-all backend: expert ownership, argument checks, the result type.

Experts are split contiguously over `ep` ranks: with `base = E // ep`, the first `E % ep` ranks
own `base + 1` experts each and the others `base`. Receive tensors are `[ep, T_max, *]`: row
`[src, j]` is the j-th token that rank `src` sent here; rows past a source's count have
`topk_ids = -1`.
"""

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class DispatchResult:
    """Tokens received by this rank, each field `[ep, T_max, *]`.

    `x_fp4` uint8 `[.., H/2]`, `x_scales` float8_e4m3fn `[.., H/16]` (linear layout),
    `topk_ids` int32 `[.., k]` (global expert ids, -1 on rows that carry no token),
    `topk_weights` float32 `[.., k]`. With the flashinfer backend the rows of one source come
    in arrival order rather than token order, and a token without any valid expert id arrives
    on its own rank as a row whose ids are all invalid (it routes to no expert).
    """

    x_fp4: torch.Tensor
    x_scales: torch.Tensor
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor


def experts_of_rank(num_experts: int, ep: int, rank: int) -> range:
    """Global ids of the experts that `rank` owns."""
    base, extra = divmod(num_experts, ep)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def owner_table(num_experts: int, ep: int, device) -> torch.Tensor:
    """[num_experts] int64: the rank that owns each expert."""
    owners = torch.empty(num_experts, dtype=torch.int64)
    for rank in range(ep):
        r = experts_of_rank(num_experts, ep, rank)
        owners[r.start : r.stop] = rank
    return owners.to(device)


@dataclass(frozen=True)
class A2AConfig:
    ep: int
    rank: int
    num_experts: int
    top_k: int
    hidden_size: int
    max_tokens_per_rank: int
    device: torch.device


def check_config(num_experts: int, top_k: int, hidden_size: int, max_tokens: int, ep: int):
    if ep < 1:
        raise ValueError(f"the group must have at least 1 rank, got {ep}")
    if num_experts < ep:
        raise ValueError(f"num_experts ({num_experts}) must be >= the number of ranks ({ep})")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
    if hidden_size <= 0 or hidden_size % 64 != 0:
        raise ValueError(f"hidden_size must be a positive multiple of 64, got {hidden_size}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens_per_rank must be >= 1, got {max_tokens}")


def _check_tensor(name, t, dtype, shape, device):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} must be on {device}, got {t.device}")


def check_dispatch_args(
    cfg: A2AConfig,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    hidden_states: Optional[torch.Tensor],
    global_scale: Optional[torch.Tensor],
    x_fp4: Optional[torch.Tensor],
    x_scales: Optional[torch.Tensor],
    runtime_max_tokens_per_rank: Optional[int],
) -> int:
    """Validate one rank's dispatch arguments; return T_max. Raises before any communication."""
    if not isinstance(topk_ids, torch.Tensor):
        raise TypeError(f"topk_ids must be a torch.Tensor, got {type(topk_ids).__name__}")
    if topk_ids.dtype != torch.int32:
        raise TypeError(f"topk_ids must have dtype torch.int32, got {topk_ids.dtype}")
    if topk_ids.dim() != 2 or topk_ids.shape[1] != cfg.top_k:
        raise ValueError(f"topk_ids must have shape [T, {cfg.top_k}], got {tuple(topk_ids.shape)}")
    t = topk_ids.shape[0]
    t_max = cfg.max_tokens_per_rank
    if runtime_max_tokens_per_rank is not None:
        t_max = int(runtime_max_tokens_per_rank)
    if not 1 <= t_max <= cfg.max_tokens_per_rank:
        raise ValueError(
            f"runtime_max_tokens_per_rank must be in [1, max_tokens_per_rank="
            f"{cfg.max_tokens_per_rank}] (the workspace size), got {t_max}"
        )
    if t > t_max:
        raise ValueError(
            f"{t} tokens exceed the per-rank maximum T_max={t_max} "
            f"(max_tokens_per_rank={cfg.max_tokens_per_rank})"
        )
    _check_tensor("topk_ids", topk_ids, torch.int32, (t, cfg.top_k), cfg.device)
    _check_tensor("topk_weights", topk_weights, torch.float32, (t, cfg.top_k), cfg.device)
    h = cfg.hidden_size
    quantized = x_fp4 is not None or x_scales is not None
    if quantized == (hidden_states is not None or global_scale is not None):
        raise ValueError(
            "pass either hidden_states and global_scale, or x_fp4 and x_scales (not both)"
        )
    if quantized:
        if x_fp4 is None or x_scales is None:
            raise ValueError("x_fp4 and x_scales must be passed together")
        _check_tensor("x_fp4", x_fp4, torch.uint8, (t, h // 2), cfg.device)
        _check_tensor("x_scales", x_scales, torch.float8_e4m3fn, (t, h // 16), cfg.device)
    else:
        if hidden_states is None or global_scale is None:
            raise ValueError("hidden_states and global_scale must be passed together")
        _check_tensor("hidden_states", hidden_states, torch.bfloat16, (t, h), cfg.device)
        _check_tensor("global_scale", global_scale, torch.float32, (1,), cfg.device)
    return t_max


def check_combine_args(cfg: A2AConfig, t_max: int, expert_output, out, num_tokens: int):
    _check_tensor(
        "expert_output", expert_output, torch.bfloat16, (cfg.ep, t_max, cfg.hidden_size),
        cfg.device,
    )
    if out is not None:
        _check_tensor("out", out, torch.bfloat16, (num_tokens, cfg.hidden_size), cfg.device)
        if not out.is_contiguous():
            raise ValueError("out must be contiguous")
