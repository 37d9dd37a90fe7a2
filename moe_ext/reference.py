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


# ---- moe_lora_gemm ------------------------------------------------------------------------------


def lora_routes_of_alignment(sorted_ids, expert_ids, num_tokens_post_pad, numel, num_experts,
                             adapter_enabled=None):
    """(route, slot, expert) of every route listed in a real block, out-of-range values ignored."""
    sorted_ids, expert_ids = sorted_ids.cpu().long(), expert_ids.cpu().long()
    totals = num_tokens_post_pad.cpu().long()
    num_slots, p = sorted_ids.shape
    bs = p // expert_ids.shape[1]
    routes, slots, experts = [], [], []
    for slot in range(num_slots):
        if adapter_enabled is not None and int(adapter_enabled.cpu()[slot]) == 0:
            continue
        blocks = (min(max(int(totals[slot]), 0), p) + bs - 1) // bs
        ids = sorted_ids[slot, : blocks * bs].view(blocks, bs)
        ex = expert_ids[slot, :blocks].unsqueeze(1).expand(blocks, bs)
        ok = (ids >= 0) & (ids < numel) & (ex >= 0) & (ex < num_experts)
        routes.append(ids[ok])
        experts.append(ex[ok])
        slots.append(torch.full_like(ids[ok], slot))
    if not routes:
        empty = torch.empty(0, dtype=torch.long)
        return empty, empty, empty
    return torch.cat(routes), torch.cat(slots), torch.cat(experts)


def _lora_pairs(routes, slots, experts):
    """Yield (slot, expert, routes of that pair)."""
    for slot, expert in torch.unique(torch.stack([slots, experts], 1), dim=0).tolist():
        yield slot, expert, routes[(slots == slot) & (experts == expert)]


def fused_moe_lora_shrink(x, lora_a, sorted_token_ids, expert_ids, num_tokens_post_pad, top_k,
                          numel, adapter_enabled=None):
    """Reference rank vectors [S, numel, r] in x's dtype: round(x[row(i)] @ lora_a[s][l, e].T)
    in float32 math; rows of routes without a valid LoRA are 0."""
    xf = x.cpu().float()
    x_per_route = x.shape[0] == numel and x.shape[0] != numel // top_k
    out = torch.zeros(len(lora_a), numel, lora_a[0].shape[2])
    routes, slots, experts = lora_routes_of_alignment(
        sorted_token_ids, expert_ids, num_tokens_post_pad, numel, lora_a[0].shape[1],
        adapter_enabled,
    )
    for slot, expert, mine in _lora_pairs(routes, slots, experts):
        rows = xf[mine if x_per_route else mine // top_k]
        for s, a in enumerate(lora_a):
            out[s, mine] = (rows @ a[slot, expert].cpu().float().T).to(x.dtype).float()
    return out.to(x.dtype)


def fused_moe_lora_expand(output, intermediate, lora_b, topk_weights, sorted_token_ids,
                          expert_ids, num_tokens_post_pad, top_k, mul_routed_weight=False,
                          add_inputs=True, offset=0, adapter_enabled=None):
    """Reference of the expand op; returns the new output (CPU, output's dtype and shape).

    d = (intermediate[s, i] @ lora_b[s][l, e].T) * w_i in float32, then
    out = (out.float() + d).to(dtype) (add) or d.to(dtype) (overwrite; other routes get 0).
    """
    numel = intermediate.shape[1]
    out = output.detach().cpu().clone()
    out2 = out.view(numel, out.shape[-1])
    n = lora_b[0].shape[2]
    if not add_inputs:
        out2[:, offset : offset + len(lora_b) * n] = 0
    weights = topk_weights.detach().cpu().float().reshape(-1)
    routes, slots, experts = lora_routes_of_alignment(
        sorted_token_ids, expert_ids, num_tokens_post_pad, numel, lora_b[0].shape[1],
        adapter_enabled,
    )
    tmp_all = intermediate.cpu().float()
    for slot, expert, mine in _lora_pairs(routes, slots, experts):
        for s, b in enumerate(lora_b):
            d = tmp_all[s, mine] @ b[slot, expert].cpu().float().T
            if mul_routed_weight:
                d = d * weights[mine].unsqueeze(1)
            cols = slice(offset + s * n, offset + (s + 1) * n)
            out2[mine, cols] = (out2[mine, cols].float() + d).to(out.dtype)
    return out


def fused_moe_lora(output, x, lora_a, lora_b, topk_weights, sorted_token_ids, expert_ids,
                   num_tokens_post_pad, top_k, mul_routed_weight=False, add_inputs=True,
                   offset=0, adapter_enabled=None):
    """Reference of torch.ops.moe_ext.fused_moe_lora: shrink, round to x's dtype, expand."""
    numel = output.shape[0] * top_k if output.dim() == 3 else output.shape[0]
    tmp = fused_moe_lora_shrink(x, lora_a, sorted_token_ids, expert_ids, num_tokens_post_pad,
                                top_k, numel, adapter_enabled)
    return fused_moe_lora_expand(output, tmp, lora_b, topk_weights, sorted_token_ids, expert_ids,
                                 num_tokens_post_pad, top_k, mul_routed_weight, add_inputs,
                                 offset, adapter_enabled)
