"""A small fused_moe_lora / shrink / expand case (bad routing planted) for compute-sanitizer."""

import sys

import torch

sys.path.insert(0, "tests")
from test_moe_lora_gemm import make_case, run_fused  # noqa: E402

import moe_ext  # noqa: E402

# (T, K, r, block size, x per route, offset, slices): one K chunk, a K split of 8 chunks, gate/up
# slices sharing the x tile at >= 1024 routes, a K split at >= 1024 routes, the element-wise
# output path.
CASES = ((21, 136, 16, 4, False, 8, 2), (21, 136, 24, 32, True, 8, 2),
         (21, 136, 64, 64, False, 8, 2), (5, 2056, 24, 16, False, 8, 2),
         (400, 136, 16, 64, False, 2, 2), (342, 1024, 16, 64, True, 8, 1))
for T, K, r, bs, per_route, offset, S in CASES:
    c = make_case("cuda", torch.bfloat16, T=T, k=3, E=5, L=3, K=K, N=136, r=r, S=S,
                  block_size=bs, x_per_route=per_route, offset=offset, extra_cols=8)
    run_fused(c, True, True, offset)
    run_fused(c, False, False, offset)
    inter = torch.empty(S, T * 3, r, dtype=torch.bfloat16, device="cuda")
    align = (c["sorted_token_ids"], c["expert_ids"], c["num_tokens_post_pad"])
    moe_ext.fused_moe_lora_shrink(inter, c["x"], c["lora_a"], *align, 3, c["adapter_enabled"])
    out = c["output"].clone()
    moe_ext.fused_moe_lora_expand(out, inter, c["lora_b"], c["topk_weights"], *align, 3, True,
                                  True, offset, c["adapter_enabled"])
torch.cuda.synchronize()
print("sanitizer case done")
