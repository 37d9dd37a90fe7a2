"""The README's GEMM example runs as written (on a GPU)."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.cuda
def test_readme_gemm_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "fused_moe_lora" in b)
    exec(compile(example, str(README), "exec"), {})
