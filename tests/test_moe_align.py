"""moe_align_block_size / moe_lora_align_block_size: reference, CPU, CUDA, compile, graphs."""

import itertools
import random

import pytest
import torch

import moe_ext
from moe_ext import reference
from moe_ext._shapes import padded_length

ops = torch.ops.moe_ext
POISON = -7777


def make_routing(T, k, E, L, *, bad=True, seed=0, ids_dtype=torch.int32, device="cpu"):
    """Random top-k routing (distinct experts per token when possible) and token->slot mapping,
    with planted bad values: ids < 0 and >= E (for int64 ids also >= 2^32 with in-range low
    bits, which a truncation to int32 would route), slots -1, >= L and < -1."""
    g = torch.Generator().manual_seed(seed)
    if k <= E:
        ids = torch.rand(T, E, generator=g).argsort(dim=1)[:, :k].contiguous()
    else:
        ids = torch.randint(0, E, (T, k), generator=g)
    slots = torch.randint(-1, L, (T,), generator=g)
    if bad and T * k >= 4:
        flat = ids.view(-1)
        n_bad = max(1, T * k // 20)
        where = torch.randperm(T * k, generator=g)[:n_bad]
        flat[where] = torch.tensor([-1, E, E + 17, -(2**31) + 1] * n_bad)[:n_bad]
        if ids_dtype == torch.int64:
            flat[where[::2]] = 2**32 + 1
        bad_slots = torch.randperm(T, generator=g)[: max(1, T // 10)]
        slots[bad_slots] = torch.tensor([L, -2, L + 5, -100] * T)[: bad_slots.numel()]
    return ids.to(ids_dtype).to(device), slots.int().to(device)


def assert_align_equal(got, want):
    for name, g, w in zip(("sorted_token_ids", "expert_ids", "num_tokens_post_pad"), got, want):
        assert g.dtype == torch.int32, name
        assert torch.equal(g.cpu(), w.cpu()), f"{name} differs"


# A sampled sweep of the grid (the full grid runs with --runslow).
GRID = list(
    itertools.product(
        [1, 7, 100, 1024, 4096], [1, 2, 6, 8, 22], [8, 60, 64, 128, 256, 1024], [1, 4, 16, 32],
        [16, 32, 64, 128],
    )
)
SAMPLED = random.Random(1).sample(GRID, 24)


@pytest.mark.parametrize("T,k,E,L,BS", SAMPLED)
def test_lora_align_cpu_matches_reference(T, k, E, L, BS):
    ids, slots = make_routing(T, k, E, L, seed=T * 7 + k)
    got = ops.moe_lora_align_block_size(ids, slots, E, BS, L)
    assert_align_equal(got, reference.moe_lora_align_block_size(ids, slots, E, BS, L))
    torch.library.opcheck(ops.moe_lora_align_block_size.default, (ids, slots, E, BS, L))


@pytest.mark.slow
@pytest.mark.parametrize("T,k,E,L,BS", GRID)
def test_lora_align_cpu_full_grid(T, k, E, L, BS):
    ids, slots = make_routing(T, k, E, L, seed=T + k + E)
    got = ops.moe_lora_align_block_size(ids, slots, E, BS, L)
    assert_align_equal(got, reference.moe_lora_align_block_size(ids, slots, E, BS, L))


@pytest.mark.parametrize("T,k,E,BS", [(1, 8, 128, 16), (33, 6, 60, 32), (1000, 2, 8, 64)])
@pytest.mark.parametrize("ids_dtype", [torch.int32, torch.int64])
def test_plain_align_cpu_matches_reference(T, k, E, BS, ids_dtype):
    ids, _ = make_routing(T, k, E, 1, seed=T, ids_dtype=ids_dtype)
    got = ops.moe_align_block_size(ids, E, BS)
    assert_align_equal(got, reference.moe_align_block_size(ids, E, BS))


def test_padded_length_formula_agrees_with_cpp():
    grid = itertools.product([0, 1, 5, 8, 63, 64, 1000], [1, 8, 60, 1024], [1, 16, 64])
    for numel, E, BS in grid:
        ids = torch.randint(0, E, (numel, 1), dtype=torch.int32)
        sorted_ids, experts, _ = ops.moe_align_block_size(ids, E, BS)
        assert sorted_ids.shape[0] == padded_length(numel, E, BS), (numel, E, BS)
        assert experts.shape[0] == padded_length(numel, E, BS) // BS


def test_reference_layout_invariants():
    T, k, E, L, BS = 300, 8, 64, 4, 16
    ids, slots = make_routing(T, k, E, L)
    sorted_ids, experts, totals = reference.moe_lora_align_block_size(ids, slots, E, BS, L)
    for slot in range(L):
        total = int(totals[slot])
        assert total % BS == 0
        row = sorted_ids[slot]
        assert torch.all(row[total:] == T * k)
        assert torch.all(experts[slot, total // BS :] == -1)
        routes = row[:total][row[:total] < T * k].long()
        block_of = torch.nonzero(row[:total] < T * k).flatten() // BS
        assert torch.all(ids.view(-1)[routes].long() == experts[slot, block_of].long())
        assert torch.all(slots[routes // k] == slot)


def test_expert_map_and_adapter_enabled_cpu():
    T, k, E, L, BS = 64, 4, 32, 4, 16
    ids, slots = make_routing(T, k, E, L, seed=3)
    expert_map = torch.randint(-1, E, (E,), dtype=torch.int32)
    expert_map[3] = E + 4  # a bad local id is dropped too
    for enabled in (
        torch.tensor([1, 0, 1, 1], dtype=torch.int32),
        torch.tensor([True, True, False, True, False]),
    ):
        got = ops.moe_lora_align_block_size(ids, slots, E, BS, L, enabled, expert_map)
        want = reference.moe_lora_align_block_size(ids, slots, E, BS, L, enabled, expert_map)
        assert_align_equal(got, want)
        off = torch.nonzero(enabled[:L] == 0).flatten()
        assert torch.all(got[2][off] == 0)
    got = ops.moe_align_block_size(ids, E, BS, expert_map)
    assert_align_equal(got, reference.moe_align_block_size(ids, E, BS, expert_map))


def test_out_variant_writes_every_element_and_is_deterministic():
    T, k, E, L, BS = 257, 8, 128, 16, 64
    ids, slots = make_routing(T, k, E, L, seed=9)
    want = reference.moe_lora_align_block_size(ids, slots, E, BS, L)
    outs = [torch.full_like(w, POISON) for w in want]
    moe_ext.moe_lora_align_block_size_out(ids, slots, E, BS, L, *outs)
    assert_align_equal(outs, want)
    again = [torch.full_like(w, POISON) for w in want]
    moe_ext.moe_lora_align_block_size_out(ids, slots, E, BS, L, *again)
    assert all(torch.equal(a, b) for a, b in zip(outs, again))


def test_bad_arguments_raise_naming_the_argument():
    ids, slots = make_routing(8, 2, 8, 2)
    cases = [
        (lambda: ops.moe_align_block_size(ids.float(), 8, 16), "topk_ids must have dtype"),
        (lambda: ops.moe_align_block_size(ids.view(-1), 8, 16), "topk_ids must have 2"),
        (lambda: ops.moe_align_block_size(ids.t(), 8, 16), "topk_ids must be contiguous"),
        (lambda: ops.moe_align_block_size(ids, 8, 0), "block_size"),
        (lambda: ops.moe_align_block_size(ids, 1025, 16), "num_experts"),
        (lambda: ops.moe_align_block_size(ids, 0, 16), "num_experts"),
        (lambda: ops.moe_lora_align_block_size(ids, slots[:-1], 8, 16, 2), "token_lora_mapping"),
        (lambda: ops.moe_lora_align_block_size(ids, slots.long(), 8, 16, 2), "token_lora_mapping"),
        (lambda: ops.moe_lora_align_block_size(ids, slots, 8, 16, 0), "max_loras"),
        (
            lambda: ops.moe_lora_align_block_size(
                ids, slots, 8, 16, 2, torch.ones(5, dtype=torch.int32)
            ),
            "adapter_enabled",
        ),
        (
            lambda: ops.moe_lora_align_block_size(ids, slots, 8, 16, 2, torch.ones(2)),
            "adapter_enabled",
        ),
        (
            lambda: ops.moe_align_block_size(ids, 8, 16, torch.zeros(7, dtype=torch.int32)),
            "expert_map",
        ),
    ]
    for call, message in cases:
        with pytest.raises((RuntimeError, ValueError), match=message):
            call()
    p = padded_length(16, 8, 16)
    good = [torch.empty(p, dtype=torch.int32), torch.empty(p // 16, dtype=torch.int32),
            torch.empty(1, dtype=torch.int32)]
    for idx, name in enumerate(["sorted_token_ids", "expert_ids", "num_tokens_post_pad"]):
        wrong_shape = list(good)
        wrong_shape[idx] = torch.empty(good[idx].numel() + 1, dtype=torch.int32)
        with pytest.raises(RuntimeError, match=name):
            moe_ext.moe_align_block_size_out(ids, 8, 16, *wrong_shape)
        wrong_dtype = list(good)
        wrong_dtype[idx] = good[idx].long()
        with pytest.raises(RuntimeError, match=name):
            moe_ext.moe_align_block_size_out(ids, 8, 16, *wrong_dtype)


def test_scalars_checked_before_shapes_eager_and_compiled():
    ids, slots = make_routing(8, 2, 8, 2)
    with pytest.raises(RuntimeError, match=r"num_experts must be in \[1, 1024\], got -5"):
        ops.moe_align_block_size(ids, -5, 16)
    with pytest.raises(RuntimeError, match=r"num_experts must be in \[1, 1024\], got -5"):
        ops.moe_lora_align_block_size(ids, slots, -5, 16, 2)
    for block_size in (0, 2048):  # the fake raises the eager op's message under compile
        compiled = torch.compile(
            lambda i, s, bs=block_size: ops.moe_lora_align_block_size(i, s, 8, bs, 2),
            fullgraph=True,
        )
        with pytest.raises(Exception, match=r"block_size must be in \[1, 1024\]"):
            compiled(ids, slots)


def test_out_buffers_checked_for_shape_and_overlap():
    T, k, E, L, BS = 8, 2, 8, 2, 1
    ids, slots = make_routing(T, k, E, L)
    p = padded_length(T * k, E, BS)
    good = [torch.empty(L, p, dtype=torch.int32), torch.empty(L, p // BS, dtype=torch.int32),
            torch.empty(L, dtype=torch.int32)]
    wrong = [torch.empty(L + 1, p, dtype=torch.int32), torch.empty(L + 1, p // BS,
             dtype=torch.int32), torch.empty(L + 1, dtype=torch.int32)]
    for idx, name in enumerate(["sorted_token_ids", "expert_ids", "num_tokens_post_pad"]):
        bufs = list(good)
        bufs[idx] = wrong[idx]
        with pytest.raises(RuntimeError, match=f"{name} must have shape"):
            moe_ext.moe_lora_align_block_size_out(ids, slots, E, BS, L, *bufs)
    # With block size 1 sorted_token_ids and expert_ids have the same shape: one buffer for both
    # would be accepted by the shape checks alone.
    shared = torch.empty(L, p, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="sorted_token_ids must not share memory with expert"):
        moe_ext.moe_lora_align_block_size_out(ids, slots, E, BS, L, shared, shared, good[2])
    flat_ids = ids.view(-1)
    with pytest.raises(RuntimeError, match="must not share memory with topk_ids"):
        moe_ext.moe_align_block_size_out(ids, E, BS, torch.empty(p, dtype=torch.int32),
                                         torch.empty(p, dtype=torch.int32), flat_ids[:1])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_out_buffers_at_unaligned_offsets(device):
    """_out buffers that are contiguous views at an offset of one int32 (not 16-byte aligned)."""
    T, k, E, L, BS = 100, 4, 32, 3, 16
    ids, slots = make_routing(T, k, E, L, seed=5, device=device)
    want = reference.moe_lora_align_block_size(ids.cpu(), slots.cpu(), E, BS, L)
    outs = [torch.full((w.numel() + 1,), POISON, dtype=torch.int32, device=device)[1:].view(w.shape)
            for w in want]
    moe_ext.moe_lora_align_block_size_out(ids, slots, E, BS, L, *outs)
    assert_align_equal(outs, want)


def _opcheck_samples(device):
    ids, slots = make_routing(37, 6, 60, 4, device=device)
    enabled = torch.tensor([1, 1, 0, 1], dtype=torch.int32, device=device)
    emap = torch.randint(-1, 60, (60,), dtype=torch.int32, device=device)
    p = padded_length(37 * 6, 60, 32)

    def bufs(lead):
        return [torch.full((*lead, p), POISON, dtype=torch.int32, device=device),
                torch.full((*lead, p // 32), POISON, dtype=torch.int32, device=device),
                torch.full((lead[0] if lead else 1,), POISON, dtype=torch.int32, device=device)]

    return [
        (ops.moe_align_block_size, (ids, 60, 32, None)),
        (ops.moe_align_block_size, (ids.long(), 60, 32, emap)),
        (ops.moe_align_block_size_out, (ids, 60, 32, emap, *bufs(()))),
        (ops.moe_lora_align_block_size, (ids, slots, 60, 32, 4, enabled, emap)),
        (ops.moe_lora_align_block_size_out, (ids, slots, 60, 32, 4, None, None, *bufs((4,)))),
    ]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_opcheck(device):
    for op, args in _opcheck_samples(device):
        torch.library.opcheck(op, args)


def test_torch_compile_dynamic_cpu():
    def layer_align(ids, slots):
        plain = ops.moe_align_block_size(ids, 64, 16)
        lora = ops.moe_lora_align_block_size(ids, slots, 64, 16, 4)
        return plain[0].sum() + plain[2][0], lora

    compiled = torch.compile(layer_align, fullgraph=True, dynamic=True)
    for T in (5, 17, 64):
        ids, slots = make_routing(T, 4, 64, 4, seed=T)
        got_sum, got = compiled(ids, slots)
        want_sum, want = layer_align(ids, slots)
        assert torch.equal(got_sum, want_sum)
        assert_align_equal(got, want)


# ---- CUDA ----------------------------------------------------------------------------------

CUDA_CASES = SAMPLED[:12] + [(1, 8, 128, 16, 64), (4096, 8, 128, 16, 64), (16384, 8, 128, 16, 64),
                             (65536, 22, 1024, 1, 128), (3, 22, 8, 32, 16),
                             (100, 4, 32, 3, 1), (77, 6, 60, 4, 3), (500, 8, 64, 4, 7),
                             (2000, 8, 1024, 8, 16)]


@pytest.mark.cuda
@pytest.mark.parametrize("T,k,E,L,BS", CUDA_CASES)
def test_lora_align_cuda_bit_exact_with_cpu(T, k, E, L, BS):
    ids, slots = make_routing(T, k, E, L, seed=T + 3)
    enabled = (torch.arange(L + 1) % 5 != 3).int()
    emap = torch.randperm(E).int()
    emap[::7] = -1
    want = ops.moe_lora_align_block_size(ids, slots, E, BS, L, enabled, emap)
    dev = [t.cuda() for t in (ids, slots, enabled, emap)]
    outs = [torch.full_like(w, POISON, device="cuda") for w in want]
    moe_ext.moe_lora_align_block_size_out(dev[0], dev[1], E, BS, L, *outs, dev[2], dev[3])
    assert_align_equal(outs, want)
    again = ops.moe_lora_align_block_size(dev[0], dev[1], E, BS, L, dev[2], dev[3])
    assert all(torch.equal(a, b) for a, b in zip(outs, again))
    torch.library.opcheck(ops.moe_lora_align_block_size_out.default,
                          (dev[0], dev[1], E, BS, L, dev[2], dev[3], *outs))


@pytest.mark.cuda
@pytest.mark.parametrize("T,k,E,BS", [(1, 8, 128, 16), (100, 6, 60, 32), (4096, 22, 1024, 64)])
@pytest.mark.parametrize("ids_dtype", [torch.int32, torch.int64])
def test_plain_align_cuda_bit_exact_with_cpu(T, k, E, BS, ids_dtype):
    ids, _ = make_routing(T, k, E, 1, seed=T, ids_dtype=ids_dtype)
    want = ops.moe_align_block_size(ids, E, BS)
    assert_align_equal(ops.moe_align_block_size(ids.cuda(), E, BS), want)


@pytest.mark.cuda
@pytest.mark.parametrize("T", [0, 50, 3000])
def test_lora_align_cuda_bool_enabled_and_int64_ids(T):
    k, E, L, BS = 6, 60, 4, 32
    ids, slots = make_routing(T, k, E, L, seed=T, ids_dtype=torch.int64)
    enabled = torch.tensor([True, False, True, True])
    want = reference.moe_lora_align_block_size(ids, slots, E, BS, L, enabled)
    got = ops.moe_lora_align_block_size(ids.cuda(), slots.cuda(), E, BS, L, enabled.cuda())
    assert_align_equal(got, want)


@pytest.mark.cuda
def test_cuda_rejects_mixed_devices():
    ids, slots = make_routing(8, 2, 8, 2)
    with pytest.raises(RuntimeError, match="token_lora_mapping must be on"):
        ops.moe_lora_align_block_size(ids.cuda(), slots, 8, 16, 2)
    with pytest.raises(RuntimeError, match="expert_map must be on"):
        ops.moe_align_block_size(ids.cuda(), 8, 16, torch.zeros(8, dtype=torch.int32))


@pytest.mark.cuda
@pytest.mark.parametrize("T,BS", [(256, 64), (2048, 128)])  # one chunk / the multi-chunk path
def test_cuda_graph_replay_with_new_routing(T, BS):
    k, E, L = 8, 128, 16
    ids_buf, slots_buf = make_routing(T, k, E, L, seed=1, device="cuda")
    p = padded_length(T * k, E, BS)
    outs = [torch.full((L, p), POISON, dtype=torch.int32, device="cuda"),
            torch.full((L, p // BS), POISON, dtype=torch.int32, device="cuda"),
            torch.full((L,), POISON, dtype=torch.int32, device="cuda")]
    moe_ext.moe_lora_align_block_size_out(ids_buf, slots_buf, E, BS, L, *outs)  # warm-up
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        moe_ext.moe_lora_align_block_size_out(ids_buf, slots_buf, E, BS, L, *outs)
        functional = ops.moe_align_block_size(ids_buf, E, BS)
    for seed in range(2, 6):
        ids, slots = make_routing(T, k, E, L, seed=seed)
        ids_buf.copy_(ids)
        slots_buf.copy_(slots)
        for o in outs:
            o.fill_(POISON)
        graph.replay()
        torch.cuda.synchronize()
        assert_align_equal(outs, reference.moe_lora_align_block_size(ids, slots, E, BS, L))
        assert_align_equal(functional, reference.moe_align_block_size(ids, E, BS))
