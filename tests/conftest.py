"""Markers: `cuda` needs a GPU and the CUDA kernels, `multigpu` two or more GPUs, `slow` a long
sweep (run with --runslow). Each is skipped, with the reason shown, where it cannot run."""

import pytest
import torch

import moe_ext


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config, items):
    reasons = {}
    if not moe_ext.cuda_kernels_built():
        reasons["cuda"] = "moe_ext was built without CUDA kernels"
    elif not torch.cuda.is_available():
        reasons["cuda"] = "no CUDA device visible"
    if torch.cuda.device_count() < 2:
        reasons["multigpu"] = "needs 2 or more CUDA devices"
    if not config.getoption("--runslow"):
        reasons["slow"] = "slow sweep: pass --runslow"
    for item in items:
        for marker, reason in reasons.items():
            if marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
