"""Shape formulas shared by the typed wrappers and the fake (meta) implementations.

Mirrors csrc/ops.h; tests/test_moe_align.py asserts the two agree.
"""

import torch


def round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def padded_length(numel: int, num_experts: int, block_size: int) -> int:
    """Length P of one slot's sorted_token_ids: every route plus a partial block per expert."""
    # sym_min keeps the formula symbolic when numel is a SymInt under torch.compile(dynamic=True).
    return round_up(numel + torch.sym_min(num_experts, numel) * (block_size - 1), block_size)


def align_shapes(numel: int, num_experts: int, block_size: int) -> tuple[int, int]:
    """(P, P // block_size): lengths of sorted_token_ids and expert_ids for one slot."""
    p = padded_length(numel, num_experts, block_size)
    return p, p // block_size


def nvfp4_swizzled_shape(rows: int, cols: int) -> tuple[int, int]:
    """Shape of the 128x4-tiled NVFP4 scale layout of a [rows, cols] scale matrix."""
    return round_up(rows, 128), round_up(cols, 4)
