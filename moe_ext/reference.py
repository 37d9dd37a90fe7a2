"""Pure-PyTorch reference implementations: the oracle of the tests (readable, not fast)."""

from typing import Optional

import torch

from ._shapes import align_shapes, round_up


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


# ---- nvfp4 ----------------------------------------------------------------------------------

_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def nvfp4_swizzled_offsets(rows: int, cols: int) -> torch.Tensor:
    """[rows, cols] int64: byte offset of scale (m, c) in the 128x4 swizzled layout."""
    m = torch.arange(rows).unsqueeze(1)
    c = torch.arange(cols).unsqueeze(0)
    col_tiles = (cols + 3) // 4
    return (
        (m // 128) * (col_tiles * 512) + (c // 4) * 512 + (m % 32) * 16 + ((m % 128) // 32) * 4
        + c % 4
    )


def nvfp4_swizzle_scales(scales: torch.Tensor) -> torch.Tensor:
    """Reference of torch.ops.moe_ext.nvfp4_swizzle_scales (CPU)."""
    rows, cols = scales.shape
    out = torch.zeros(round_up(rows, 128) * round_up(cols, 4), dtype=torch.uint8)
    out[nvfp4_swizzled_offsets(rows, cols).flatten()] = scales.cpu().view(torch.uint8).flatten()
    return out.view(torch.float8_e4m3fn).reshape(round_up(rows, 128), round_up(cols, 4))


def nvfp4_unswizzle_scales(swizzled: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Reference of torch.ops.moe_ext.nvfp4_unswizzle_scales (CPU)."""
    flat = swizzled.cpu().reshape(-1).view(torch.uint8)
    return flat[nvfp4_swizzled_offsets(rows, cols)].view(torch.float8_e4m3fn)


def nvfp4_quantize(x: torch.Tensor, global_scale: torch.Tensor, swizzle: bool = False):
    """Reference of torch.ops.moe_ext.nvfp4_quantize (CPU, float32 math in the same order)."""
    k = x.shape[-1]
    gs = global_scale.cpu().float().reshape(())
    blocks = x.cpu().float().reshape(-1, k // 16, 16)
    amax = blocks.abs().nan_to_num(nan=0.0, posinf=float("inf")).amax(-1)  # NaN left out
    sf = (gs * amax / 6.0).clamp(max=448.0).to(torch.float8_e4m3fn)
    sf_value = sf.float()
    mult = torch.where(sf_value > 0, gs / sf_value, torch.zeros_like(sf_value))
    v = blocks * mult.unsqueeze(-1)
    a = v.abs()
    codes = (
        (a > 0.25).int() + (a >= 0.75).int() + (a > 1.25).int() + (a >= 1.75).int()
        + (a > 2.5).int() + (a >= 3.5).int() + (a > 5.0).int()
    )
    codes = (codes | torch.signbit(v).int() * 8).masked_fill(v.isnan(), 0)  # NaN -> +0
    codes = codes.reshape(-1, k // 2, 2)
    packed = (codes[..., 0] | (codes[..., 1] << 4)).to(torch.uint8)
    packed = packed.reshape(*x.shape[:-1], k // 2)
    if swizzle:
        return packed, nvfp4_swizzle_scales(sf.reshape(-1, k // 16))
    return packed, sf.reshape(*x.shape[:-1], k // 16)


def nvfp4_dequantize(packed, scales, global_scale, dtype=torch.bfloat16, swizzled=False):
    """Reference of torch.ops.moe_ext.nvfp4_dequantize (CPU)."""
    k = packed.shape[-1] * 2
    rows = packed.numel() // max(packed.shape[-1], 1)
    gs = global_scale.cpu().float().reshape(())
    if swizzled:
        scales = nvfp4_unswizzle_scales(scales, rows, k // 16)
    factor = scales.cpu().float().reshape(rows, k // 16) / gs
    p = packed.cpu().reshape(rows, k // 2).int()
    codes = torch.stack((p & 0xF, p >> 4), -1).reshape(rows, k // 16, 16)
    table = torch.tensor(_E2M1_VALUES + tuple(-v for v in _E2M1_VALUES))
    out = table[codes.long()] * factor.unsqueeze(-1)
    return out.to(dtype).reshape(*packed.shape[:-1], k)


# ---- a2a ------------------------------------------------------------------------------------


def a2a_owner(expert: int, num_experts: int, ep: int) -> int:
    """Rank owning a global expert: the first E % ep ranks own E // ep + 1 experts each."""
    base, extra = divmod(num_experts, ep)
    split = extra * (base + 1)
    return expert // (base + 1) if expert < split else extra + (expert - split) // base


def a2a_destinations(topk_ids: torch.Tensor, num_experts: int, ep: int) -> list[list[int]]:
    """For each token, the ascending ranks owning at least one of its valid experts."""
    out = []
    for row in topk_ids.cpu().tolist():
        ranks = {a2a_owner(e, num_experts, ep) for e in row if 0 <= e < num_experts}
        out.append(sorted(ranks))
    return out


def a2a_dispatch(per_rank: list, num_experts: int, ep: int, t_max: int) -> list:
    """Receive side of every rank. per_rank[s]: dict with topk_ids [T, k] int32,
    topk_weights [T, k], x_fp4 [T, H/2], x_scales [T, H/16] of source rank s. Returns, per
    destination rank, a dict of [ep, T_max, *] tensors (row [s, j] = j-th token, in ascending
    token order, that s sent there; ids -1 and zero payload elsewhere) and counts [ep]."""
    k = per_rank[0]["topk_ids"].shape[1]
    h2 = per_rank[0]["x_fp4"].shape[1]
    result = []
    for d in range(ep):
        recv = {
            "topk_ids": torch.full((ep, t_max, k), -1, dtype=torch.int32),
            "topk_weights": torch.zeros(ep, t_max, k),
            "x_fp4": torch.zeros(ep, t_max, h2, dtype=torch.uint8),
            "x_scales": torch.zeros(ep, t_max, h2 // 8, dtype=torch.uint8),
            "counts": torch.zeros(ep, dtype=torch.int64),
        }
        for s, src in enumerate(per_rank):
            dests = a2a_destinations(src["topk_ids"], num_experts, ep)
            tokens = [t for t, ranks in enumerate(dests) if d in ranks]
            for j, t in enumerate(tokens):
                recv["topk_ids"][s, j] = src["topk_ids"][t].cpu()
                recv["topk_weights"][s, j] = src["topk_weights"][t].cpu()
                recv["x_fp4"][s, j] = src["x_fp4"][t].cpu()
                recv["x_scales"][s, j] = src["x_scales"][t].cpu().view(torch.uint8)
            recv["counts"][s] = len(tokens)
        result.append(recv)
    return result
