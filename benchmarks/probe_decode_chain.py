"""Lower bound for one decode-size (T = 1) call, measured the way the GEMM benchmark measures.

Each call is one kernel in a CUDA graph of 32 calls (time / calls, median of replays), reading
weights cold in L2 (rotated over >= 150 MB of copies) with every byte in flight at once: one
program per 4 KB, one load each. Variants, each adding one step of what a T = 1 fused_moe_lora
call must do before its last store:
  empty     launch only;
  weights   read the call's weight bytes once, store a sum per program;
  chain     first two dependent loads of routing data (slot totals, then the block's expert and
            route id), as the work list needs, then the weights of that expert;
  chain+2   the chain, then a second dependent kernel reading the first one's output and more
            cold weights (the shrink -> expand hand-off of a two-kernel design).
Needs Triton and a GPU.

    python benchmarks/probe_decode_chain.py
"""

import itertools

import torch
import triton
import triton.language as tl

from moe_ext.timing import graph_replay_us

BLOCK = 2048  # bf16 elements per program
CALLS = 32
COLD_BYTES = 150e6
# Weight bytes of a T = 1 call (Qwen3-30B-A3B, 8 routes): gate_up r16 / r64, down r16 / r64
CASES = (("gate_up r16", 1.2e6), ("gate_up r64", 5.9e6), ("down r16", 0.9e6),
         ("down r64", 3.5e6))


@triton.jit
def probe(totals_ptr, experts_ptr, w_ptr, prev_ptr, out_ptr, MODE: tl.constexpr,
          BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    base = pid * BLOCK
    if MODE >= 2:  # work list: slot totals, then the block's expert (dependent loads)
        total = tl.load(totals_ptr + (pid % 4))
        expert = tl.load(experts_ptr + (total + pid) % 4096)
        # a real dependency (experts are >= 0) that keeps the 16-byte loads
        base = tl.multiple_of(base + tl.where(expert < 0, BLOCK, 0), BLOCK)
    if MODE == 3:  # hand-off: the previous kernel's output
        prev = tl.load(prev_ptr + pid)
        base = tl.multiple_of(base + tl.where(prev != prev, BLOCK, 0), BLOCK)  # never NaN
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    if MODE >= 1:
        acc += tl.load(w_ptr + base + tl.arange(0, BLOCK)).to(tl.float32)
    tl.store(out_ptr + pid, tl.sum(acc))


def probe_case(nbytes, totals, experts):
    """us per call of each variant for a call reading nbytes of weights."""
    programs = max(1, int(nbytes) // (2 * BLOCK))
    copies = max(2, int(COLD_BYTES / (programs * BLOCK * 2)) + 1)
    w = torch.randn(copies, programs * BLOCK, device="cuda", dtype=torch.bfloat16)
    out = torch.zeros(programs, device="cuda")
    mid = torch.zeros(programs, device="cuda")

    def run(mode, i, dst=out):
        probe[(programs,)](totals, experts, w[i % copies], mid, dst, MODE=mode, BLOCK=BLOCK,
                           num_warps=4)

    def two(i):
        run(2, i, dst=mid)
        run(3, i + copies // 2)

    def timed(fn):  # every call of the graph on the next weight copy
        calls = itertools.count()
        return graph_replay_us(lambda: fn(next(calls)), calls_per_graph=CALLS, replays=9)

    return [timed(lambda i, m=m: run(m, i)) for m in range(3)] + [timed(two)]


def main():
    print(torch.cuda.get_device_name(), "calls per graph", CALLS)
    totals = torch.randint(0, 16, (4,), device="cuda", dtype=torch.int32)
    experts = torch.randint(0, 64, (4096,), device="cuda", dtype=torch.int32)
    for name, nbytes in CASES:
        row = probe_case(nbytes, totals, experts)
        print(f"{name:12} {nbytes / 1e6:4.1f} MB: empty {row[0]:5.2f}  weights {row[1]:5.2f}  "
              f"chain {row[2]:5.2f}  chain+2 {row[3]:5.2f} us")


if __name__ == "__main__":
    main()
