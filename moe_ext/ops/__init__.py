"""Typed wrappers and fake implementations of `torch.ops.moe_ext.*`, one module per family."""

from . import moe_align, moe_lora_gemm, nvfp4  # noqa: F401
