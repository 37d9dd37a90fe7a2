"""Pure-PyTorch reference implementations: the oracle of the tests (readable, not fast)."""

from typing import Optional

import torch

from ._shapes import align_shapes


def _valid_experts(topk_ids: torch.Tensor, num_experts: int, expert_map: Optional[torch.Tensor]):
    """Local expert of every route (flattened), -1 where the route is not routed here."""
    ids = topk_ids.reshape(-1).long().cpu()
    in_range = (ids >= 0) & (ids < num_experts)
    experts = torch.where(in_range, ids, torch.full_like(ids, -1))
    if expert_map is not None:
        local = expert_map.long().cpu()[experts.clamp(min=0)]
        ok = in_range & (local >= 0) & (local < num_experts)
        experts = torch.where(ok, local, torch.full_like(ids, -1))
    return experts


def _align_slot(experts: torch.Tensor, num_experts: int, block_size: int, p: int):
    """Align the routes with experts[i] >= 0 into one slot's (sorted, expert_ids, total)."""
    numel = experts.numel()
    routes = torch.nonzero(experts >= 0).flatten()
    by_expert = torch.sort(experts[routes], stable=True)  # stable: ascending route index
    routes, route_experts = routes[by_expert.indices], by_expert.values
    counts = torch.bincount(route_experts, minlength=num_experts)
    padded = (counts + block_size - 1) // block_size * block_size
    seg_start = torch.cumsum(padded, 0) - padded
    rank = torch.arange(routes.numel()) - (torch.cumsum(counts, 0) - counts)[route_experts]
    sorted_ids = torch.full((p,), numel, dtype=torch.int32)
    sorted_ids[seg_start[route_experts] + rank] = routes.int()
    block_experts = torch.full((p // block_size,), -1, dtype=torch.int32)
    used = torch.repeat_interleave(torch.arange(num_experts), padded // block_size)
    block_experts[: used.numel()] = used.int()
    return sorted_ids, block_experts, int(padded.sum())


def moe_align_block_size(topk_ids, num_experts, block_size, expert_map=None):
    """Reference of torch.ops.moe_ext.moe_align_block_size (outputs on the CPU)."""
    p, _ = align_shapes(topk_ids.numel(), num_experts, block_size)
    experts = _valid_experts(topk_ids, num_experts, expert_map)
    sorted_ids, block_experts, total = _align_slot(experts, num_experts, block_size, p)
    return sorted_ids, block_experts, torch.tensor([total], dtype=torch.int32)


def lora_slot_of_routes(topk_ids, token_lora_mapping, max_loras, adapter_enabled=None):
    """Adapter slot of every route (flattened), -1 for base-model-only / dropped / disabled."""
    top_k = topk_ids.shape[1]
    slots = token_lora_mapping.long().cpu()
    valid = (slots >= 0) & (slots < max_loras)
    if adapter_enabled is not None:
        enabled = adapter_enabled.cpu()[:max_loras].long() != 0
        valid &= enabled[slots.clamp(0, max_loras - 1)]
    slots = torch.where(valid, slots, torch.full_like(slots, -1))
    return slots.repeat_interleave(top_k)


def moe_lora_align_block_size(
    topk_ids, token_lora_mapping, num_experts, block_size, max_loras, adapter_enabled=None,
    expert_map=None,
):
    """Reference of torch.ops.moe_ext.moe_lora_align_block_size (outputs on the CPU)."""
    p, blocks = align_shapes(topk_ids.numel(), num_experts, block_size)
    experts = _valid_experts(topk_ids, num_experts, expert_map)
    route_slots = lora_slot_of_routes(topk_ids, token_lora_mapping, max_loras, adapter_enabled)
    sorted_ids = torch.empty((max_loras, p), dtype=torch.int32)
    block_experts = torch.empty((max_loras, blocks), dtype=torch.int32)
    totals = torch.empty((max_loras,), dtype=torch.int32)
    for slot in range(max_loras):
        mine = torch.where(route_slots == slot, experts, torch.full_like(experts, -1))
        sorted_ids[slot], block_experts[slot], totals[slot] = _align_slot(
            mine, num_experts, block_size, p
        )
    return sorted_ids, block_experts, totals
