"""fused_moe_lora / _shrink / _expand against moe_ext.reference on random data, CPU and CUDA."""

import itertools

import pytest
import torch

import moe_ext
from moe_ext import reference
from moe_ext.presets import PRESETS

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
TOL = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=4e-2, rtol=2e-2),
}


def make_case(
    device="cpu", dtype=torch.bfloat16, T=13, k=3, E=6, L=3, K=96, N=48, r=16, S=2,
    x_per_route=False, out3d=True, offset=0, extra_cols=0, block_size=4, shared_experts=False,
    plant=True, seed=0,
):
    """Random inputs, alignment from the reference (bad routing values planted), poisoned out."""
    g = torch.Generator().manual_seed(seed)
    numel = T * k
    topk_ids = torch.randint(0, E, (T, k), generator=g, dtype=torch.int32)
    mapping = torch.randint(-1, L, (T,), generator=g, dtype=torch.int32)
    if T > 2:
        mapping[1] = L + 2  # out of range: dropped like -1
    if plant and T > 3:
        topk_ids[2, 0] = E + 5  # not routed here
    enabled = torch.ones(L + 1, dtype=torch.int32)
    sorted_ids, expert_ids, post_pad = reference.moe_lora_align_block_size(
        topk_ids, mapping, E, block_size, L
    )
    if plant:
        pad = sorted_ids == numel
        bad = torch.randint(0, 3, sorted_ids.shape, generator=g)
        sorted_ids[pad & (bad == 0)] = numel + 7
        sorted_ids[pad & (bad == 1)] = -3
        expert_ids[expert_ids == -1] = E + 11  # unused blocks claim a bogus expert
        post_pad[-1] = sorted_ids.shape[1] + 64  # beyond P: clamped
        if L > 2:
            enabled[1] = 0
    x_rows = numel if x_per_route else T
    x = torch.randn(x_rows, K, generator=g).to(dtype)
    e_dim = 1 if shared_experts else E
    lora_a = [(torch.randn(L, e_dim, r, K, generator=g) / K**0.5).to(dtype) for _ in range(S)]
    lora_b = [(torch.randn(L, e_dim, N, r, generator=g) / r**0.5).to(dtype) for _ in range(S)]
    if shared_experts:  # stride 0 on the expert dim
        lora_a = [a.expand(L, E, r, K) for a in lora_a]
        lora_b = [b.expand(L, E, N, r) for b in lora_b]
    W = offset + S * N + extra_cols
    shape = (T, k, W) if out3d else (numel, W)
    output = torch.randn(shape, generator=g).to(dtype)
    weights = torch.rand(T, k, generator=g)
    case = dict(
        output=output, x=x, lora_a=lora_a, lora_b=lora_b, topk_weights=weights,
        sorted_token_ids=sorted_ids, expert_ids=expert_ids, num_tokens_post_pad=post_pad,
        top_k=k, adapter_enabled=enabled if plant else None,
    )
    return {key: to_device(v, device) for key, v in case.items()}


def to_device(v, device):
    if isinstance(v, torch.Tensor):
        return v.to(device)
    if isinstance(v, list):
        return [t.to(device) for t in v]
    return v


def run_fused(c, mul, add, offset=0):
    out = c["output"].clone()
    moe_ext.fused_moe_lora(
        out, c["x"], c["lora_a"], c["lora_b"], c["topk_weights"], c["sorted_token_ids"],
        c["expert_ids"], c["num_tokens_post_pad"], c["top_k"], mul, add, offset,
        c["adapter_enabled"],
    )
    return out


def opcheck_fused(c, mul, add, offset=0):
    """torch.library.opcheck (schema, fake, mutation and compile checks) on this sample."""
    torch.library.opcheck(
        torch.ops.moe_ext.fused_moe_lora.default,
        (c["output"].clone(), c["x"], c["lora_a"], c["lora_b"], c["topk_weights"],
         c["sorted_token_ids"], c["expert_ids"], c["num_tokens_post_pad"], c["top_k"], mul, add,
         offset, c["adapter_enabled"]),
    )


def ref_fused(c, mul, add, offset=0):
    return reference.fused_moe_lora(
        c["output"], c["x"], c["lora_a"], c["lora_b"], c["topk_weights"], c["sorted_token_ids"],
        c["expert_ids"], c["num_tokens_post_pad"], c["top_k"], mul, add, offset,
        c["adapter_enabled"],
    )


def lora_routes(c):
    out = c["output"]
    numel = out.shape[0] * c["top_k"] if out.dim() == 3 else out.shape[0]
    routes, _, _ = reference.lora_routes_of_alignment(
        c["sorted_token_ids"], c["expert_ids"], c["num_tokens_post_pad"], numel,
        c["lora_a"][0].shape[1], c["adapter_enabled"],
    )
    return routes, numel


def check(c, got, want, add, offset):
    """Close inside the LoRA columns of LoRA routes; bit-exact (or 0) everywhere else."""
    dtype = c["x"].dtype
    got, want = got.cpu(), want.cpu()
    routes, numel = lora_routes(c)
    assert routes.numel() > 0, "the case must exercise at least one LoRA route"
    g2, w2, o2 = (t.reshape(numel, -1) for t in (got, want, c["output"].cpu()))
    S, N = len(c["lora_b"]), c["lora_b"][0].shape[2]
    cols = slice(offset, offset + S * N)
    torch.testing.assert_close(g2[routes, cols].float(), w2[routes, cols].float(), **TOL[dtype])
    # Columns outside the slice range: never written.
    outside = torch.ones(g2.shape[1], dtype=torch.bool)
    outside[cols] = False
    assert torch.equal(g2[:, outside], o2[:, outside])
    others = torch.ones(numel, dtype=torch.bool)
    others[routes] = False
    if add:
        assert torch.equal(g2[others], o2[others])
    else:
        assert torch.all(g2[others][:, cols] == 0)


RANKS = [8, 16, 24, 32, 64, 128, 20]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("r", RANKS)
def test_fused_ranks(device, dtype, r):
    if device == "cuda" and dtype == torch.float32:
        pytest.skip("float32 runs on the CPU only")
    i = RANKS.index(r)
    mul, add, S = bool(i & 1), bool(i & 2) or r == 128, 1 + (i % 2)
    c = make_case(device, dtype, r=r, S=S, N=136 if r >= 64 else 48, seed=i)
    check(c, run_fused(c, mul, add), ref_fused(c, mul, add), add, 0)
    opcheck_fused(c, mul, add)


FLAGS = list(itertools.product([False, True], repeat=5))  # mul, add, x_per_route, out3d, S2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "".join(str(int(v)) for v in f))
def test_fused_flags(device, flags):
    mul, add, per_route, out3d, s2 = flags
    offset = 16 if out3d else 8
    c = make_case(
        device, torch.bfloat16, x_per_route=per_route, out3d=out3d, S=2 if s2 else 1,
        offset=offset, extra_cols=24, block_size=8 if per_route else 4,
    )
    check(c, run_fused(c, mul, add, offset), ref_fused(c, mul, add, offset), add, offset)
    opcheck_fused(c, mul, add, offset)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stride0_experts_and_odd_offset(device, dtype):
    # Shared adapters (stride 0 on E), an offset that is not a multiple of 8 (scalar stores).
    c = make_case(device, dtype, shared_experts=True, offset=3, extra_cols=5, r=32, N=64)
    check(c, run_fused(c, True, True, 3), ref_fused(c, True, True, 3), True, 3)
    opcheck_fused(c, True, True, 3)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_poison_overwrite(device):
    c = make_case(device, torch.bfloat16, offset=8, extra_cols=8)
    c["output"] = torch.full_like(c["output"], float("nan"))
    got = run_fused(c, True, False, 8).cpu().reshape(-1, c["output"].shape[-1])
    cols = got[:, 8 : 8 + 2 * 48]
    assert not torch.isnan(cols).any(), "every element of the slice columns must be written"
    assert torch.isnan(got[:, :8]).all() and torch.isnan(got[:, 8 + 2 * 48 :]).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("K", [200, 1024])  # one K chunk / split K on the GPU
def test_shrink_then_expand_equals_fused(device, dtype, K):
    c = make_case(device, dtype, r=24, K=K, N=40)
    numel = c["output"].shape[0] * c["top_k"]
    inter = torch.full((2, numel, 24), float("nan"), dtype=dtype, device=device)
    moe_ext.fused_moe_lora_shrink(
        inter, c["x"], c["lora_a"], c["sorted_token_ids"], c["expert_ids"],
        c["num_tokens_post_pad"], c["top_k"], c["adapter_enabled"],
    )
    routes, _ = lora_routes(c)
    want = reference.fused_moe_lora_shrink(
        c["x"], c["lora_a"], c["sorted_token_ids"], c["expert_ids"], c["num_tokens_post_pad"],
        c["top_k"], numel, c["adapter_enabled"],
    )
    torch.testing.assert_close(inter.cpu()[:, routes].float(), want[:, routes].float(),
                               **TOL[dtype])
    out = c["output"].clone()
    moe_ext.fused_moe_lora_expand(
        out, inter, c["lora_b"], c["topk_weights"], c["sorted_token_ids"], c["expert_ids"],
        c["num_tokens_post_pad"], c["top_k"], True, True, 0, c["adapter_enabled"],
    )
    assert torch.equal(out, run_fused(c, True, True))


@pytest.mark.parametrize("device", DEVICES)
def test_bad_routing_everywhere(device):
    # Every alignment value garbage: ids, experts and totals far out of range, never followed.
    c = make_case(device, torch.float16, plant=False)
    g = torch.Generator().manual_seed(3)
    for key in ("sorted_token_ids", "expert_ids"):
        t = c[key]
        c[key] = torch.randint(-(2**31), 2**31 - 1, t.shape, generator=g, dtype=torch.int32).to(
            device
        )
    c["num_tokens_post_pad"] = torch.full_like(c["num_tokens_post_pad"], 2**31 - 1)
    got = run_fused(c, True, True)
    assert torch.equal(got, c["output"]), "no valid route: output must stay bit-identical"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets(device, preset):  # (hidden H, expert intermediate I, experts E, top-k)
    H, inter_size, E, k = PRESETS[preset]
    T, L, r = 5, 4, 16
    gate_up = make_case(device, torch.bfloat16, T=T, k=k, E=E, L=L, K=H, N=inter_size, r=r,
                        S=2, block_size=16, seed=1)
    check(gate_up, run_fused(gate_up, False, True), ref_fused(gate_up, False, True), True, 0)
    down = make_case(device, torch.bfloat16, T=T, k=k, E=E, L=L, K=inter_size, N=H, r=r, S=1,
                     x_per_route=True, block_size=16, seed=2)
    check(down, run_fused(down, True, True), ref_fused(down, True, True), True, 0)


@pytest.mark.cuda
@pytest.mark.parametrize("r", [16, 64])
def test_cuda_matches_cpu_and_is_deterministic(r):
    c = make_case("cpu", torch.bfloat16, T=300, k=4, E=8, L=4, K=512, N=264, r=r, block_size=32)
    cg = {key: to_device(v, "cuda") for key, v in c.items()}
    got = run_fused(cg, True, True)
    assert torch.equal(got, run_fused(cg, True, True)), "two runs must be bit-identical"
    check(c, got.cpu(), run_fused(c, True, True), True, 0)


# GPU plans: prefill (64-row tiles, gate/up slices sharing the x tile, pipelined column tiles),
# K split over a cluster of CTAs (decode, long K), block size 128 (two row tiles per block).
GPU_PLAN_CASES = {
    "prefill_s2_r16": dict(T=1024, k=8, E=16, L=4, K=256, N=1000, r=16, block_size=64),
    "prefill_r64_bs128": dict(T=600, k=4, E=8, L=2, K=192, N=264, r=64, block_size=128),
    # 64-row expand items of two column tiles: three tiles, the second span holds one
    "prefill_span2_odd": dict(T=300, k=4, E=8, L=3, K=320, N=264, r=24, S=1, x_per_route=True,
                              block_size=64),
    "cluster_r64": dict(T=3, k=2, E=8, L=4, K=4096, N=520, r=64, block_size=16),
    "cluster_r24": dict(T=5, k=2, E=4, L=2, K=2056, N=136, r=24, block_size=16),
    "cluster_r128_bs32": dict(T=6, k=2, E=4, L=2, K=1536, N=256, r=128, block_size=32),
    # >= 1024 routes with K split in 4: fp32 partials summed once (reduce kernel), then the expand
    "prefill_splitk": dict(T=256, k=4, E=4, L=2, K=1024, N=136, r=16, S=1, x_per_route=True,
                           block_size=64),
    # decode-size expand: the stream expand from the decode shrink's rank vectors (16 tiles
    # per slice, items of 3), and tiled items of 2 adjacent column tiles (rank 64 past 264
    # routes on 132-SM GPUs), the last span partly past N
    "decode_stream_from_shrink": dict(T=16, k=8, E=128, L=4, K=256, N=2000, r=16, S=1,
                                      x_per_route=True, block_size=16),
    "decode_span2_r64": dict(T=40, k=8, E=64, L=4, K=128, N=520, r=64, block_size=16),
    "decode_span2_bs32": dict(T=64, k=4, E=8, L=2, K=128, N=600, r=40, block_size=32),
    # one-launch decode path: clusters of 6 CTAs holding 3 column tiles each; clusters of 8
    # where 3 CTAs have no column tile (they only add their K chunk)
    "decode_c6_span3": dict(T=5, k=8, E=32, L=4, K=768, N=2048, r=16, S=1, x_per_route=True,
                            block_size=16),
    "decode_idle_ctas": dict(T=3, k=4, E=16, L=2, K=1024, N=520, r=32, block_size=16),
    # 128 items: clusters cut to 4 CTAs (K chunks of 192) to fit one wave on 132 SMs, 4 tiles each
    "decode_c4_one_wave": dict(T=16, k=8, E=128, L=4, K=768, N=2048, r=16, S=1,
                               x_per_route=True, block_size=16),
    # clusters of 5 (K chunks of 288) whose output tile shares the operands' shared memory
    "decode_late_out": dict(T=16, k=6, E=64, L=4, K=1408, N=2048, r=16, S=1, x_per_route=True,
                            block_size=16),
    # blocks of 16 with too many items for one wave of decode clusters: shrink + expand kernels
    "bs16_two_kernels": dict(T=64, k=8, E=64, L=4, K=1024, N=520, r=16, block_size=16),
    # stream expand: items of 7 column tiles through a ring of 3 slots (the last tile partly
    # past N), rank vectors summed from 8 K chunks in 5 groups inside the ring's last slot
    "stream_ring_wrap": dict(T=32, k=2, E=8, L=4, K=4096, N=5000, r=64, block_size=16),
}


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(GPU_PLAN_CASES))
@pytest.mark.parametrize("offset", [8, 2])  # 16-byte output rows / element-wise path
def test_cuda_plans(name, offset):
    c = make_case("cpu", torch.bfloat16, offset=offset, extra_cols=8, seed=5,
                  **GPU_PLAN_CASES[name])
    cg = {key: to_device(v, "cuda") for key, v in c.items()}
    for mul, add in ((True, True), (False, False)):
        got = run_fused(cg, mul, add, offset)
        assert torch.equal(got, run_fused(cg, mul, add, offset)), "runs must be bit-identical"
        check(c, got.cpu(), ref_fused(c, mul, add, offset), add, offset)
    numel = c["output"].shape[0] * c["top_k"]
    r = c["lora_a"][0].shape[2]
    inter = torch.full((len(c["lora_a"]), numel, r), float("nan"), dtype=torch.bfloat16,
                       device="cuda")
    align = (cg["sorted_token_ids"], cg["expert_ids"], cg["num_tokens_post_pad"])
    moe_ext.fused_moe_lora_shrink(inter, cg["x"], cg["lora_a"], *align, c["top_k"],
                                  cg["adapter_enabled"])
    out = cg["output"].clone()
    moe_ext.fused_moe_lora_expand(out, inter, cg["lora_b"], cg["topk_weights"], *align,
                                  c["top_k"], True, True, offset, cg["adapter_enabled"])
    assert torch.equal(out, run_fused(cg, True, True, offset)), "shrink + expand == fused"


@pytest.mark.cuda
def test_cuda_rejects_float32():
    c = make_case("cuda", torch.float32)
    with pytest.raises(RuntimeError, match="float16 or bfloat16"):
        run_fused(c, False, True)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda c: c.update(top_k=5), "top_k|must be"),
        (lambda c: c.update(lora_b=[c["lora_b"][0]]), "slices"),
        (lambda c: c.update(x=c["x"][:, :64]), "x.size"),
        (lambda c: c.update(expert_ids=c["expert_ids"][:, :-1].contiguous()), "multiple"),
        (lambda c: c.update(sorted_token_ids=c["sorted_token_ids"].long()), "int32"),
        (lambda c: c.update(output=c["output"][..., :50]), "offset must be in"),
        (lambda c: c.update(lora_a=[a[..., :0] for a in c["lora_a"]], x=c["x"][:, :0]),
         "positive multiples of 8"),
        (lambda c: c.update(lora_b=[b[:, :, :0] for b in c["lora_b"]]), "positive multiples of 8"),
        (lambda c: c.update(expert_ids=c["expert_ids"].long()), "expert_ids must have dtype"),
        (lambda c: c.update(num_tokens_post_pad=c["num_tokens_post_pad"].repeat_interleave(2)[::2]),
         "num_tokens_post_pad must be contiguous"),
        (lambda c: c.update(topk_weights=c["topk_weights"][:2]), "topk_weights"),
        (lambda c: c.update(adapter_enabled=torch.ones(7, dtype=torch.int32)), "adapter_enabled"),
    ],
)
def test_bad_arguments(mutate, match):
    c = make_case()
    mutate(c)
    with pytest.raises(RuntimeError, match=match):
        run_fused(c, True, True)


def test_meta_tensor_among_cpu_ones_raises():
    """One meta argument sends the call to the fake: it must raise, not return unwritten."""
    c = make_case()
    c["topk_weights"] = c["topk_weights"].to("meta")
    with pytest.raises(RuntimeError, match="topk_weights must be on cpu"):
        run_fused(c, True, True)


@pytest.mark.parametrize("offset", [-8, 2**63 - 8, 2**40])
def test_offset_out_of_range(offset):
    """offset + S*N would overflow int64 (or the kernels' int32 column index): rejected by name."""
    c = make_case()
    with pytest.raises(RuntimeError, match="offset must be in"):
        run_fused(c, True, True, offset)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("add", [True, False])
def test_empty_batch_and_alignment_without_blocks(device, add):
    """T = 0 straight from the align op; and T > 0 with an alignment of no blocks (P = 0): no
    route has a LoRA, so add leaves the output as is and overwrite zeroes the slice columns."""
    L, E, k = 3, 6, 3
    empty = make_case(device, T=4, k=k, E=E, L=L)
    ids = torch.empty(0, k, dtype=torch.int32, device=device)
    align = moe_ext.moe_lora_align_block_size(
        ids, torch.empty(0, dtype=torch.int32, device=device), E, 4, L
    )
    assert align[0].shape == (L, 0)
    out = torch.empty(0, k, empty["output"].shape[-1], device=device, dtype=torch.bfloat16)
    moe_ext.fused_moe_lora(out, empty["x"][:0], empty["lora_a"], empty["lora_b"],
                           empty["topk_weights"][:0], *align, k, True, add)
    inter = torch.empty(2, 0, 16, device=device, dtype=torch.bfloat16)
    moe_ext.fused_moe_lora_shrink(inter, empty["x"][:0], empty["lora_a"], *align, k)
    moe_ext.fused_moe_lora_expand(out, inter, empty["lora_b"], empty["topk_weights"][:0], *align,
                                  k, True, add)
    no_blocks = (torch.empty(L, 0, dtype=torch.int32, device=device),) * 2 + (
        torch.zeros(L, dtype=torch.int32, device=device),)
    c = make_case(device, T=4, k=k, E=E, L=L, extra_cols=8)
    c.update(sorted_token_ids=no_blocks[0], expert_ids=no_blocks[1],
             num_tokens_post_pad=no_blocks[2])
    got = run_fused(c, True, add).cpu()
    want = c["output"].cpu().clone()
    if not add:
        want[..., : 2 * 48] = 0
    assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_top1_output_view_of_a_wider_buffer(device):
    """[T, 1, W] output whose rows are a view of a wider buffer (T*k rows of stride != W)."""
    c = make_case(device, k=1, offset=8)
    T, _, W = c["output"].shape
    wide = torch.randn(T, W + 5, device=device).to(c["output"].dtype)
    c["output"] = wide[:, :W].unsqueeze(1)
    got = run_fused(c, True, True, 8)
    check(c, got, ref_fused(c, True, True, 8), True, 8)


def opcheck_samples(device):
    c = make_case(device, torch.bfloat16, T=6, k=2, K=32, N=16)
    numel = 12
    inter = torch.randn(2, numel, 16, device=device).to(torch.bfloat16)
    align = (c["sorted_token_ids"], c["expert_ids"], c["num_tokens_post_pad"])
    return [
        (torch.ops.moe_ext.fused_moe_lora.default,
         (c["output"], c["x"], c["lora_a"], c["lora_b"], c["topk_weights"], *align, 2, True,
          True, 0, c["adapter_enabled"])),
        (torch.ops.moe_ext.fused_moe_lora_shrink.default,
         (inter, c["x"], c["lora_a"], *align, 2, c["adapter_enabled"])),
        (torch.ops.moe_ext.fused_moe_lora_expand.default,
         (c["output"], inter, c["lora_b"], c["topk_weights"], *align, 2, True, False, 0, None)),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for op, args in opcheck_samples(device):
        torch.library.opcheck(op, args)


def test_compile_fullgraph_cpu():
    c = make_case("cpu", torch.bfloat16)

    def f(out, x, weights):
        moe_ext.fused_moe_lora(
            out, x, c["lora_a"], c["lora_b"], weights, c["sorted_token_ids"], c["expert_ids"],
            c["num_tokens_post_pad"], c["top_k"], True, True, 0, c["adapter_enabled"],
        )
        return out * 1

    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    got = compiled(c["output"].clone(), c["x"], c["topk_weights"])
    check(c, got, ref_fused(c, True, True), True, 0)


@pytest.mark.cuda
def test_compile_reduce_overhead_cuda():
    c = make_case("cuda", torch.bfloat16)

    def f(out, x, weights):
        moe_ext.fused_moe_lora(
            out, x, c["lora_a"], c["lora_b"], weights, c["sorted_token_ids"], c["expert_ids"],
            c["num_tokens_post_pad"], c["top_k"], True, True, 0, c["adapter_enabled"],
        )
        return out.clone()

    compiled = torch.compile(f, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):
        got = compiled(c["output"].clone(), c["x"], c["topk_weights"])
    check(c, got, ref_fused(c, True, True), True, 0)


@pytest.mark.cuda
def test_cuda_graph_replay_new_routing_and_weights():
    """Capture once, then write new routing, new token->LoRA mapping and new weights into the
    same buffers: every replay must match the reference of its own inputs."""
    shapes = dict(T=40, k=4, E=8, L=4, K=256, N=144, r=32, block_size=16)
    c = make_case("cuda", torch.bfloat16, seed=10, **shapes)
    static = {key: (v.clone() if isinstance(v, torch.Tensor) else
                    [t.clone() for t in v] if isinstance(v, list) else v)
              for key, v in c.items()}
    out = static["output"].clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())

    def call():
        moe_ext.fused_moe_lora(
            out, static["x"], static["lora_a"], static["lora_b"], static["topk_weights"],
            static["sorted_token_ids"], static["expert_ids"], static["num_tokens_post_pad"],
            static["top_k"], True, True, 0, static["adapter_enabled"],
        )

    with torch.cuda.stream(stream):
        call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    for seed in (11, 12, 13):
        new = make_case("cuda", torch.bfloat16, seed=seed, **shapes)
        for key, v in new.items():
            if isinstance(v, torch.Tensor):
                static[key].copy_(v)
            elif isinstance(v, list):
                for dst, src in zip(static[key], v):
                    dst.copy_(src)
        out.copy_(new["output"])
        graph.replay()
        torch.cuda.synchronize()
        check(new, out, ref_fused(new, True, True), True, 0)


@pytest.mark.parametrize("device", DEVICES)
def test_layer_helper(device):
    from moe_ext.layer import MoELoRA

    T, k, E, L, H, inter_size, r = 9, 2, 8, 3, 64, 48, 16
    g = torch.Generator().manual_seed(5)

    def w(*shape):
        return (torch.randn(*shape, generator=g) / shape[-1] ** 0.5).to(torch.bfloat16).to(device)

    lora = MoELoRA([w(L, E, r, H), w(L, E, r, H)], [w(L, E, inter_size, r)] * 2,
                   w(L, E, r, inter_size), w(L, E, H, r))
    topk_ids = torch.randint(0, E, (T, k), generator=g, dtype=torch.int32).to(device)
    mapping = torch.randint(-1, L, (T,), generator=g, dtype=torch.int32).to(device)
    routing = lora.align(topk_ids, mapping)
    x = w(T, H)
    gate_up = w(T, k, 2 * inter_size)
    want = reference.fused_moe_lora(gate_up, x, lora.gate_up_a, lora.gate_up_b,
                                    torch.ones(T, k), *routing[:3], k)
    got = gate_up.clone()
    lora.gate_up(got, x, routing)
    torch.testing.assert_close(got.cpu().float(), want.float(), **TOL[torch.bfloat16])
    act = w(T * k, inter_size)
    down = w(T, k, H)
    weights = torch.rand(T, k, generator=g).to(device)
    want = reference.fused_moe_lora(down, act, lora.down_a, lora.down_b, weights, *routing[:3], k,
                                    mul_routed_weight=True)
    got = down.clone()
    lora.down(got, act, weights, routing)
    torch.testing.assert_close(got.cpu().float(), want.float(), **TOL[torch.bfloat16])


@pytest.mark.parametrize(
    "routes, experts, loras, want",
    [(8, 128, 4, 16), (8192, 128, 4, 16), (6144, 64, 4, 32), (24576, 64, 4, 64),
     (2048, 8, 4, 32), (8192, 8, 4, 64), (512, 8, 4, 16)],
)
def test_choose_block_size(routes, experts, loras, want):
    from moe_ext.layer import choose_block_size

    # Routes per (adapter, expert) pair set the size; 64 only where that still makes 64 blocks.
    assert choose_block_size(routes, experts, loras) == want
