"""Chapter 09's PowerSGD runs: DDP with plain all-reduce, then PowerSGD at each rank, the same
data and seed, every all-reduced byte counted (dslib.tune.powersgd) and the loss it costs."""
from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd
from torch.nn.parallel import DistributedDataParallel as DDP

from dslib.data.loader import StreamLoader
from dslib.data.synthetic import markov_tokens
from dslib.env import device
from dslib.model import build_model, load_config
from dslib.train.step import OptimizerStepper, train_step
from dslib.tune.powersgd import counting_all_reduce, gradient_shapes


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
