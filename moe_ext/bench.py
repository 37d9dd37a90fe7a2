"""The command line's benchmark: the LoRA work of one MoE layer (align, gate_up LoRA, down LoRA)
against the bytes floor and a plain PyTorch baseline, on random data."""

from dataclasses import dataclass

import torch

from .layer import MoELoRA
from .presets import MoEShape
from .timing import time_us


@dataclass
class LayerInputs:
    shape: MoEShape
    lora: MoELoRA
    x: torch.Tensor  # [T, H] gate/up input
    activated: torch.Tensor  # [T*k, I] down input
    topk_ids: torch.Tensor  # [T, k] int32
    topk_weights: torch.Tensor  # [T, k] fp32
    token_lora_mapping: torch.Tensor  # [T] int32
    gate_up_out: torch.Tensor  # [T, k, 2I]
    down_out: torch.Tensor  # [T, k, H]


def make_layer_inputs(shape: MoEShape, tokens: int, rank: int, loras: int, dtype, device,
                      seed: int = 0) -> LayerInputs:
    """Random routing (distinct experts per token), tokens spread evenly over the adapters."""
    g = torch.Generator(device=device).manual_seed(seed)
    H, I, E, k = shape

    def randn(*size, scale=1.0):
        return (torch.randn(*size, generator=g, device=device) * scale).to(dtype)

    lora = MoELoRA(
        [randn(loras, E, rank, H, scale=H**-0.5) for _ in range(2)],
        [randn(loras, E, I, rank, scale=rank**-0.5) for _ in range(2)],
        randn(loras, E, rank, I, scale=I**-0.5),
        randn(loras, E, H, rank, scale=rank**-0.5),
    )
    scores = torch.rand(tokens, E, generator=g, device=device)
    top = scores.topk(k, dim=1)
    mapping = torch.arange(tokens, device=device, dtype=torch.int32) % loras
    return LayerInputs(
        shape, lora, randn(tokens, H), randn(tokens * k, I), top.indices.int().contiguous(),
        torch.softmax(top.values, dim=1), mapping[torch.randperm(tokens, generator=g,
                                                                  device=device)],
        randn(tokens, k, 2 * I), randn(tokens, k, H),
    )


def run_layer(inp: LayerInputs) -> None:
    """The library path: one alignment, then both LoRA GEMMs (in place on the outputs)."""
    routing = inp.lora.align(inp.topk_ids, inp.token_lora_mapping)
    inp.lora.gate_up(inp.gate_up_out, inp.x, routing)
    inp.lora.down(inp.down_out, inp.activated, inp.topk_weights, routing)


def baseline_groups(inp: LayerInputs) -> list:
    """(adapter, expert, route indices) of every non-empty group, found on the host once."""
    k = inp.shape.top_k
    routes_slot = inp.token_lora_mapping.long().repeat_interleave(k).cpu()
    experts = inp.topk_ids.reshape(-1).long().cpu()
    key = routes_slot * inp.shape.experts + experts
    groups = []
    for value in torch.unique(key).tolist():
        routes = torch.nonzero(key == value).flatten().to(inp.x.device)
        groups.append((value // inp.shape.experts, value % inp.shape.experts, routes))
    return groups


def run_baseline(inp: LayerInputs, groups: list) -> None:
    """Plain PyTorch: per (adapter, expert) group, gather, two matmuls, index_add."""
    k, I = inp.shape.top_k, inp.shape.intermediate
    gate_up = inp.gate_up_out.view(-1, 2 * I)
    down = inp.down_out.view(-1, inp.shape.hidden)
    w = inp.topk_weights.reshape(-1)
    lo = inp.lora
    for slot, expert, routes in groups:
        rows = inp.x.index_select(0, routes // k)
        delta = torch.cat([(rows @ a[slot, expert].T) @ b[slot, expert].T
                           for a, b in zip(lo.gate_up_a, lo.gate_up_b)], dim=1)
        gate_up.index_add_(0, routes, delta)
        rows = inp.activated.index_select(0, routes)
        delta = (rows @ lo.down_a[0][slot, expert].T) @ lo.down_b[0][slot, expert].T
        down.index_add_(0, routes, delta * w[routes, None].to(delta.dtype))


def floor_bytes(inp: LayerInputs, groups: list) -> int:
    """LoRA weights of the touched (adapter, expert) pairs + activations read + outputs read and
    written, for both GEMMs."""
    H, I, _, _ = inp.shape
    r = inp.lora.down_a[0].shape[2]
    item = inp.x.element_size()
    weights = len(groups) * (2 * (r * H + I * r) + (r * I + H * r))
    activations = inp.x.numel() + inp.activated.numel()
    outputs = 2 * (inp.gate_up_out.numel() + inp.down_out.numel())
    return (weights + activations + outputs) * item


@dataclass
class LayerResult:
    tokens: int
    us: float
    floor_us: float
    baseline_us: float

    @property
    def fraction_of_floor(self) -> float:
        return self.floor_us / self.us

    @property
    def speedup(self) -> float:
        return self.baseline_us / self.us


def bench_layer(shape: MoEShape, tokens: int, rank: int, loras: int, dtype, device,
                bandwidth_gbps: float) -> LayerResult:
    inp = make_layer_inputs(shape, tokens, rank, loras, dtype, device)
    groups = baseline_groups(inp)
    us = time_us(lambda: run_layer(inp), device)
    baseline_us = time_us(lambda: run_baseline(inp, groups), device)
    floor_us = floor_bytes(inp, groups) / (bandwidth_gbps * 1e3)
    return LayerResult(tokens, us, floor_us, baseline_us)
