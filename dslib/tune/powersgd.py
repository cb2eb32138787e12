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
import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd
from torch.nn.parallel import DistributedDataParallel as DDP

from dslib.data.loader import StreamLoader
from dslib.env import device
from dslib.model import build_model, load_config
from dslib.train.step import OptimizerStepper, train_step
from dslib.tune.synthetic import markov_tokens

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


def _train(config, rank: int | None, tokens, steps: int, start_iter: int, batch_size: int,
           lr: float, seed: int) -> dict[str, Any]:
    ddp = DDP(build_model(config, seed, device()))  # every rank and every run: the same weights
    if rank is None:
        ddp.register_comm_hook(None, default_hooks.allreduce_hook)
    else:
        state = psgd.PowerSGDState(process_group=None, matrix_approximation_rank=rank,
                                   start_powerSGD_iter=start_iter, use_error_feedback=True,
                                   warm_start=True, random_seed=seed)
        ddp.register_comm_hook(state, psgd.powerSGD_hook)
    stepper = OptimizerStepper(torch.optim.AdamW(ddp.parameters(), lr=lr, weight_decay=0.0))
    loader = StreamLoader(tokens, batch_size, config.seq_len)
    losses, byte_counts = [], []
    start = time.perf_counter()
    with counting_all_reduce() as counter:
        for _ in range(steps):
            before = counter.bytes
            # DDP's backward waits for every bucket's future before returning: all bytes are counted
            result = train_step(ddp, tuple(t.to(device()) for t in loader.next_batch()), stepper,
                                after_backward=lambda: byte_counts.append(counter.bytes - before))
            mean_loss = result.loss.clone()
            dist.all_reduce(mean_loss)  # outside the counter: the curve is the mean over ranks
            losses.append(float(mean_loss) / dist.get_world_size())
    return {"rank": rank, "losses": losses, "bytes_per_step": byte_counts,
            "step_s": (time.perf_counter() - start) / steps,
            "shapes": gradient_shapes(ddp.module)}


def compare_compression(ranks: list[int], steps: int = 30, start_iter: int = 10, model: str = "tiny",
                        model_overrides: dict[str, Any] | None = None, batch_size: int = 8,
                        lr: float = 2e-3, seed: int = 0) -> list[dict[str, Any]]:
    """Entry for ``launch``: plain all-reduce, then PowerSGD at each rank, same data and seed.

    Each data-parallel rank reads its own part of a Markov token stream. Returns one dict
    per run: losses (mean over ranks), bytes_per_step (counted), step_s, gradient shapes.
    """
    config = load_config(model, **(model_overrides or {}))
    world, me = dist.get_world_size(), dist.get_rank()
    need = (steps + 1) * config.seq_len * batch_size + batch_size
    stream = markov_tokens(config.vocab_size, need * world, seed=seed)
    tokens = stream[me * need:(me + 1) * need]
    return [_train(config, r, tokens, steps, start_iter, batch_size, lr, seed) for r in [None, *ranks]]
