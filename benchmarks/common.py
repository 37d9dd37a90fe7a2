"""Timing helpers shared by the benchmarks: CUDA-graph replay medians, copy bandwidth, device
description, JSON output. Figures are medians of many replays after a warm-up."""

import json
import os
import platform
import statistics

import torch


def device_info() -> dict:
    props = torch.cuda.get_device_properties(0)
    return {
        "device": props.name,
        "sms": props.multi_processor_count,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host": platform.node(),
    }


def graph_replay_us(fn, *, calls_per_graph: int = 20, replays: int = 100, warmup: int = 3):
    """Median time of one `fn()` in microseconds: `calls_per_graph` calls are captured into one
    CUDA graph, each replay is timed with CUDA events, the median replay is divided by the
    number of calls (the graph launch cost is spread over them)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls_per_graph):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(replays):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls_per_graph)
    return statistics.median(times)


def copy_bandwidth_gbps(nbytes: int = 1 << 32) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    us = graph_replay_us(lambda: dst.copy_(src), calls_per_graph=2, replays=10)
    return nbytes / (us * 1e-6) / 1e9


def empty_kernel_us() -> float:
    """Cost of the smallest kernel (a 1-element fill) measured the same way as the ops."""
    t = torch.empty(1, device="cuda")
    return graph_replay_us(lambda: t.fill_(1.0))


def save_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
