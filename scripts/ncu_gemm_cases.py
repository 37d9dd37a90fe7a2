"""Driver for Nsight Compute: two eager fused_moe_lora calls per case inside a profiler range.

    ncu --profile-from-start off ... python3 scripts/ncu_gemm_cases.py preset/op/T/r ...
"""

import sys

import torch
from bench_moe_lora_gemm import make_pools, setup_case


def main():
    gen = torch.Generator().manual_seed(0)
    for case in sys.argv[1:]:
        preset, op, T, r = case.split("/")
        cs = setup_case(preset, op, int(T), int(r), 3e12, gen, make_pools(preset, op, int(r)))
        for i in range(cs.need):
            cs.call(i)
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        cs.call(0)
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
        print(case, "block size", cs.block_size, "pairs", cs.pairs, flush=True)
        del cs
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
