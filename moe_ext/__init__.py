"""moe_ext: multi-LoRA Mixture-of-Experts kernels for PyTorch.

Importing the package loads the compiled library (registering `torch.ops.moe_ext.*`) and the
fake implementations that let the ops run under `torch.compile` and CUDA-graph capture.
"""

import torch

from . import (
    _C,  # noqa: F401  (loads the op library)
    layer,
    ops,
)
from .ops.moe_align import (
    moe_align_block_size,
    moe_align_block_size_out,
    moe_lora_align_block_size,
    moe_lora_align_block_size_out,
)
from .ops.moe_lora_gemm import fused_moe_lora, fused_moe_lora_expand, fused_moe_lora_shrink
from .ops.nvfp4 import (
    nvfp4_dequantize,
    nvfp4_global_scale,
    nvfp4_quantize,
    nvfp4_swizzle_scales,
    nvfp4_unswizzle_scales,
)

__version__ = "0.1.0"


def cuda_kernels_built() -> bool:
    """True when this build registered CUDA kernels (independent of a GPU being visible)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(
        "moe_ext::moe_align_block_size_out", "CUDA"
    )


def cuda_available() -> bool:
    """True when the CUDA kernels were built and a CUDA device is visible."""
    return cuda_kernels_built() and torch.cuda.is_available()


__all__ = [
    "ops",
    "cuda_kernels_built",
    "cuda_available",
    "moe_align_block_size",
    "moe_align_block_size_out",
    "moe_lora_align_block_size",
    "moe_lora_align_block_size_out",
    "fused_moe_lora",
    "fused_moe_lora_shrink",
    "fused_moe_lora_expand",
    "layer",
    "nvfp4_quantize",
    "nvfp4_dequantize",
    "nvfp4_swizzle_scales",
    "nvfp4_unswizzle_scales",
    "nvfp4_global_scale",
]
