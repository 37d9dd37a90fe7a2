"""A small fused_moe_lora / shrink / expand case (bad routing planted) for compute-sanitizer."""

import sys

import torch

sys.path.insert(0, "tests")
from test_moe_lora_gemm import make_case, run_fused  # noqa: E402

import moe_ext  # noqa: E402

for r, bs, per_route in ((16, 4, False), (24, 32, True), (64, 64, False)):
    c = make_case("cuda", torch.bfloat16, T=21, k=3, E=5, L=3, K=136, N=136, r=r,
                  block_size=bs, x_per_route=per_route, offset=8, extra_cols=8)
    run_fused(c, True, True, 8)
    run_fused(c, False, False, 8)
    inter = torch.empty(2, 63, r, dtype=torch.bfloat16, device="cuda")
    align = (c["sorted_token_ids"], c["expert_ids"], c["num_tokens_post_pad"])
    moe_ext.fused_moe_lora_shrink(inter, c["x"], c["lora_a"], *align, 3, c["adapter_enabled"])
    out = c["output"].clone()
    moe_ext.fused_moe_lora_expand(out, inter, c["lora_b"], c["topk_weights"], *align, 3, True,
                                  True, 8, c["adapter_enabled"])
torch.cuda.synchronize()
print("sanitizer case done")
