"""Peak training memory of a few steps, measured from what the process really holds.

``peak_memory(device)`` wraps the steps to measure. On a GPU it reads the CUDA allocator's
peak. On a CPU it is ``rss_follows_tensors``: glibc's mmap threshold is pinned at 64 KiB, so
every tensor larger than that is mapped on allocation and returned on free (RSS follows the
live tensors, not the allocator's cache), and the kernel's peak-RSS mark is reset
(``echo 5 > /proc/self/clear_refs``, Linux >= 4.0), so imports and warm-up do not count:
peak RSS (VmHWM) minus the RSS at entry is the training memory of the steps (weights,
gradients, optimizer states, activations, temporaries). Fresh mappings are slow, so time
steps outside it. The allocator keeps freed memory, so configurations measured one after
another in one process hide each other: measure each in a fresh process
(dslib.studies.memory_sweeps) or on an engine of its own.
"""
from __future__ import annotations

import ctypes
import gc
from contextlib import contextmanager
from typing import Callable, Iterator

from dslib.env import synchronize


def _status_bytes(field: str) -> int:
    """VmRSS / VmHWM of this process from /proc/self/status (reported in kB)."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> int:
    """Reset the peak-RSS mark to the current RSS; returns that RSS (the baseline)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_bytes("VmRSS")


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


@contextmanager
def rss_follows_tensors() -> Iterator[Callable[[], int]]:
    """Inside: allocations over 64 KiB are mapped on allocation and returned on free, so RSS
    follows the live tensors; yields a function giving the peak RSS above the RSS at entry.

    Heap memory freed before entry is returned first (malloc_trim). On exit, large
    allocations come from the heap again and stay there (fast), until the next entry.
    """
    libc = ctypes.CDLL(None)
    gc.collect()
    libc.malloc_trim(0)
    libc.mallopt(M_MMAP_THRESHOLD, 64 << 10)
    baseline = _reset_peak()
    try:
        yield lambda: _status_bytes("VmHWM") - baseline
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)


@contextmanager
def peak_memory(device) -> Iterator[Callable[[], int]]:
    """Peak tensor memory above the memory at entry: the CUDA allocator's statistics on a GPU,
    ``rss_follows_tensors`` on a CPU."""
    import torch

    if device.type != "cuda":
        with rss_follows_tensors() as peak:
            yield peak
        return
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    yield lambda: torch.cuda.max_memory_allocated(device) - baseline
