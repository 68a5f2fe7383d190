"""Timers and the device's reference rates (bf16 matmul FLOP/s, copy bandwidth), measured in the
run that uses them so that MFU and %-of-bandwidth figures never rest on pasted-in peaks."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, *, warmup: int = 3,
               iters: int = 10) -> list[float]:
    """Seconds per call of fn, one figure per call (CUDA events on a GPU, wall clock on a CPU)."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def median_time(fn: Callable[[], object], device: torch.device, *, warmup: int = 3,
                iters: int = 10) -> float:
    return statistics.median(time_calls(fn, device, warmup=warmup, iters=iters))


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, *, iters: int = 20) -> float:
    """Measured FLOP/s of an n x n x n matmul (2 n^3 FLOPs), median of `iters` timings."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = median_time(lambda: a @ b, device, warmup=3, iters=iters)
    return 2.0 * n ** 3 / seconds


def copy_bandwidth(device: torch.device, nbytes: int, *, iters: int = 20) -> float:
    """Measured bytes/s of a device-to-device copy, read + write counted (2 * nbytes per copy)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    seconds = median_time(lambda: dst.copy_(src), device, warmup=3, iters=iters)
    return 2.0 * src.numel() * 4 / seconds
