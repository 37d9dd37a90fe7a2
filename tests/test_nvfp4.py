"""nvfp4 family: quantize / dequantize / swizzle, byte-exact against moe_ext.reference, CUDA equal
to CPU, on random data with outliers, zero blocks, odd K and M, bf16/fp16/fp32."""

import pytest
import torch

import moe_ext
from moe_ext import reference as ref

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# (leading shape, K): K not a multiple of 64, M not a multiple of 128, model hidden sizes.
SHAPES = [((1,), 16), ((3,), 48), ((130,), 80), ((257,), 2048), ((2, 5), 7168), ((129,), 4096)]


def make_input(lead, k, dtype, device="cpu"):
    """Random data with outliers, an all-zero block, and tiny negatives that round to -0."""
    x = torch.randn(*lead, k) * 3
    flat = x.view(-1, k)
    rows = flat.shape[0]
    outliers = torch.randint(0, flat.numel(), (max(1, flat.numel() // 97),))
    flat.view(-1)[outliers] *= 50
    if rows * k > 16:
        flat[rows // 2, -16:] = 0  # zero block
    if k >= 32:
        flat[0, 16:32] = torch.linspace(-1e-3, 6.0, 16)  # tiny negative next to a large value
    return x.to(dtype).to(device)


def same_bytes(a, b):
    a8 = a.cpu().contiguous().view(torch.uint8)
    b8 = b.cpu().contiguous().view(torch.uint8)
    assert a8.shape == b8.shape, (a8.shape, b8.shape)
    mismatch = (a8 != b8).nonzero()
    where = mismatch[:4].tolist()
    assert mismatch.numel() == 0, f"{mismatch.shape[0]} bytes differ, first at {where}"


def gs_of(x):
    return moe_ext.nvfp4_global_scale(x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead,k", SHAPES)
@pytest.mark.parametrize("swizzle", [False, True])
def test_quantize_matches_reference_cpu(lead, k, dtype, swizzle):
    x = make_input(lead, k, dtype)
    gs = gs_of(x)
    packed, scales = moe_ext.nvfp4_quantize(x, gs, swizzle=swizzle)
    ref_packed, ref_scales = ref.nvfp4_quantize(x, gs, swizzle=swizzle)
    assert packed.shape == (*lead, k // 2) and packed.dtype == torch.uint8
    assert scales.dtype == torch.float8_e4m3fn
    same_bytes(packed, ref_packed)
    same_bytes(scales, ref_scales)
    assert (scales.view(torch.uint8) != 0).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead,k", SHAPES)
@pytest.mark.parametrize("swizzled", [False, True])
def test_dequantize_matches_reference_cpu(lead, k, dtype, swizzled):
    x = make_input(lead, k, torch.float32)
    gs = gs_of(x)
    packed, scales = ref.nvfp4_quantize(x, gs, swizzle=swizzled)
    out = moe_ext.nvfp4_dequantize(packed, scales, gs, dtype, swizzled=swizzled)
    assert out.shape == x.shape and out.dtype == dtype
    same_bytes(out, ref.nvfp4_dequantize(packed, scales, gs, dtype, swizzled=swizzled))
    # Round trip: each value is within one E2M1 step (2 at the top) of its block scale.
    step = scales if not swizzled else ref.nvfp4_unswizzle_scales(scales, x.numel() // k, k // 16)
    bound = step.float().reshape(*x.shape[:-1], k // 16, 1) / gs * 1.0 + 1e-6
    err = (out.float() - x).reshape(*x.shape[:-1], k // 16, 16).abs()
    assert (err <= bound * (1 + 2**-7) + x.abs().reshape(err.shape) * 2**-7).all()


def test_rounding_ties_signs_and_zero_blocks():
    # gs = 1 and block amax 6 give scale e4m3(1) = 1: values land on the E2M1 grid unscaled.
    row = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, -0.1, -5.0, -6.0, 0.3, -0.0, 1.0, -1.5, 0.0]
    x = torch.tensor([row, [0.0] * 16])
    gs = torch.ones(1)
    packed, scales = moe_ext.nvfp4_quantize(x, gs)
    codes = [0, 2, 2, 4, 4, 6, 6, 7, 8, 14, 15, 1, 8, 2, 11, 0]
    expected = [codes[i] | (codes[i + 1] << 4) for i in range(0, 16, 2)]
    assert packed[0].tolist() == expected
    assert packed[1].tolist() == [0] * 8  # an all-zero block: codes 0
    assert scales.view(torch.uint8)[:, 0].tolist() == [0x38, 0x00]  # e4m3(1.0), zero scale


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_non_finite_inputs(device):
    """NaN is left out of the block amax and encodes as +0 (whatever its sign bit); +-inf takes
    the largest scale and saturates; the same bytes as the reference."""
    x = make_input((4,), 64, torch.float32)
    x[0, 3] = float("nan")
    x[1, 17] = -float("nan")
    x[2, 40], x[2, 41] = float("inf"), -float("inf")
    x[3, :16] = 0.0
    x[3, 5] = -float("nan")  # a block of zeros and a NaN: scale 0, every code 0
    gs = torch.tensor([2.0])
    packed, scales = moe_ext.nvfp4_quantize(x.to(device), gs.to(device))
    ref_packed, ref_scales = ref.nvfp4_quantize(x, gs)
    same_bytes(packed, ref_packed)
    same_bytes(scales, ref_scales)
    codes = torch.stack((packed.cpu() & 0xF, packed.cpu() >> 4), -1).reshape(4, 64)
    assert codes[0, 3] == 0 and codes[1, 17] == 0 and codes[3, :16].eq(0).all()
    assert codes[2, 40] == 7 and codes[2, 41] == 0xF
    finite = x[0, :16].nan_to_num(nan=0.0)
    assert scales[0, 0].cpu() == ref.nvfp4_quantize(finite.reshape(1, 16), gs)[1][0, 0]
    assert scales[2, 2].cpu().float() == 448.0
    assert scales[3, 0].cpu().float() == 0.0


def test_global_scale_helper_edge_cases():
    x = torch.tensor([[1.0, -3.0, float("inf")], [float("nan"), 0.5, 2.0]])
    assert moe_ext.nvfp4_global_scale(x).item() == pytest.approx(448.0 * 6.0 / 3.0)
    assert moe_ext.nvfp4_global_scale(torch.empty(0, 16)).tolist() == [1.0]
    assert moe_ext.nvfp4_global_scale(torch.full((2, 16), float("nan"))).tolist() == [1.0]


def test_fake_checks_global_scale_device():
    """A meta global_scale with a CPU x must raise, not return unwritten CPU tensors."""
    x = make_input((2,), 32, torch.bfloat16)
    with pytest.raises(RuntimeError, match="global_scale must be on"):
        moe_ext.nvfp4_quantize(x, torch.ones(1, device="meta"))


def test_exactly_representable_roundtrip():
    # Values that are E2M1 codes times an E4M3 scale survive quantize -> dequantize exactly.
    grid = torch.tensor(ref._E2M1_VALUES[1:] + tuple(-v for v in ref._E2M1_VALUES[1:]))
    codes = grid[torch.randint(0, grid.numel(), (64, 256))]
    codes[:, ::16] = 6.0  # every block reaches amax 6, so its scale is exactly the chosen one
    block_scales = torch.tensor([0.5, 1.0, 2.0, 0.125, 3.5, 10.0, 0.0625, 40.0])
    s = block_scales[torch.randint(0, 8, (64, 16))].repeat_interleave(16, dim=1)
    x = codes * s
    gs = torch.ones(1)
    packed, scales = moe_ext.nvfp4_quantize(x, gs)
    assert torch.equal(moe_ext.nvfp4_dequantize(packed, scales, gs, torch.float32), x)


@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 5), (128, 4), (129, 3), (300, 448), (77, 112)])
def test_swizzle_matches_reference_and_inverts(rows, cols):
    scales = (torch.rand(rows, cols) * 400 + 0.01).to(torch.float8_e4m3fn)
    sw = moe_ext.nvfp4_swizzle_scales(scales)
    assert sw.shape == (-(-rows // 128) * 128, -(-cols // 4) * 4)
    same_bytes(sw, ref.nvfp4_swizzle_scales(scales))
    same_bytes(moe_ext.nvfp4_unswizzle_scales(sw, rows, cols), scales)
    # Exactly rows * cols bytes are non-zero: the padding is 0.
    assert int((sw.view(torch.uint8) != 0).sum()) == rows * cols


def test_swizzle_formula_spot_checks():
    offsets = ref.nvfp4_swizzled_offsets(300, 9)  # 3 column tiles of 512 bytes per row tile
    assert offsets[0, 0] == 0 and offsets[0, 1] == 1 and offsets[1, 0] == 16
    assert offsets[32, 0] == 4 and offsets[0, 4] == 512 and offsets[128, 0] == 3 * 512
    assert offsets[299, 8] == 2 * 1536 + 2 * 512 + (299 % 32) * 16 + ((299 % 128) // 32) * 4


def test_bad_arguments_raise():
    gs = torch.ones(1)
    with pytest.raises(RuntimeError, match="multiple of 16"):
        moe_ext.nvfp4_quantize(torch.randn(4, 40), gs)
    with pytest.raises(RuntimeError, match="global_scale must have dtype"):
        moe_ext.nvfp4_quantize(torch.randn(4, 32), torch.ones(1, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="x must have dtype"):
        moe_ext.nvfp4_quantize(torch.ones(4, 32, dtype=torch.int32), gs)
    packed, scales = moe_ext.nvfp4_quantize(torch.randn(4, 32), gs)
    with pytest.raises(RuntimeError, match="scales.size"):
        moe_ext.nvfp4_dequantize(packed, scales[:, :1], gs)
    with pytest.raises(RuntimeError, match="swizzled scales must have"):
        moe_ext.nvfp4_dequantize(packed, scales, gs, swizzled=True)
    with pytest.raises(RuntimeError, match="swizzled must have"):
        moe_ext.nvfp4_unswizzle_scales(scales, 4, 2)


# opcheck's schema test does arithmetic on float8 inputs, which torch does not implement; ops
# taking float8 scales run the other opcheck tests, and test_inputs_untouched covers mutation.
FLOAT8_INPUT_TESTS = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_opcheck(device):
    x = make_input((37,), 80, torch.bfloat16, device)
    gs = gs_of(x).to(device)
    for swizzle in (False, True):
        torch.library.opcheck(torch.ops.moe_ext.nvfp4_quantize, (x, gs, swizzle))
        packed, scales = moe_ext.nvfp4_quantize(x, gs, swizzle=swizzle)
        torch.library.opcheck(
            torch.ops.moe_ext.nvfp4_dequantize, (packed, scales, gs, torch.bfloat16, swizzle),
            test_utils=FLOAT8_INPUT_TESTS,
        )
    _, scales = moe_ext.nvfp4_quantize(x, gs)
    torch.library.opcheck(
        torch.ops.moe_ext.nvfp4_swizzle_scales, (scales,), test_utils=FLOAT8_INPUT_TESTS
    )
    sw = moe_ext.nvfp4_swizzle_scales(scales)
    torch.library.opcheck(
        torch.ops.moe_ext.nvfp4_unswizzle_scales, (sw, 37, 5), test_utils=FLOAT8_INPUT_TESTS
    )


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_inputs_untouched(device):
    x = make_input((37,), 80, torch.bfloat16, device)
    gs = gs_of(x).to(device)
    x0, gs0 = x.clone(), gs.clone()
    packed, scales = moe_ext.nvfp4_quantize(x, gs, swizzle=True)
    p0, s0 = packed.clone(), scales.clone()
    moe_ext.nvfp4_dequantize(packed, scales, gs, torch.float32, swizzled=True)
    lin = moe_ext.nvfp4_unswizzle_scales(scales, 37, 5)
    l0 = lin.clone()
    moe_ext.nvfp4_swizzle_scales(lin)
    same_bytes(x, x0)
    same_bytes(gs, gs0)
    same_bytes(packed, p0)
    same_bytes(scales, s0)
    same_bytes(lin, l0)


def test_compile_fullgraph_dynamic():
    def roundtrip(x, gs):
        packed, scales = torch.ops.moe_ext.nvfp4_quantize(x, gs, True)
        return torch.ops.moe_ext.nvfp4_dequantize(packed, scales, gs, torch.float32, True)

    compiled = torch.compile(roundtrip, fullgraph=True, dynamic=True)
    for rows in (5, 9):
        x = make_input((rows,), 48, torch.float32)
        gs = gs_of(x)
        same_bytes(compiled(x, gs), roundtrip(x, gs))


def poison_cuda_allocator():
    """Leave 0xFF bytes in the caching allocator's free blocks so unwritten outputs show."""
    junk = torch.full((1 << 24,), 0xFF, dtype=torch.uint8, device="cuda")
    del junk


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead,k", SHAPES + [((1000,), 7168)])
@pytest.mark.parametrize("swizzle", [False, True])
def test_cuda_matches_cpu(lead, k, dtype, swizzle):
    x = make_input(lead, k, dtype)
    gs = gs_of(x)
    poison_cuda_allocator()
    packed, scales = moe_ext.nvfp4_quantize(x.cuda(), gs.cuda(), swizzle=swizzle)
    cpu_packed, cpu_scales = moe_ext.nvfp4_quantize(x, gs, swizzle=swizzle)
    same_bytes(packed, cpu_packed)
    same_bytes(scales, cpu_scales)
    for out_dtype in DTYPES:
        poison_cuda_allocator()
        out = moe_ext.nvfp4_dequantize(packed, scales, gs.cuda(), out_dtype, swizzled=swizzle)
        same_bytes(out, moe_ext.nvfp4_dequantize(cpu_packed, cpu_scales, gs, out_dtype, swizzle))


@pytest.mark.cuda
@pytest.mark.parametrize("rows,cols", [(1, 1), (129, 3), (300, 448), (1000, 5)])
def test_cuda_swizzle_matches_cpu(rows, cols):
    scales = (torch.rand(rows, cols) * 400 + 0.01).to(torch.float8_e4m3fn)
    poison_cuda_allocator()
    sw = moe_ext.nvfp4_swizzle_scales(scales.cuda())
    same_bytes(sw, moe_ext.nvfp4_swizzle_scales(scales))
    poison_cuda_allocator()
    same_bytes(moe_ext.nvfp4_unswizzle_scales(sw, rows, cols), scales)


@pytest.mark.cuda
def test_cuda_unaligned_view():
    base = make_input((9,), 96, torch.bfloat16, "cuda").view(-1)
    x = base[3 : 3 + 8 * 64].view(8, 64)  # storage offset of 6 bytes
    gs = gs_of(x)
    packed, scales = moe_ext.nvfp4_quantize(x, gs)
    ref_packed, ref_scales = ref.nvfp4_quantize(x, gs)
    same_bytes(packed, ref_packed)
    same_bytes(scales, ref_scales)


@pytest.mark.cuda
def test_cuda_graph_replay_with_new_data():
    x = make_input((64,), 2048, torch.bfloat16, "cuda")
    gs = gs_of(x)
    moe_ext.nvfp4_quantize(x, gs, swizzle=True)  # warm-up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        packed, scales = moe_ext.nvfp4_quantize(x, gs, swizzle=True)
        out = moe_ext.nvfp4_dequantize(packed, scales, gs, torch.bfloat16, swizzled=True)
    for _ in range(2):
        x.copy_(make_input((64,), 2048, torch.bfloat16, "cuda"))
        gs.copy_(gs_of(x))
        graph.replay()
        ref_packed, ref_scales = ref.nvfp4_quantize(x, gs, swizzle=True)
        same_bytes(packed, ref_packed)
        same_bytes(scales, ref_scales)
        same_bytes(out, ref.nvfp4_dequantize(ref_packed, ref_scales, gs, torch.bfloat16, True))
