"""MoE layer shapes of real models, shared by the command line and the benchmarks."""

from typing import NamedTuple


class MoEShape(NamedTuple):
    hidden: int  # H: model width, input of gate/up and output of down
    intermediate: int  # I: expert width, output of gate and of up, input of down
    experts: int  # E
    top_k: int  # k


PRESETS = {
    "qwen3-30b-a3b": MoEShape(2048, 768, 128, 8),
    "olmoe-1b-7b": MoEShape(2048, 1024, 64, 8),
    "deepseek-v2-lite": MoEShape(2048, 1408, 64, 6),
    "gpt-oss-20b": MoEShape(2880, 2880, 32, 4),
    "mixtral-8x7b": MoEShape(4096, 14336, 8, 2),
}
