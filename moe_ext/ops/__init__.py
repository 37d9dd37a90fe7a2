"""Typed wrappers and fake implementations of `torch.ops.moe_ext.*`, one module per family."""

from . import moe_align, nvfp4  # noqa: F401
