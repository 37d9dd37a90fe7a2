"""Helpers shared by the benchmark scripts (timing lives in moe_ext.timing)."""

import json
import os

import torch

from moe_ext.timing import (  # noqa: F401  (re-exported for the scripts)
    copy_bandwidth_gbps,
    empty_kernel_us,
    graph_replay_us,
)
from moe_ext.timing import device_info as _device_info


def device_info() -> dict:
    return _device_info(torch.device("cuda"))


def save_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
