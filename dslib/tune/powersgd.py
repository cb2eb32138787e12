"""PowerSGD gradient compression on DDP, with the bytes each rank all-reduces counted.

PowerSGD (Vogels et al. 2019) sends, for an [n, m] gradient matrix, two factors P [n, r]
and Q [m, r] instead of the matrix: (n + m) * r numbers instead of n * m. Vectors and
matrices where compression would not halve the size (torch's ``min_compression_rate`` 2)
are all-reduced as they are. Error feedback adds each step's compression error to the
next step's gradient; the first ``start_powerSGD_iter`` steps use plain all-reduce.

Counting: the PowerSGD hook issues its P all-reduce inside the hook and its Q all-reduce
in a future callback that runs later, on another thread; a wrapper around the hook call
alone would miss the second. ``counting_all_reduce`` therefore stands in for
``torch.distributed`` inside the two hook modules for the whole run: every tensor they
all-reduce is counted (bytes of the buffer; a ring sends 2(n-1)/n of it per rank), then
the real collective runs.
"""
from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd


FP32_BYTES = 4


class AllReduceCounter:
    """Forwards every torch.distributed call; counts the bytes and calls of all_reduce."""

    def __init__(self) -> None:
        self.bytes, self.calls = 0, 0
        self._lock = threading.Lock()  # hooks and their callbacks run on other threads

    def all_reduce(self, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.bytes += tensor.numel() * tensor.element_size()
            self.calls += 1
        return dist.all_reduce(tensor, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(dist, name)


@contextmanager
def counting_all_reduce() -> Iterator[AllReduceCounter]:
    """Count the all-reduces of DDP's allreduce hook and of the PowerSGD hook while inside."""
    counter = AllReduceCounter()
    saved = psgd.dist, default_hooks.dist
    psgd.dist = default_hooks.dist = counter
    try:
        yield counter
    finally:
        psgd.dist, default_hooks.dist = saved


def compressed_elements(shape: tuple[int, ...], rank: int, min_compression_rate: float = 2.0) -> int:
    """Numbers PowerSGD all-reduces for one gradient: (n + m) * r if worth it, else n * m.

    The tensor is viewed as [shape[0], rest]; r is capped at min(n, m) (torch's rule).
    """
    n, m = shape[0], math.prod(shape[1:]) if len(shape) > 1 else 1
    r = min(n, m, rank)
    return (n + m) * r if (n + m) * r * min_compression_rate < n * m else n * m


def step_bytes(shapes: list[tuple[int, ...]], rank: int | None) -> int:
    """Bytes all-reduced per step for fp32 gradients of these shapes; rank None: plain all-reduce."""
    if rank is None:
        return FP32_BYTES * sum(math.prod(s) for s in shapes)
    return FP32_BYTES * sum(compressed_elements(s, rank) for s in shapes)


def rank_for_ratio(shapes: list[tuple[int, ...]], target: float = 16.0, max_rank: int = 64) -> int | None:
    """The largest rank whose compression (plain / PowerSGD bytes) is still >= target."""
    plain = step_bytes(shapes, None)
    fitting = [r for r in range(1, max_rank + 1) if plain / step_bytes(shapes, r) >= target]
    return max(fitting) if fitting else None


def gradient_shapes(model: torch.nn.Module) -> list[tuple[int, ...]]:
    return [tuple(p.shape) for p in model.parameters() if p.requires_grad]
