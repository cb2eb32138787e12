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

``SavedActivations`` counts one part exactly, in any process and for any engine: the bytes of
the tensors autograd saved for backward (activation memory), per pipeline stage, while they live.
"""
from __future__ import annotations

import ctypes
import gc
import statistics
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

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


class SavedActivations:
    """Live bytes of the tensors saved for backward inside ``saving(stage)``, per stage and for all
    stages of the process together (storages counted once, parameters excluded), with their peaks.

    A saved tensor is held in a box that autograd drops when it frees the saved variable (after a
    backward without retain_graph, or with its graph), which releases its bytes. The box holds the
    tensor detached: a saved output that kept its grad_fn would own the node that owns it, a cycle
    that no collector breaks once a backward retains the graph (zero-bubble's input backward).
    """

    ALL = -1  # the key of the process-wide count

    def __init__(self, params: Iterable):
        self.skip = {p.untyped_storage().data_ptr() for p in params}
        self.live: dict[int, dict[int, list[int]]] = {}  # stage (or ALL) -> storage ptr -> [bytes, references]
        self.total: dict[int, int] = {}                  # stage (or ALL) -> live bytes
        self.peak: dict[int, int] = {}                   # stage (or ALL) -> peak live bytes
        self.per_micro_batch: dict[int, list[int]] = {}  # stage -> bytes each micro-batch left saved

    @property
    def stage_peaks(self) -> dict[int, int]:
        return {s: b for s, b in sorted(self.peak.items()) if s != self.ALL}

    @property
    def process_peak(self) -> int:
        return self.peak.get(self.ALL, 0)

    def micro_batch_bytes(self, stage: int) -> int:
        """What one micro-batch leaves saved on ``stage``: the median over its forwards."""
        return int(statistics.median(self.per_micro_batch[stage]))

    def _hold(self, key: int, ptr: int, nbytes: int) -> None:
        entry = self.live.setdefault(key, {}).setdefault(ptr, [nbytes, 0])
        if entry[1] == 0:
            self.total[key] = self.total.get(key, 0) + nbytes
            self.peak[key] = max(self.peak.get(key, 0), self.total[key])
        entry[1] += 1

    def _release(self, key: int, ptr: int) -> None:
        entry = self.live[key][ptr]
        entry[1] -= 1
        if entry[1] == 0:
            del self.live[key][ptr]
            self.total[key] -= entry[0]

    def _pack(self, stage: int, t) -> Any:
        ptr = t.untyped_storage().data_ptr()
        if ptr in self.skip or ptr == 0:
            return t
        box = _Saved(t.detach())
        for key in (stage, self.ALL):
            self._hold(key, ptr, t.untyped_storage().nbytes())
            weakref.finalize(box, self._release, key, ptr)
        return box

    @contextmanager
    def saving(self, stage: int, new_micro_batch: bool = True) -> Iterator[None]:
        """Count what autograd saves inside as stage ``stage``'s; the bytes still saved at exit are
        one micro-batch's (``new_micro_batch=False``: added to the stage's last one, e.g. its loss)."""
        import torch

        before = self.total.get(stage, 0)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: self._pack(stage, t), _unpack):
            yield
        added = self.total.get(stage, 0) - before
        counts = self.per_micro_batch.setdefault(stage, [])
        if new_micro_batch or not counts:
            counts.append(added)
        else:
            counts[-1] += added


class _Saved:
    """A weak-referenceable holder of one saved tensor."""

    def __init__(self, value):
        self.value = value


def _unpack(saved: Any):
    return saved.value if isinstance(saved, _Saved) else saved
