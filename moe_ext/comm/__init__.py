"""Expert-parallel all-to-all of NVFP4 tokens (family `a2a`).

`NvFp4AllToAll(group, num_experts, top_k, hidden_size, max_tokens_per_rank, backend="auto")`
with `.dispatch(...) -> DispatchResult`, `.combine(expert_output) -> [T, H]` and `.close()`.
Backends: "flashinfer" (FlashInfer's one-sided NVLink kernels; the optional dependency
flashinfer-python==0.7.2.post1, imported only when used) and "torch" (all_to_all_single over
NCCL or gloo). Both give the same receive layout `[ep, T_max, *]`.
"""

from ._layout import DispatchResult, experts_of_rank
from .alltoall import BACKENDS, NvFp4AllToAll
from .flashinfer_backend import flashinfer_importable

__all__ = [
    "BACKENDS",
    "DispatchResult",
    "NvFp4AllToAll",
    "experts_of_rank",
    "flashinfer_importable",
]
