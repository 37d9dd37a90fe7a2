"""Timing used by the command line and the benchmarks: CUDA-graph replay medians on the GPU,
wall-clock medians on the CPU, and the copy bandwidth that turns bytes into a floor."""

import platform
import statistics
import time

import torch


def device_info(device: torch.device) -> dict:
    """What the figures were measured on."""
    info = {"torch": torch.__version__, "host": platform.node()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device=props.name, sms=props.multi_processor_count, cuda=torch.version.cuda)
    else:
        info.update(device=f"CPU ({platform.processor() or platform.machine()}), "
                           f"{torch.get_num_threads()} threads")
    return info


def graph_replay_us(fn, *, calls_per_graph: int = 20, replays: int = 100, warmup: int = 3):
    """Median time of one `fn()` in microseconds on the GPU: `calls_per_graph` calls are captured
    into one CUDA graph, each replay is timed with CUDA events, and the median replay is divided
    by the number of calls (the graph launch cost is spread over them)."""
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


def wall_clock_us(fn, *, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall-clock time of one `fn()` in microseconds (CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times)


def time_us(fn, device: torch.device, **kwargs) -> float:
    return graph_replay_us(fn, **kwargs) if device.type == "cuda" else wall_clock_us(fn)


def copy_bandwidth_gbps(device="cuda") -> float:
    """Copy bandwidth in GB/s, counting bytes read plus bytes written: the median of 10 copies of
    1 GiB timed with CUDA events on the GPU, of 5 copies of 128 MiB by wall clock on the CPU."""
    device = torch.device(device)
    nbytes = 1 << 30 if device.type == "cuda" else 1 << 27
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    if device.type != "cuda":
        return 2 * nbytes / (wall_clock_us(lambda: dst.copy_(src), repeats=5) * 1e-6) / 1e9
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    return 2 * nbytes / statistics.median(times) / 1e9


def empty_kernel_us() -> float:
    """Cost of the smallest kernel (a 1-element fill) measured like the ops."""
    t = torch.empty(1, device="cuda")
    return graph_replay_us(lambda: t.fill_(1.0))
