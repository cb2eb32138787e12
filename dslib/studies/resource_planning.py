"""Chapter 02's measurement of this machine's link: all-reduce over local ranks, fitted to the
alpha-beta model (dslib.plan.comm) as a Link beside the NVLink/PCIe/InfiniBand table.

The ranks run through the launcher (dslib.dist.launch). When there are fewer GPUs than ranks
(nccl needs one GPU per rank), they all-reduce over gloo on host memory.
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist

from dslib import env
from dslib.dist.launch import launch
from dslib.plan.comm import Link, fit_alpha_beta


def allreduce_rank(sizes: list[int], repeats: int) -> dict[int, float]:
    """One rank: best-of-``repeats`` seconds of an all-reduce of each buffer size (slowest rank)."""
    device = env.device()
    torch.set_num_threads(1)
    timings: dict[int, float] = {}
    for size in sizes:
        buffer = torch.ones(size // 4, dtype=torch.float32, device=device)
        dist.all_reduce(buffer)  # warm-up: connection set-up and allocation
        samples = []
        for _ in range(repeats):
            dist.barrier()
            env.synchronize(device)
            start = time.perf_counter()
            dist.all_reduce(buffer)
            env.synchronize(device)
            samples.append(time.perf_counter() - start)
        # fastest repeat: the link's cost without the noise of other processes on shared
        # cores; the slowest rank decides when the collective is done
        slowest = torch.tensor([min(samples)], device=device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        timings[size] = float(slowest.item())
    return timings


def loopback_backend(n_ranks: int) -> str:
    """dslib's backend, but gloo when there are fewer GPUs than ranks."""
    backend = env.dist_backend()
    return "gloo" if backend == "nccl" and torch.cuda.device_count() < n_ranks else backend


def measure_allreduce(sizes: list[int], repeats: int = 5, n_ranks: int = 2) -> dict[int, float]:
    """Best-of-``repeats`` seconds of an all-reduce of each buffer size (bytes, fp32) over ``n_ranks`` local ranks."""
    if n_ranks < 2:
        raise ValueError(f"an all-reduce needs at least 2 ranks, got {n_ranks}")
    if not sizes or min(sizes) < 4:
        raise ValueError(f"sizes must be byte counts >= 4, got {sizes}")
    return launch("dslib.studies.resource_planning:allreduce_rank", nprocs=n_ranks, timeout=300,
                  kwargs=dict(sizes=list(sizes), repeats=repeats), backend=loopback_backend(n_ranks))


def measure_loopback_link(sizes: list[int], repeats: int = 5, n_ranks: int = 2) -> tuple[Link, dict[int, float]]:
    """This machine's link between local ranks as a fitted alpha-beta Link, plus the raw timings."""
    timings = measure_allreduce(sizes, repeats, n_ranks)
    fitted = fit_alpha_beta(list(timings), list(timings.values()), "all_reduce", n_ranks)
    link = Link(f"measured loopback ({loopback_backend(n_ranks)})", fitted.bandwidth, fitted.latency, fitted.note)
    return link, timings
