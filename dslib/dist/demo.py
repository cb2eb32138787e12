"""Small rank functions that show (and test) the launcher: a collective, a failure, a hang."""
from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

from dslib.env import device


def all_reduce_sum(size: int = 4) -> dict[str, object]:
    """Each rank contributes (rank + 1) * ones; every rank ends with the sum."""
    tensor = torch.full((size,), float(dist.get_rank() + 1), device=device())
    dist.all_reduce(tensor)
    return {"world_size": dist.get_world_size(), "backend": dist.get_backend(), "sum": tensor.cpu().tolist(),
            "slurm_step": os.environ.get("SLURM_STEP_ID")}  # set when srun started the ranks


def fail_on_rank(rank: int = 1, message: str = "planted failure") -> None:
    """Rank ``rank`` raises; the others wait in a barrier (a real run's collective)."""
    if dist.get_rank() == rank:
        raise RuntimeError(message)
    dist.barrier()


def hang_on_rank(rank: int = 1, seconds: float = 3600) -> None:
    """Rank ``rank`` sleeps far past any sensible timeout; the others wait in a barrier."""
    if dist.get_rank() == rank:
        time.sleep(seconds)
    dist.barrier()
