"""A small fused_moe_lora / shrink / expand case (bad routing planted) for compute-sanitizer."""

import sys

import torch

sys.path.insert(0, "tests")
from test_moe_lora_gemm import make_case, run_fused  # noqa: E402

import moe_ext  # noqa: E402

# (T, K, r, block size, x per route, offset, slices): one K chunk, a K split of 8 chunks, gate/up
# slices sharing the x tile at >= 1024 routes, a K split at >= 1024 routes, the element-wise
# output path; then expand items of several column tiles (decode sizes), decode clusters whose
# output tile shares the operands' shared memory, and stream-expand items of 7 tiles through a
# ring of 3 slots.
SHAPE = dict(k=3, E=5, L=3, N=136)
CASES = ((21, 136, 16, 4, False, 8, 2), (21, 136, 24, 32, True, 8, 2),
         (21, 136, 64, 64, False, 8, 2), (5, 2056, 24, 16, False, 8, 2),
         (400, 136, 16, 64, False, 2, 2), (342, 1024, 16, 64, True, 8, 1))
SPAN_SHAPE = dict(k=8, E=128, L=4, N=2000)
SPAN_CASES = ((16, 256, 16, 16, True, 8, 1), (40, 128, 64, 16, False, 2, 2),
              (16, 1408, 16, 16, True, 8, 1))
RING_SHAPE = dict(k=2, E=8, L=4, N=5000)
RING_CASES = ((32, 4096, 64, 16, False, 8, 2),)
for shape, (T, K, r, bs, per_route, offset, S) in (
    [(SHAPE, c) for c in CASES] + [(SPAN_SHAPE, c) for c in SPAN_CASES]
    + [(RING_SHAPE, c) for c in RING_CASES]
):
    k = shape["k"]
    c = make_case("cuda", torch.bfloat16, T=T, K=K, r=r, S=S, block_size=bs,
                  x_per_route=per_route, offset=offset, extra_cols=8, **shape)
    run_fused(c, True, True, offset)
    run_fused(c, False, False, offset)
    inter = torch.empty(S, T * k, r, dtype=torch.bfloat16, device="cuda")
    align = (c["sorted_token_ids"], c["expert_ids"], c["num_tokens_post_pad"])
    moe_ext.fused_moe_lora_shrink(inter, c["x"], c["lora_a"], *align, k, c["adapter_enabled"])
    out = c["output"].clone()
    moe_ext.fused_moe_lora_expand(out, inter, c["lora_b"], c["topk_weights"], *align, k, True,
                                  True, offset, c["adapter_enabled"])
torch.cuda.synchronize()
print("sanitizer case done")
