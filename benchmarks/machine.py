"""What machine produced a benchmark: CPU flags, its kind, and its measured memory bandwidth.

Imported by the bench_*.py scripts (not a benchmark itself: `make bench` runs bench_*.py).
Machines of one nominal kind differ (an AMD EPYC with AVX2 only, an Intel with AVX-512 and
AMX): every table says which one it came from.
"""
from __future__ import annotations

import os
import statistics
import time

import torch

from dslib.train.precision import CPU_FLAGS, cpu_flags, cpu_precision_support


def machine_kind(flags: set[str]) -> str:
    """A short name for the vector units fp32/bf16 kernels can use: 'AVX2', 'AVX-512+BF16', ..."""
    if "amx_tile" in flags:
        return "AVX-512+AMX"
    if "avx512f" in flags:
        return "AVX-512+BF16" if "avx512_bf16" in flags else "AVX-512"
    return "AVX2" if "avx2" in flags else "SSE"


def describe() -> dict:
    flags = cpu_flags()
    return {"cpu": cpu_precision_support()["cpu"], "kind": machine_kind(flags), "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "cpu_flags": [f for f in CPU_FLAGS if f in flags],
            "torch": torch.__version__, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
            "load_average_1min": os.getloadavg()[0]}


def stream_bandwidth(n: int = 64 * 2**20, repeats: int = 7) -> dict[str, dict[str, float]]:
    """Memory bandwidth (GB/s, best and median of ``repeats``) of three STREAM-like torch kernels
    on fp32 arrays of n elements (256 MiB each, far beyond any cache), with torch's threads:

      copy     b.copy_(a)                   2 arrays counted (read a, write b)
      triad    torch.add(b, c, alpha=s, out=a)   3 arrays (read b, c, write a)
      update   a.add_(b, alpha=s)           3 arrays (read a, b, write a): the optimizers' pattern,
                                            every array written is read first, so no write-allocate
                                            traffic goes uncounted; the reference for optimizer GB/s.
    """
    a, b, c = torch.rand(n), torch.rand(n), torch.rand(n)
    kernels = {"copy": (lambda: b.copy_(a), 2), "triad": (lambda: torch.add(b, c, alpha=1e-3, out=a), 3),
               "update": (lambda: a.add_(b, alpha=1e-3), 3)}
    result = {}
    for name, (kernel, arrays) in kernels.items():
        kernel()  # first touch of the output pages
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            kernel()
            samples.append(time.perf_counter() - start)
        moved = arrays * 4 * n / 1e9
        result[name] = {"best_gbs": moved / min(samples), "median_gbs": moved / statistics.median(samples)}
    return result


def machine_line(machine: dict) -> str:
    """One markdown line naming the machine, for the top of each benchmark table."""
    return (f"Machine: {machine['cpu']} ({machine['kind']}; flags {', '.join(machine['cpu_flags']) or 'none'}), "
            f"{machine['cpus']} CPUs, {machine['threads']} torch threads, torch {machine['torch']}, "
            f"OMP_WAIT_POLICY={machine['omp_wait_policy']}, 1-min load {machine['load_average_1min']:.1f}.")
