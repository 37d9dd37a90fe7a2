"""Inputs and independent expectations shared by the all-to-all tests (gloo, one-GPU simulated
FlashInfer ranks, torchrun on several GPUs). Every rank can rebuild every other rank's inputs
from the seed, so each computes the expected routing without communicating."""

import torch

from moe_ext import reference as ref

# One global scale on every rank, so a receiver can dequantize any source's rows.
GLOBAL_SCALE = 40.0


def rank_inputs(rank, ep, num_experts, top_k, hidden, num_tokens, seed, device="cpu"):
    """Random routing (distinct experts per token) with planted invalid ids: -1, an id >= E, and
    a last token with no valid expert (it must go nowhere)."""
    g = torch.Generator().manual_seed(seed * 1000 + rank)
    ids = torch.stack([torch.randperm(num_experts, generator=g)[:top_k] for _ in range(num_tokens)])
    ids = ids.reshape(num_tokens, top_k).int()
    if num_tokens > 0 and top_k > 1:
        ids[0, 1] = -1
    if num_tokens > 1:
        ids[1, 0] = num_experts + rank
    if num_tokens > 2:
        ids[-1] = -1
    weights = torch.rand(num_tokens, top_k, generator=g)
    hidden_states = (torch.randn(num_tokens, hidden, generator=g) * 2).bfloat16()
    gs = torch.tensor([GLOBAL_SCALE])
    x_fp4, x_scales = ref.nvfp4_quantize(hidden_states, gs)
    inputs = {
        "topk_ids": ids,
        "topk_weights": weights,
        "hidden_states": hidden_states,
        "global_scale": gs,
        "x_fp4": x_fp4,
        "x_scales": x_scales,
    }
    return {name: t.to(device) for name, t in inputs.items()}


def expert_fn(topk_ids, topk_weights, x_fp4, x_scales, rank, num_experts, ep):
    """Stand-in for the experts of `rank` on rows [N, *]: sum over the row's experts owned by
    `rank` of w * (e + 1) times the dequantized row, rounded to bf16. Elementwise only, so it
    gives the same bits whatever the batch."""
    ids = topk_ids.cpu().long()
    owned = torch.tensor(
        [[0 <= e < num_experts and ref.a2a_owner(e, num_experts, ep) == rank for e in row]
         for row in ids.tolist()],
        dtype=torch.bool,
    ).reshape(ids.shape)
    coef = torch.zeros(ids.shape[0])
    for j in range(ids.shape[1]):
        coef = coef + torch.where(owned[:, j], topk_weights.cpu()[:, j] * (ids[:, j] + 1), 0.0)
    deq = ref.nvfp4_dequantize(
        x_fp4.cpu(), x_scales.cpu(), torch.tensor([GLOBAL_SCALE]), torch.float32
    )
    return (coef.unsqueeze(1) * deq).bfloat16()


def expert_output_of(recv, rank, num_experts, ep, t_max, hidden):
    """[ep, T_max, H] bf16 expert outputs of the received rows; rows without a token are NaN
    (combine must never read them)."""
    out = expert_fn(
        recv.topk_ids.reshape(-1, recv.topk_ids.shape[-1]),
        recv.topk_weights.reshape(-1, recv.topk_weights.shape[-1]),
        recv.x_fp4.reshape(-1, hidden // 2),
        recv.x_scales.reshape(-1, hidden // 16),
        rank, num_experts, ep,
    ).reshape(ep, t_max, hidden)
    empty = (recv.topk_ids.cpu() < 0).all(-1)
    out[empty] = float("nan")
    return out


def expected_combine(inputs, num_experts, ep):
    """[T, H] bf16: per token, float32 sum over its destination ranks (ascending) of the bf16
    expert outputs of that rank, computed from the source's own inputs."""
    dests = ref.a2a_destinations(inputs["topk_ids"], num_experts, ep)
    t, hidden = inputs["hidden_states"].shape
    total = torch.zeros(t, hidden)
    for d in range(ep):
        part = expert_fn(
            inputs["topk_ids"], inputs["topk_weights"], inputs["x_fp4"], inputs["x_scales"], d,
            num_experts, ep,
        ).float()
        sent = torch.tensor([d in r for r in dests], dtype=torch.bool).reshape(t, 1)
        total += torch.where(sent, part, 0.0)
    return total.bfloat16()


def row_set(recv, src):
    """Rows of source `src` that carry a token (ids not all -1), as sorted byte strings."""
    ids = recv["topk_ids"][src].cpu()
    keep = ~(ids == -1).all(-1)
    parts = [
        ids.contiguous().view(torch.uint8),
        recv["topk_weights"][src].cpu().contiguous().view(torch.uint8),
        recv["x_fp4"][src].cpu(),
        recv["x_scales"][src].cpu().contiguous().view(torch.uint8),
    ]
    rows = torch.cat(parts, dim=1)[keep]
    return sorted(bytes(r.tolist()) for r in rows)


def as_dict(result):
    return {
        "topk_ids": result.topk_ids,
        "topk_weights": result.topk_weights,
        "x_fp4": result.x_fp4,
        "x_scales": result.x_scales,
    }


def check_received(result, expected, exact_order):
    """Compare one rank's DispatchResult with the reference receive side. exact_order: same rows
    in the same order and ids -1 on every row past the count. Otherwise (flashinfer): the same
    multiset of rows carrying a token, every other row with ids -1."""
    got = as_dict(result)
    ep = expected["counts"].shape[0]
    for src in range(ep):
        n = int(expected["counts"][src])
        if not exact_order:
            assert row_set(got, src) == row_set(expected, src), f"rows of source {src} differ"
            continue
        tail = got["topk_ids"][src, n:].cpu()
        assert (tail == -1).all(), f"rows of source {src} past its count {n} must have ids -1"
        for name in ("topk_ids", "topk_weights", "x_fp4"):
            assert torch.equal(got[name][src, :n].cpu(), expected[name][src, :n]), name
        scales = got["x_scales"][src, :n].cpu().view(torch.uint8)
        assert torch.equal(scales, expected["x_scales"][src, :n])
