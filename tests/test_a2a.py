"""moe_ext.comm: the torch backend over gloo with 2 and 3 CPU processes; FlashInfer's kernels
with ranks simulated on one GPU; both backends over NCCL on two GPUs (torchrun)."""

import os
import subprocess
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from a2a_cases import (
    GLOBAL_SCALE,
    check_received,
    expected_combine,
    expert_output_of,
    rank_inputs,
)

import moe_ext
from moe_ext import reference as ref
from moe_ext.comm import NvFp4AllToAll, experts_of_rank, flashinfer_importable
from moe_ext.comm.flashinfer_backend import unsupported_reason

E, K, H = 7, 3, 64  # 7 experts: uneven split over 2 and 3 ranks
MAX_TOKENS = 10
TOKENS = [5, 3, 7]


def _gloo_worker(rank, ep, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=ep)
    try:
        torch.manual_seed(rank)
        a2a = NvFp4AllToAll(None, E, K, H, MAX_TOKENS, backend="auto")
        assert a2a.backend == "torch"
        steps = [(1, None, True), (2, 8, False), (3, 7, True)]  # (seed, T_max, from bf16)
        for seed, runtime_max, from_bf16 in steps:
            t_max = runtime_max or MAX_TOKENS
            every = [rank_inputs(r, ep, E, K, H, TOKENS[r], seed) for r in range(ep)]
            mine = every[rank]
            if from_bf16:
                kw = {"hidden_states": mine["hidden_states"], "global_scale": mine["global_scale"]}
            else:
                kw = {"x_fp4": mine["x_fp4"], "x_scales": mine["x_scales"]}
            recv = a2a.dispatch(
                mine["topk_ids"], mine["topk_weights"], runtime_max_tokens_per_rank=runtime_max,
                **kw,
            )
            assert recv.topk_ids.shape == (ep, t_max, K)
            assert recv.x_fp4.shape == (ep, t_max, H // 2)
            assert recv.x_scales.dtype == torch.float8_e4m3fn
            expected = ref.a2a_dispatch(every, E, ep, t_max)[rank]
            check_received(recv, expected, exact_order=True)
            expert_out = expert_output_of(recv, rank, E, ep, t_max, H)
            if not from_bf16:  # a permuted view: combine takes any strides
                expert_out = expert_out.transpose(0, 1).contiguous().transpose(0, 1)
            out = a2a.combine(expert_out)
            want = expected_combine(mine, E, ep)
            assert torch.equal(out, want), (out - want).abs().max()
            assert (out[-1] == 0).all()  # the token with no valid expert went nowhere
        _misuse(a2a, rank, ep)
        a2a.close()
    finally:
        dist.destroy_process_group()


def _misuse(a2a, rank, ep):
    inputs = rank_inputs(rank, ep, E, K, H, 4, 9)
    ids, w = inputs["topk_ids"], inputs["topk_weights"]
    q = {"x_fp4": inputs["x_fp4"], "x_scales": inputs["x_scales"]}
    with pytest.raises(TypeError, match="int32"):
        a2a.dispatch(ids.long(), w, **q)
    with pytest.raises(ValueError, match="exceed the per-rank maximum"):
        a2a.dispatch(ids, w, runtime_max_tokens_per_rank=3, **q)
    with pytest.raises(ValueError, match="workspace size"):
        a2a.dispatch(ids, w, runtime_max_tokens_per_rank=MAX_TOKENS + 1, **q)
    with pytest.raises(ValueError, match="not both"):
        a2a.dispatch(ids, w, hidden_states=inputs["hidden_states"],
                     global_scale=inputs["global_scale"], **q)
    with pytest.raises(ValueError, match="x_fp4 must have shape"):
        a2a.dispatch(ids, w, x_fp4=q["x_fp4"][:, :8], x_scales=q["x_scales"])
    with pytest.raises(RuntimeError, match="without a dispatch"):
        a2a.combine(torch.zeros(ep, MAX_TOKENS, H, dtype=torch.bfloat16))
    # A T_max that differs between ranks is caught by the peer check on every rank.
    with pytest.raises(ValueError, match="same on every rank"):
        a2a.dispatch(ids, w, runtime_max_tokens_per_rank=5 + rank, **q)
    a2a.dispatch(ids, w, runtime_max_tokens_per_rank=6, **q)
    with pytest.raises(RuntimeError, match="dispatch called twice"):
        a2a.dispatch(ids, w, runtime_max_tokens_per_rank=6, **q)
    with pytest.raises(ValueError, match="expert_output must have shape"):
        a2a.combine(torch.zeros(ep, MAX_TOKENS, H, dtype=torch.bfloat16))
    # A misuse on rank 0 alone raises on every rank (the others would wait in the collective).
    with pytest.raises(ValueError if rank == 0 else RuntimeError,
                       match="expert_output must have shape" if rank == 0 else r"rank\(s\) \[0\]"):
        a2a.combine(torch.zeros(ep, MAX_TOKENS if rank == 0 else 6, H, dtype=torch.bfloat16))
    a2a.combine(torch.zeros(ep, 6, H, dtype=torch.bfloat16))
    with pytest.raises(TypeError if rank == 0 else RuntimeError,
                       match="int32" if rank == 0 else r"dispatch failed .* rank\(s\) \[0\]"):
        a2a.dispatch(ids.long() if rank == 0 else ids, w, **q)
    a2a.dispatch(ids, w, **q)
    with pytest.raises(RuntimeError,
                       match=r"dispatch failed .* rank\(s\) \[0\]" if rank else "called twice"):
        if rank == 0:
            a2a.dispatch(ids, w, **q)
        else:
            a2a.combine(torch.zeros(ep, MAX_TOKENS, H, dtype=torch.bfloat16))
    a2a.combine(torch.zeros(ep, MAX_TOKENS, H, dtype=torch.bfloat16))
    bf16 = {"hidden_states": inputs["hidden_states"], "global_scale": inputs["global_scale"] + rank}
    with pytest.raises(ValueError, match="global_scale must be the same on every rank"):
        a2a.dispatch(ids, w, **bf16)


@pytest.mark.parametrize("ep", [2, 3])
def test_torch_backend_gloo(ep):
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_gloo_worker, args=(ep, os.path.join(tmp, "store")), nprocs=ep, join=True)


def test_expert_partition_matches_reference():
    for e, ep in [(7, 2), (7, 3), (64, 8), (256, 6), (60, 7)]:
        owners = [r for r in range(ep) for _ in experts_of_rank(e, ep, r)]
        assert owners == [ref.a2a_owner(x, e, ep) for x in range(e)]


def test_bad_configuration_raises():
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group(
            "gloo", init_method=f"file://{os.path.join(tmp, 's')}", rank=0, world_size=1
        )
        try:
            with pytest.raises(ValueError, match="hidden_size"):
                NvFp4AllToAll(None, 8, 2, 100, 4, backend="torch")
            with pytest.raises(ValueError, match="backend must be one of"):
                NvFp4AllToAll(None, 8, 2, 64, 4, backend="nccl")
            with pytest.raises(ValueError, match="CUDA"):
                NvFp4AllToAll(None, 8, 2, 64, 4, backend="flashinfer")
            assert unsupported_reason(3, 2) and unsupported_reason(8, 65)
            assert unsupported_reason(8, 2) is None
        finally:
            dist.destroy_process_group()


needs_flashinfer = pytest.mark.skipif(
    not flashinfer_importable(), reason="flashinfer-python is not installed"
)


@pytest.mark.cuda
@needs_flashinfer
@pytest.mark.parametrize("ep,hidden,num_experts,top_k", [(2, 2048, 64, 8), (4, 7168, 256, 8),
                                                          (3, 1024, 7, 4)])
def test_flashinfer_simulated_ranks(ep, hidden, num_experts, top_k):
    from moe_ext.comm.simulate import SimulatedFlashInferRanks

    max_tokens = 16
    tokens = [16, 9, 1, 12][:ep]
    sim = SimulatedFlashInferRanks(ep, num_experts, top_k, hidden, max_tokens)
    try:
        for seed, runtime_max, from_bf16 in [(1, None, True), (2, 12, False), (3, 16, True)]:
            t_max = runtime_max or max_tokens
            rank_tokens = [min(t, t_max) for t in tokens]
            every = [
                rank_inputs(r, ep, num_experts, top_k, hidden, rank_tokens[r], seed, "cuda")
                for r in range(ep)
            ]
            args = []
            for inputs in every:
                kw = {"topk_ids": inputs["topk_ids"], "topk_weights": inputs["topk_weights"],
                      "runtime_max_tokens_per_rank": runtime_max}
                if from_bf16:
                    kw.update(hidden_states=inputs["hidden_states"],
                              global_scale=inputs["global_scale"])
                else:
                    kw.update(x_fp4=inputs["x_fp4"], x_scales=inputs["x_scales"])
                args.append(kw)
            received = sim.dispatch(args)
            torch.cuda.synchronize()
            expected = ref.a2a_dispatch(every, num_experts, ep, t_max)
            outs = []
            for r in range(ep):
                check_received(received[r], expected[r], exact_order=False)
                outs.append(
                    expert_output_of(received[r], r, num_experts, ep, t_max, hidden).cuda()
                )
            combined = sim.combine(outs)
            torch.cuda.synchronize()
            for r in range(ep):
                want = expected_combine(every[r], num_experts, ep)
                # The token without a valid expert stays on its own rank, whose output is 0.
                torch.testing.assert_close(combined[r].cpu(), want, rtol=1e-2, atol=1e-2)
        # Rank 0 keeps T_max = 16, the others ask for 15 (all within their token counts).
        mismatched = [{**a, "runtime_max_tokens_per_rank": max_tokens - min(i, 1)}
                      for i, a in enumerate(args)]
        with pytest.raises(ValueError, match="same on every rank"):
            sim.dispatch(mismatched)
    finally:
        sim.close()


@pytest.mark.multigpu
@pytest.mark.cuda
def test_two_gpus_torchrun():
    script = os.path.join(os.path.dirname(__file__), "torchrun_a2a.py")
    env = dict(os.environ, NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1",
               NVSHMEM_DISABLE_NVLS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         script],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "torchrun_a2a: all checks passed" in proc.stdout


def test_global_scale_constant():
    assert moe_ext.nvfp4_global_scale(torch.zeros(3, 16)).item() == 1.0
    assert GLOBAL_SCALE > 0
