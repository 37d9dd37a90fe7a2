"""Multi-LoRA MoE grouped GEMM (family `moe_lora_gemm`).

For every route `i = t * top_k + j` listed by a `moe_lora_align_block_size` result in a block of
slot `l` with expert `e`, and every slice `s`:

    tmp = round_to_x_dtype(x[row(i)] @ lora_a[s][l, e].T)          # fp32 accumulate
    d   = tmp @ lora_b[s][l, e].T * (topk_weights[i] if mul_routed_weight else 1)
    output[i, offset + s*N : offset + (s+1)*N] (+)= d               # fp32 add, one rounding

`row(i)` is `i // top_k` when `x` is `[T, K]` and `i` when `x` is `[T*k, K]`. Routes without a
valid LoRA keep their output (add) or get 0 (overwrite); columns outside the slice range are
never written. The alignment tensors are untrusted: out-of-range values are ignored.
"""

from typing import Optional, Sequence

import torch

_ops = torch.ops.moe_ext


def fused_moe_lora(
    output: torch.Tensor,
    x: torch.Tensor,
    lora_a: Sequence[torch.Tensor],
    lora_b: Sequence[torch.Tensor],
    topk_weights: torch.Tensor,
    sorted_token_ids: torch.Tensor,
    expert_ids: torch.Tensor,
    num_tokens_post_pad: torch.Tensor,
    top_k: int,
    mul_routed_weight: bool = False,
    add_inputs: bool = True,
    offset: int = 0,
    adapter_enabled: Optional[torch.Tensor] = None,
) -> None:
    """Shrink then expand in one call, writing into `output` in place.

    Shapes: `output` [T, k, W] or [T*k, W]; `x` [T, K] or [T*k, K] (fp16/bf16, fp32 on CPU);
    `lora_a[s]` [L, E, r, K]; `lora_b[s]` [L, E, N, r] (any strides, stride 0 on E allowed);
    `topk_weights` [T, k]; alignment: `sorted_token_ids` [L, P], `expert_ids` [L, P/BS],
    `num_tokens_post_pad` [L] int32; `adapter_enabled` [L] or [L+1] int32/bool.
    """
    _ops.fused_moe_lora(
        output, x, list(lora_a), list(lora_b), topk_weights, sorted_token_ids, expert_ids,
        num_tokens_post_pad, top_k, mul_routed_weight, add_inputs, offset, adapter_enabled,
    )


def fused_moe_lora_shrink(
    intermediate: torch.Tensor,
    x: torch.Tensor,
    lora_a: Sequence[torch.Tensor],
    sorted_token_ids: torch.Tensor,
    expert_ids: torch.Tensor,
    num_tokens_post_pad: torch.Tensor,
    top_k: int,
    adapter_enabled: Optional[torch.Tensor] = None,
) -> None:
    """Rank vectors: `intermediate` [S, T*k, r] (x's dtype, contiguous) row i = tmp of route i.

    Shapes: `x` [T, K] or [T*k, K]; `lora_a[s]` [L, E, r, K] (any strides); the alignment as in
    `fused_moe_lora`. Rows of routes without a valid LoRA are unspecified. All-reduce it here
    for tensor-parallel LoRA, then call `fused_moe_lora_expand`.
    """
    _ops.fused_moe_lora_shrink(
        intermediate, x, list(lora_a), sorted_token_ids, expert_ids, num_tokens_post_pad, top_k,
        adapter_enabled,
    )


def fused_moe_lora_expand(
    output: torch.Tensor,
    intermediate: torch.Tensor,
    lora_b: Sequence[torch.Tensor],
    topk_weights: torch.Tensor,
    sorted_token_ids: torch.Tensor,
    expert_ids: torch.Tensor,
    num_tokens_post_pad: torch.Tensor,
    top_k: int,
    mul_routed_weight: bool = False,
    add_inputs: bool = True,
    offset: int = 0,
    adapter_enabled: Optional[torch.Tensor] = None,
) -> None:
    """`output[i, offset + s*N : ...] (+)= w_i * intermediate[s, i] @ lora_b[s][l, e].T`.

    Shapes: `output` [T, k, W] or [T*k, W] with W >= offset + S*N; `intermediate` [S, T*k, r]
    (contiguous); `lora_b[s]` [L, E, N, r] in intermediate's dtype (any strides); `topk_weights`
    [T, k]; the alignment as in `fused_moe_lora`.
    """
    _ops.fused_moe_lora_expand(
        output, intermediate, list(lora_b), topk_weights, sorted_token_ids, expert_ids,
        num_tokens_post_pad, top_k, mul_routed_weight, add_inputs, offset, adapter_enabled,
    )


def _check_same_device(device: torch.device, **tensors) -> None:
    """The C++ ops' device checks, for the fakes (a meta tensor among CPU ones would otherwise
    route the whole call to the fake and return unwritten outputs)."""
    for name, t in tensors.items():
        labelled = (
            [(f"{name}[{i}]", u) for i, u in enumerate(t)] if isinstance(t, (list, tuple))
            else [(name, t)]
        )
        for label, u in labelled:
            if u is not None:
                torch._check(
                    u.device == device,
                    lambda n=label, u=u: f"{n} must be on {device}, got {u.device}",
                )


@torch.library.register_fake("moe_ext::fused_moe_lora")
def _fused_moe_lora_fake(
    output, x, lora_a, lora_b, topk_weights, sorted_token_ids, expert_ids, num_tokens_post_pad,
    top_k, mul_routed_weight=False, add_inputs=True, offset=0, adapter_enabled=None,
):
    torch._check(len(lora_a) == len(lora_b), lambda: "lora_a and lora_b slice counts differ")
    _check_same_device(
        x.device, output=output, lora_a=lora_a, lora_b=lora_b, topk_weights=topk_weights,
        sorted_token_ids=sorted_token_ids, expert_ids=expert_ids,
        num_tokens_post_pad=num_tokens_post_pad, adapter_enabled=adapter_enabled,
    )


@torch.library.register_fake("moe_ext::fused_moe_lora_shrink")
def _fused_moe_lora_shrink_fake(
    intermediate, x, lora_a, sorted_token_ids, expert_ids, num_tokens_post_pad, top_k,
    adapter_enabled=None,
):
    torch._check(intermediate.dim() == 3, lambda: "intermediate must be [S, T*k, r]")
    _check_same_device(
        x.device, intermediate=intermediate, lora_a=lora_a, sorted_token_ids=sorted_token_ids,
        expert_ids=expert_ids, num_tokens_post_pad=num_tokens_post_pad,
        adapter_enabled=adapter_enabled,
    )


@torch.library.register_fake("moe_ext::fused_moe_lora_expand")
def _fused_moe_lora_expand_fake(
    output, intermediate, lora_b, topk_weights, sorted_token_ids, expert_ids,
    num_tokens_post_pad, top_k, mul_routed_weight=False, add_inputs=True, offset=0,
    adapter_enabled=None,
):
    torch._check(intermediate.dim() == 3, lambda: "intermediate must be [S, T*k, r]")
    _check_same_device(
        intermediate.device, output=output, lora_b=lora_b, topk_weights=topk_weights,
        sorted_token_ids=sorted_token_ids, expert_ids=expert_ids,
        num_tokens_post_pad=num_tokens_post_pad, adapter_enabled=adapter_enabled,
    )
