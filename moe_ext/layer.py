"""High-level multi-LoRA helpers for one MoE layer: align once, apply both LoRA GEMMs.

    lora = MoELoRA(gate_up_a, gate_up_b, down_a, down_b)
    routing = lora.align(topk_ids, token_lora_mapping)          # one alignment per layer call
    lora.gate_up(gate_up_out, hidden_states, routing)          # += LoRA delta, 2 slices, no weight
    lora.down(down_out, activated, topk_weights, routing)      # += LoRA delta, routing weight

Shapes: `gate_up_a[s]` [L, E, r, H], `gate_up_b[s]` [L, E, I, r] (s = gate, up);
`down_a` [L, E, r, I], `down_b` [L, E, H, r]; `hidden_states` [T, H]; `gate_up_out`
[T, k, 2I] (or [T*k, 2I]); `activated` [T*k, I]; `down_out` [T, k, H] (or [T*k, H]).
"""

from typing import NamedTuple, Optional, Sequence

import torch

from .ops.moe_lora_gemm import fused_moe_lora


class LoRARouting(NamedTuple):
    """Output of one `moe_lora_align_block_size` call, shared by every GEMM of the layer."""

    sorted_token_ids: torch.Tensor  # [L, P] int32
    expert_ids: torch.Tensor  # [L, P / block_size] int32
    num_tokens_post_pad: torch.Tensor  # [L] int32
    top_k: int
    adapter_enabled: Optional[torch.Tensor]


def choose_block_size(num_routes: int, num_experts: int, max_loras: int) -> int:
    """Block size from shapes only (graph-safe): about the routes one (adapter, expert) pair gets.

    Small blocks waste less padding when pairs see few routes (decode); larger blocks re-read
    each pair's weights fewer times when they see many (prefill). Blocks of 64 only where they
    make at least 64 blocks: fewer leave most SMs idle (Mixtral-8x7B at T = 1024, 32 blocks of
    64: the layer's two LoRA GEMMs 5-15 % faster with blocks of 32 on an H100).
    """
    per_pair = num_routes / max(1, num_experts * max_loras)
    if per_pair <= 16:
        return 16
    if per_pair <= 48 or num_routes < 64 * 64:
        return 32
    return 64


def align(
    topk_ids: torch.Tensor,
    token_lora_mapping: torch.Tensor,
    num_experts: int,
    max_loras: int,
    block_size: Optional[int] = None,
    adapter_enabled: Optional[torch.Tensor] = None,
    expert_map: Optional[torch.Tensor] = None,
) -> LoRARouting:
    """Align the routes of `topk_ids` [T, k] per adapter slot (`token_lora_mapping` [T])."""
    if block_size is None:
        block_size = choose_block_size(topk_ids.numel(), num_experts, max_loras)
    sorted_ids, expert_ids, post_pad = torch.ops.moe_ext.moe_lora_align_block_size(
        topk_ids, token_lora_mapping, num_experts, block_size, max_loras, adapter_enabled,
        expert_map,
    )
    return LoRARouting(sorted_ids, expert_ids, post_pad, topk_ids.shape[1], adapter_enabled)


class MoELoRA:
    """The LoRA weights of one MoE layer (gate/up: 2 slices, down: 1 slice)."""

    def __init__(
        self,
        gate_up_a: Sequence[torch.Tensor],
        gate_up_b: Sequence[torch.Tensor],
        down_a: torch.Tensor,
        down_b: torch.Tensor,
    ):
        if len(gate_up_a) != 2 or len(gate_up_b) != 2:
            raise ValueError(
                f"gate_up_a and gate_up_b must hold 2 slices (gate, up), got "
                f"{len(gate_up_a)} and {len(gate_up_b)}"
            )
        self.gate_up_a, self.gate_up_b = list(gate_up_a), list(gate_up_b)
        self.down_a, self.down_b = [down_a], [down_b]
        self.max_loras, self.num_experts = down_a.shape[0], down_a.shape[1]

    def align(
        self,
        topk_ids: torch.Tensor,
        token_lora_mapping: torch.Tensor,
        adapter_enabled: Optional[torch.Tensor] = None,
        expert_map: Optional[torch.Tensor] = None,
        block_size: Optional[int] = None,
    ) -> LoRARouting:
        """One alignment for both GEMMs (with `expert_map`, `topk_ids` hold global ids)."""
        num_experts = expert_map.numel() if expert_map is not None else self.num_experts
        return align(
            topk_ids, token_lora_mapping, num_experts, self.max_loras, block_size,
            adapter_enabled, expert_map,
        )

    def gate_up(self, output: torch.Tensor, x: torch.Tensor, routing: LoRARouting) -> None:
        """output[t, j, :2I] += LoRA delta of x[t] (gate slice, then up slice)."""
        self._apply(output, x, self.gate_up_a, self.gate_up_b, None, routing)

    def down(
        self, output: torch.Tensor, x: torch.Tensor, topk_weights: torch.Tensor,
        routing: LoRARouting,
    ) -> None:
        """output[t, j, :H] += topk_weights[t, j] * LoRA delta of x[t*k + j]."""
        self._apply(output, x, self.down_a, self.down_b, topk_weights, routing)

    @staticmethod
    def _apply(output, x, lora_a, lora_b, topk_weights, routing: LoRARouting) -> None:
        mul = topk_weights is not None
        if topk_weights is None:
            # Unused by the kernel when mul_routed_weight is False; only its size is checked.
            topk_weights = x.new_zeros((1,), dtype=torch.float32).expand(
                _routes(output, routing.top_k)
            )
        fused_moe_lora(
            output, x, lora_a, lora_b, topk_weights, routing.sorted_token_ids,
            routing.expert_ids, routing.num_tokens_post_pad, routing.top_k,
            mul_routed_weight=mul, add_inputs=True, adapter_enabled=routing.adapter_enabled,
        )


def _routes(output: torch.Tensor, top_k: int) -> int:
    return output.shape[0] * top_k if output.dim() == 3 else output.shape[0]
