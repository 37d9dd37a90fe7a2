"""Alignment of routed tokens into expert blocks (family `moe_align`).

Every route `i = t * top_k + j` whose expert is valid (and, for the LoRA variant, whose token maps
to an enabled slot) is bucketed by expert; each expert segment is padded to a multiple of
`block_size`; inside a segment routes keep ascending order. Unused positions hold the sentinel
`numel` and unused blocks the expert id -1.
"""

from typing import Optional

import torch

from .._shapes import align_shapes

_ops = torch.ops.moe_ext


def moe_align_block_size(
    topk_ids: torch.Tensor,
    num_experts: int,
    block_size: int,
    expert_map: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort the routes of `topk_ids` [T, k] by expert into blocks of `block_size`.

    Returns `sorted_token_ids` [P] int32 (route indices, sentinel T*k), `expert_ids` [P/BS] int32
    (-1 for unused blocks) and `num_tokens_post_pad` [1] int32. With `expert_map` [num_experts]
    int32 (global -> local id, -1 = not here), buckets use the local ids.
    """
    return _ops.moe_align_block_size(topk_ids, num_experts, block_size, expert_map)


def moe_align_block_size_out(
    topk_ids: torch.Tensor,
    num_experts: int,
    block_size: int,
    sorted_token_ids: torch.Tensor,
    expert_ids: torch.Tensor,
    num_tokens_post_pad: torch.Tensor,
    expert_map: Optional[torch.Tensor] = None,
) -> None:
    """`moe_align_block_size` into caller-owned buffers (every element is written)."""
    _ops.moe_align_block_size_out(
        topk_ids, num_experts, block_size, expert_map, sorted_token_ids, expert_ids,
        num_tokens_post_pad,
    )


def moe_lora_align_block_size(
    topk_ids: torch.Tensor,
    token_lora_mapping: torch.Tensor,
    num_experts: int,
    block_size: int,
    max_loras: int,
    adapter_enabled: Optional[torch.Tensor] = None,
    expert_map: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-adapter alignment: row `l` aligns the routes of the tokens mapped to slot `l`.

    `token_lora_mapping` [T] int32 holds a slot in [0, max_loras) or -1 (no LoRA); other values
    are dropped. `adapter_enabled` ([L] or [L+1], int32 or bool) switches slots off. Returns
    `sorted_token_ids` [L, P], `expert_ids` [L, P/BS], `num_tokens_post_pad` [L], all int32.
    """
    return _ops.moe_lora_align_block_size(
        topk_ids, token_lora_mapping, num_experts, block_size, max_loras, adapter_enabled,
        expert_map,
    )


def moe_lora_align_block_size_out(
    topk_ids: torch.Tensor,
    token_lora_mapping: torch.Tensor,
    num_experts: int,
    block_size: int,
    max_loras: int,
    sorted_token_ids: torch.Tensor,
    expert_ids: torch.Tensor,
    num_tokens_post_pad: torch.Tensor,
    adapter_enabled: Optional[torch.Tensor] = None,
    expert_map: Optional[torch.Tensor] = None,
) -> None:
    """`moe_lora_align_block_size` into caller-owned buffers (every row is written)."""
    _ops.moe_lora_align_block_size_out(
        topk_ids, token_lora_mapping, num_experts, block_size, max_loras, adapter_enabled,
        expert_map, sorted_token_ids, expert_ids, num_tokens_post_pad,
    )


def _check_scalars(num_experts: int, block_size: int, max_loras: int = 1) -> None:
    """The C++ ops' range checks, for the fakes: shapes are computed from these values."""
    for name, value in (
        ("num_experts", num_experts), ("block_size", block_size), ("max_loras", max_loras)
    ):
        torch._check(
            value >= 1 and value <= 1024,
            lambda n=name, v=value: f"{n} must be in [1, 1024], got {v}",
        )


@torch.library.register_fake("moe_ext::moe_align_block_size")
def _moe_align_block_size_fake(topk_ids, num_experts, block_size, expert_map=None):
    _check_scalars(num_experts, block_size)
    p, blocks = align_shapes(topk_ids.numel(), num_experts, block_size)
    new = topk_ids.new_empty
    return (
        new((p,), dtype=torch.int32),
        new((blocks,), dtype=torch.int32),
        new((1,), dtype=torch.int32),
    )


@torch.library.register_fake("moe_ext::moe_align_block_size_out")
def _moe_align_block_size_out_fake(
    topk_ids, num_experts, block_size, expert_map, sorted_token_ids, expert_ids,
    num_tokens_post_pad,
):
    _check_scalars(num_experts, block_size)


@torch.library.register_fake("moe_ext::moe_lora_align_block_size")
def _moe_lora_align_block_size_fake(
    topk_ids, token_lora_mapping, num_experts, block_size, max_loras, adapter_enabled=None,
    expert_map=None,
):
    _check_scalars(num_experts, block_size, max_loras)
    p, blocks = align_shapes(topk_ids.numel(), num_experts, block_size)
    new = topk_ids.new_empty
    return (
        new((max_loras, p), dtype=torch.int32),
        new((max_loras, blocks), dtype=torch.int32),
        new((max_loras,), dtype=torch.int32),
    )


@torch.library.register_fake("moe_ext::moe_lora_align_block_size_out")
def _moe_lora_align_block_size_out_fake(
    topk_ids, token_lora_mapping, num_experts, block_size, max_loras, adapter_enabled,
    expert_map, sorted_token_ids, expert_ids, num_tokens_post_pad,
):
    _check_scalars(num_experts, block_size, max_loras)
