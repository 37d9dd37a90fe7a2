"""Runs the LoRA align op once per size, for a profiler (ncu) to time each kernel."""

import torch

import moe_ext

for T in (1024, 16384):
    ids = torch.rand(T, 128, device="cuda").argsort(dim=1)[:, :8].int().contiguous()
    slots = torch.arange(T, device="cuda", dtype=torch.int32) % 16
    moe_ext.moe_lora_align_block_size(ids, slots, 128, 64, 16)
    torch.cuda.synchronize()
