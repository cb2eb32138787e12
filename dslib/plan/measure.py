"""Measure this machine: all-reduce over local ranks (fit alpha and beta) and matmul FLOP/s.

Self-contained (torch.multiprocessing + a file for rank 0's result) so chapter 02 needs no
launcher; the backend comes from dslib.env (gloo on CPU, nccl on CUDA), falling back to gloo over
host memory when one GPU would have to hold two ranks.
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

from dslib.plan.comm import Link, fit_alpha_beta


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _backend(n_ranks: int) -> str:
    """dslib's backend, but gloo when there are fewer GPUs than ranks (nccl needs one GPU per rank)."""
    import torch

    from dslib import env

    backend = env.dist_backend()
    return "gloo" if backend == "nccl" and torch.cuda.device_count() < n_ranks else backend


def _allreduce_worker(rank: int, world: int, port: int, backend: str, sizes: list[int], repeats: int,
                      out_path: str) -> None:
    import torch
    import torch.distributed as dist

    from dslib import env

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group(backend, rank=rank, world_size=world)
    device = env.device() if backend == "nccl" else torch.device("cpu")
    timings: dict[int, float] = {}
    try:
        for size in sizes:
            buffer = torch.ones(size // 4, dtype=torch.float32, device=device)
            dist.all_reduce(buffer)  # warm-up: connection set-up and allocation
            samples = []
            for _ in range(repeats):
                dist.barrier()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                dist.all_reduce(buffer)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                samples.append(time.perf_counter() - start)
            # fastest repeat: the link's cost without the noise of other processes on shared
            # cores; the slowest rank decides when the collective is done
            slowest = torch.tensor([min(samples)], device=device)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            timings[size] = float(slowest.item())
        if rank == 0:
            Path(out_path).write_text(json.dumps(timings))
    finally:
        dist.destroy_process_group()


def measure_allreduce(sizes: list[int], repeats: int = 5, n_ranks: int = 2) -> dict[int, float]:
    """Best-of-``repeats`` seconds of an all-reduce of each buffer size (bytes, fp32) over ``n_ranks`` local ranks."""
    import torch
    import torch.multiprocessing as mp

    if n_ranks < 2:
        raise ValueError(f"an all-reduce needs at least 2 ranks, got {n_ranks}")
    if not sizes or min(sizes) < 4:
        raise ValueError(f"sizes must be byte counts >= 4, got {sizes}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "timings.json"
        backend = _backend(n_ranks)
        # fork saves each rank a fresh torch import (seconds, minutes on a loaded machine); CUDA
        # cannot survive a fork, so nccl or an initialised CUDA context needs spawn
        start = "fork" if backend == "gloo" and not torch.cuda.is_initialized() else "spawn"
        mp.start_processes(_allreduce_worker, args=(n_ranks, _free_port(), backend, list(sizes), repeats,
                                                    str(out)), nprocs=n_ranks, join=True, start_method=start)
        return {int(k): v for k, v in json.loads(out.read_text()).items()}


def measure_loopback_link(sizes: list[int], repeats: int = 5, n_ranks: int = 2) -> tuple[Link, dict[int, float]]:
    """This machine's link between local ranks as a fitted alpha-beta Link, plus the raw timings."""
    timings = measure_allreduce(sizes, repeats, n_ranks)
    fitted = fit_alpha_beta(list(timings), list(timings.values()), "all_reduce", n_ranks)
    link = Link(f"measured loopback ({_backend(n_ranks)})", fitted.bandwidth, fitted.latency, fitted.note)
    return link, timings


def _matmul_seconds(n: int, repeats: int, device) -> list[float]:
    """Wall seconds of ``repeats`` n x n fp32 matmuls on ``device``, after one warm-up."""
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append(time.perf_counter() - start)
    return samples


def measure_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of an n x n fp32 matmul on dslib's device (this process's threads): the local peak."""
    from dslib import env

    return 2 * n**3 / statistics.median(_matmul_seconds(n, repeats, env.device()))


def matmul_peak(sizes: tuple[int, ...] = (1024, 2048, 3072), repeats: int = 3, device: str = "cpu") -> float:
    """Best fp32 matmul FLOP/s over a few large square sizes: the peak MFU is measured against."""
    import torch

    return max(2 * n**3 / t for n in sizes for t in _matmul_seconds(n, repeats, torch.device(device)))
