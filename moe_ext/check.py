"""The command line's `check`: every op against moe_ext.reference on fresh random data, on the
CPU and (when available) on the GPU. Each check returns a one-line detail; a mismatch fails."""

import torch

from . import reference
from .bench import make_layer_inputs
from .presets import PRESETS

ops = torch.ops.moe_ext


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double().cpu(), want.double().cpu()
    return float((got - want).norm() / want.norm().clamp(min=1e-30))


def _routing(T, k, E, L, device):
    ids = torch.rand(T, E).argsort(dim=1)[:, :k].int().contiguous()
    ids.view(-1)[:: 11] = E + 3  # planted bad expert ids are dropped
    slots = torch.randint(-1, L + 1, (T,), dtype=torch.int32)  # -1 and L are dropped
    return ids.to(device), slots.to(device)


def check_align(device) -> str:
    ids, slots = _routing(300, 8, 128, 4, device)
    got = ops.moe_lora_align_block_size(ids, slots, 128, 32, 4)
    want = reference.moe_lora_align_block_size(ids, slots, 128, 32, 4)
    plain = ops.moe_align_block_size(ids, 128, 32)
    plain_want = reference.moe_align_block_size(ids, 128, 32)
    for g, w in zip(got + plain, want + plain_want):
        if not torch.equal(g.cpu(), w):
            raise AssertionError("differs from the reference")
    return "bit-exact (T=300, k=8, E=128, L=4, BS=32)"


def check_fused_moe_lora(device) -> str:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    shape = PRESETS["qwen3-30b-a3b"]._replace(experts=16)
    inp = make_layer_inputs(shape, 40, 24, 3, dtype, device, seed=1)
    routing = inp.lora.align(inp.topk_ids, inp.token_lora_mapping)
    aligned = (routing.sorted_token_ids, routing.expert_ids, routing.num_tokens_post_pad)
    k = shape.top_k
    details = []
    for name, x, a, b, out, weighted in (
        ("gate_up", inp.x, inp.lora.gate_up_a, inp.lora.gate_up_b, inp.gate_up_out, False),
        ("down", inp.activated, inp.lora.down_a, inp.lora.down_b, inp.down_out, True),
    ):
        want = reference.fused_moe_lora(out.clone(), x, a, b, inp.topk_weights, *aligned, k,
                                        weighted, True, 0, None)
        got = out.clone()
        ops.fused_moe_lora(got, x, a, b, inp.topk_weights, *aligned, k, weighted, True, 0, None)
        err = _rel_err(got - out, want.to(device) - out)
        if not err < tol:
            raise AssertionError(f"{name}: relative error of the delta {err:.2e} >= {tol}")
        details.append(f"{name} {err:.1e}")
    return f"{dtype} relative error of the LoRA delta: " + ", ".join(details)


def check_nvfp4(device) -> str:
    x = torch.randn(200, 272, dtype=torch.bfloat16) * 3
    x[5, :16] = 0  # an all-zero block
    x[7, 3] = 900.0  # an outlier
    gs = (448.0 * 6.0 / x.float().abs().amax()).reshape(1)
    want_q, want_s = reference.nvfp4_quantize(x, gs, swizzle=True)
    q, s = ops.nvfp4_quantize(x.to(device), gs.to(device), True)
    if not (torch.equal(q.cpu(), want_q)
            and torch.equal(s.cpu().view(torch.uint8), want_s.view(torch.uint8))):
        raise AssertionError("quantized bytes differ from the reference")
    back = ops.nvfp4_dequantize(q, s, gs.to(device), torch.bfloat16, True)
    want_back = reference.nvfp4_dequantize(want_q, want_s, gs, torch.bfloat16, True)
    if not torch.equal(back.cpu(), want_back):
        raise AssertionError("dequantized values differ from the reference")
    linear = ops.nvfp4_unswizzle_scales(s, 200, 17)
    if not torch.equal(ops.nvfp4_swizzle_scales(linear).cpu().view(torch.uint8),
                       s.cpu().view(torch.uint8)):
        raise AssertionError("swizzle does not invert unswizzle")
    return "quantize/dequantize/swizzle bit-exact (200x272, zero block, outlier)"


CHECKS = {
    "moe_align_block_size / moe_lora_align_block_size": check_align,
    "fused_moe_lora (gate_up, down)": check_fused_moe_lora,
    "nvfp4_quantize / dequantize / swizzle": check_nvfp4,
}


def run_checks(devices) -> list:
    """[(device, name, ok, detail)] for every check on every device."""
    torch.manual_seed(0)
    results = []
    for device in devices:
        for name, check in CHECKS.items():
            try:
                results.append((device.type, name, True, check(device)))
            except Exception as exc:  # a failed check is reported, the others still run
                results.append((device.type, name, False, f"{type(exc).__name__}: {exc}"))
    return results
