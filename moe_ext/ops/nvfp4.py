"""NVFP4 quantization (family `nvfp4`).

E2M1 values +-{0, 0.5, 1, 1.5, 2, 3, 4, 6} in blocks of 16 along the last dim, one E4M3 scale per
block and one float32 global scale `gs` (usually `448 * 6 / amax(x)`):
`sf = e4m3(gs * amax(block) / 6)`, `q = e2m1_rne(x * gs / sf)`, `x ~ e2m1(q) * sf / gs`.
Two values per byte, element `2i` in the low nibble. Scales are either linear `[..., K/16]` or
the 128x4 swizzled layout `[round_up(M, 128), round_up(K/16, 4)]` (padding bytes 0) with
byte offset of (m, c) = `(m//128)*(nKt*512) + (c//4)*512 + (m%32)*16 + ((m%128)//32)*4 + c%4`.
Runs on CPU and on any CUDA GPU from sm_90 (Hopper) on; CPU and CUDA give identical bytes.
Non-finite inputs: NaN is left out of the block amax and encodes as +0; +-inf saturates to +-6
under the largest block scale (448).
"""

import torch

from .._shapes import nvfp4_swizzled_shape

_ops = torch.ops.moe_ext


def nvfp4_global_scale(x: torch.Tensor) -> torch.Tensor:
    """The conventional global scale `448 * 6 / amax(x)` as a float32 tensor of shape [1], amax
    taken over the finite values (1 when there are none or all are zero; never infinite)."""
    if x.numel() == 0:
        return torch.ones(1, dtype=torch.float32, device=x.device)
    a = x.detach().abs().float()
    amax = torch.where(a.isfinite(), a, 0.0).amax()
    gs = (448.0 * 6.0 / amax).clamp(max=torch.finfo(torch.float32).max)
    return torch.where(amax > 0, gs, torch.ones_like(gs)).reshape(1)


def nvfp4_quantize(
    x: torch.Tensor, global_scale: torch.Tensor, swizzle: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize `x` [..., K] (bf16/fp16/fp32, K % 16 == 0) with `global_scale` [1] float32.

    Returns `packed` [..., K/2] uint8 and `scales` float8_e4m3fn: [..., K/16] (linear) or, with
    `swizzle=True`, [round_up(M, 128), round_up(K/16, 4)] where M is the product of the leading
    dims. An all-zero block gets scale 0 and codes 0.
    """
    return _ops.nvfp4_quantize(x, global_scale, swizzle)


def nvfp4_dequantize(
    packed: torch.Tensor,
    scales: torch.Tensor,
    global_scale: torch.Tensor,
    dtype: torch.dtype = torch.bfloat16,
    swizzled: bool = False,
) -> torch.Tensor:
    """Inverse of `nvfp4_quantize`: `packed` [..., K/2] uint8 + scales -> [..., K] of `dtype`."""
    return _ops.nvfp4_dequantize(packed, scales, global_scale, dtype, swizzled)


def nvfp4_swizzle_scales(scales: torch.Tensor) -> torch.Tensor:
    """Linear scales [M, C] -> 128x4 swizzled [round_up(M, 128), round_up(C, 4)], padding 0."""
    return _ops.nvfp4_swizzle_scales(scales)


def nvfp4_unswizzle_scales(swizzled: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Swizzled scales back to the linear [rows, cols] layout."""
    return _ops.nvfp4_unswizzle_scales(swizzled, rows, cols)


def _leading_rows(t: torch.Tensor):
    rows = 1
    for size in t.shape[:-1]:
        rows = rows * size
    return rows


def _check_global_scale(global_scale, device):
    """The C++ ops' global_scale checks, for the fakes."""
    torch._check(
        global_scale.numel() == 1,
        lambda: f"global_scale must have exactly 1 element, got {global_scale.numel()}",
    )
    torch._check(
        global_scale.dtype == torch.float32,
        lambda: f"global_scale must have dtype torch.float32, got {global_scale.dtype}",
    )
    torch._check(
        global_scale.device == device,
        lambda: f"global_scale must be on {device}, got {global_scale.device}",
    )


@torch.library.register_fake("moe_ext::nvfp4_quantize")
def _nvfp4_quantize_fake(x, global_scale, swizzle=False):
    _check_global_scale(global_scale, x.device)
    k = x.shape[-1]
    torch._check(k % 16 == 0, lambda: f"x.size(-1) must be a multiple of 16, got {k}")
    packed = x.new_empty((*x.shape[:-1], k // 2), dtype=torch.uint8)
    if swizzle:
        scale_shape = nvfp4_swizzled_shape(_leading_rows(x), k // 16)
    else:
        scale_shape = (*x.shape[:-1], k // 16)
    return packed, x.new_empty(scale_shape, dtype=torch.float8_e4m3fn)


@torch.library.register_fake("moe_ext::nvfp4_dequantize")
def _nvfp4_dequantize_fake(packed, scales, global_scale, dtype, swizzled=False):
    _check_global_scale(global_scale, packed.device)
    torch._check(
        scales.device == packed.device,
        lambda: f"scales must be on {packed.device}, got {scales.device}",
    )
    return packed.new_empty((*packed.shape[:-1], packed.shape[-1] * 2), dtype=dtype)


@torch.library.register_fake("moe_ext::nvfp4_swizzle_scales")
def _nvfp4_swizzle_scales_fake(scales):
    torch._check(scales.dim() == 2, lambda: f"scales must have 2 dimensions, got {scales.dim()}")
    return scales.new_empty(nvfp4_swizzled_shape(scales.shape[0], scales.shape[1]))


@torch.library.register_fake("moe_ext::nvfp4_unswizzle_scales")
def _nvfp4_unswizzle_scales_fake(swizzled, rows, cols):
    return swizzled.new_empty((rows, cols))
