"""This machine's matmul FLOP/s: the peak that MFU is measured against (chapter 02, benchmarks),
and side-by-side timing of variants (`interleaved_seconds`: benchmarks, chapter 12).

The all-reduce over local ranks (chapter 02's loopback link) is measured through the launcher
in dslib.studies.resource_planning.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from dslib import env


def _matmul_seconds(n: int, repeats: int, device) -> list[float]:
    """Wall seconds of ``repeats`` n x n fp32 matmuls on ``device``, after one warm-up."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up
    samples = []
    for _ in range(repeats):
        env.synchronize(device)
        start = time.perf_counter()
        a @ b
        env.synchronize(device)
        samples.append(time.perf_counter() - start)
    return samples


def measure_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of an n x n fp32 matmul on dslib's device (this process's threads): the local peak."""
    return 2 * n**3 / statistics.median(_matmul_seconds(n, repeats, env.device()))


def matmul_peak(sizes: tuple[int, ...] = (1024, 2048, 3072), repeats: int = 3, device: str = "cpu") -> float:
    """Best fp32 matmul FLOP/s over a few large square sizes: the peak MFU is measured against."""
    return max(2 * n**3 / t for n in sizes for t in _matmul_seconds(n, repeats, torch.device(device)))


def interleaved_seconds(fns: dict[str, Callable[[], object]], rounds: int, per_round: int) -> dict[str, float]:
    """Median wall seconds per call of each fn, timed round by round after one warm-up call
    each, so load bursts on a shared machine hit every variant alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(per_round):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
