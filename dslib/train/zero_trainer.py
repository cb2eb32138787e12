"""The training recipe on several ranks under DeepSpeed ZeRO (stages 1-3), for notebook 11.

The same recipe as the single-process ``Trainer``: the model from one seed, the warmup +
cosine schedule (``lr_at``), gradient clipping, weight decay on matrices only
(``param_groups``), the forward under the precision's autocast with FP32 master weights,
and Transformer-XL memory carried along each lane. DeepSpeed partitions the optimizer
states (stage 1), the gradients (2) and the parameters (3) over the ranks. Each rank reads
its own contiguous share of the training stream in ``batch_size / world`` lanes, so a step
sees ``batch_size`` lanes in all, as the single-process run does.

The optimizer comes from DeepSpeed's config (chapter 08): AdamW (torch's, no op to build)
or Lion, which on a CPU exists only as the offloaded DeepSpeedCPULion (the prebuilt
``cpu_lion`` op). Rank 0 returns a ``TrainResult`` (each step's loss averaged over the ranks)
and the full FP32 weights, gathered first under stage 3.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import torch

from dslib.env import device
from dslib.train.recipe import TrainConfig, lr_at, param_groups, seed_everything
from dslib.train.trainer import TrainResult

Optimizer = Literal["adamw", "lion"]


def ds_optimizer(name: Optimizer, cfg: TrainConfig) -> dict[str, Any]:
    """DeepSpeed's optimizer section for the recipe's hyper-parameters."""
    params = {"lr": cfg.lr, "betas": list(cfg.betas), "weight_decay": cfg.weight_decay}
    if name == "adamw":
        return {"type": "AdamW", "params": {**params, "torch_adam": True}}
    if name == "lion":
        return {"type": "Lion", "params": params}
    raise ValueError(f"optimizer must be 'adamw' or 'lion', got {name!r}")


def zero_config(cfg: TrainConfig, stage: int, optimizer: Optimizer, world: int) -> dict[str, Any]:
    """The DeepSpeed config of a run, validated here (before any rank starts)."""
    from dslib.optim.deepspeed_runs import ds_config
    from dslib.parallel.ds_config import DeepSpeedConfig

    if stage not in (1, 2, 3):
        raise ValueError(f"zero stage must be 1, 2 or 3 here (0 is the single-process Trainer), got {stage}")
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} does not split over {world} ranks")
    offload = optimizer == "lion" and device().type == "cpu"  # DeepSpeed has no in-place CPU Lion
    config = ds_config(cfg.batch_size // world, "fp32", stage, ds_optimizer(optimizer, cfg), offload)
    config["gradient_clipping"] = cfg.grad_clip
    return DeepSpeedConfig(**config).as_dict()


def _full_state_dict(engine: Any, stage: int) -> dict[str, torch.Tensor] | None:
    """Every rank must call this (stage 3 gathers the partitions); rank 0 gets FP32 CPU weights."""
    import deepspeed
    import torch.distributed as dist

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=stage == 3):
        if dist.get_rank() == 0:
            return {k: v.detach().float().cpu().clone() for k, v in engine.module.state_dict().items()}
    return None


def train_rank(model_config: dict[str, Any], train_config: dict[str, Any], shards: str,
               ds_config: dict[str, Any], checkpoint_every: int | None = None
               ) -> tuple[TrainResult, dict[str, torch.Tensor]] | None:
    """One rank (called by dslib.parallel.worker with torch.distributed up)."""
    import torch.distributed as dist

    from dslib.data.loader import StreamLoader
    from dslib.data.shards import load_shards
    from dslib.model import ModelConfig, TransformerXL
    from dslib.parallel.ops import initialize_engine
    from dslib.train import precision
    from dslib.tune.checkpointing import apply_checkpointing

    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = TrainConfig(**train_config)
    seed_everything(cfg.seed)  # the same initial weights as the single-process run
    model = TransformerXL(ModelConfig(**model_config)).to(device())
    apply_checkpointing(model, checkpoint_every)
    engine = initialize_engine(
        model, ds_config, param_groups(model, cfg.weight_decay),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, cfg) / cfg.lr))
    tokens = load_shards(shards).tokens("train")
    share = len(tokens) // world
    loader = StreamLoader(tokens[rank * share:(rank + 1) * share], cfg.batch_size // world, cfg.seq_len,
                          engine.device)
    losses, mems = torch.zeros(cfg.steps, device=engine.device), None
    start = time.perf_counter()
    for step in range(cfg.steps):
        if loader.at_start or not cfg.use_memory:
            mems = None
        idx, targets = loader.next_batch()
        with precision.autocast(engine.device, cfg.precision):
            out = engine(idx, mems=mems, targets=targets)
        engine.backward(out.loss + out.aux_loss)
        engine.step()  # clips, steps the optimizer and the schedule
        mems = out.mems if cfg.use_memory else None
        losses[step] = out.loss.detach()
    seconds = time.perf_counter() - start
    dist.all_reduce(losses)
    state = _full_state_dict(engine, ds_config["zero_optimization"]["stage"])
    if rank != 0:
        return None
    result = TrainResult(losses=(losses / world).tolist(), history=[], evals=[],
                         tokens_per_s=cfg.steps * cfg.batch_size * cfg.seq_len / seconds)
    return result, state


def train_zero(model_config: Any, cfg: TrainConfig, shards_folder: str | Path, stage: int,
               optimizer: Optimizer = "adamw", checkpoint_every: int | None = None, nprocs: int = 2,
               timeout: float = 900) -> tuple[TrainResult, dict[str, torch.Tensor]]:
    """Train on ``nprocs`` DeepSpeed ranks through dslib.parallel.launch; returns rank 0's
    (TrainResult, FP32 state dict). ``model_config``: a dslib ModelConfig."""
    from dslib.parallel.launch import launch

    kwargs = dict(model_config=model_config.model_dump(mode="json"), train_config=cfg.model_dump(mode="json"),
                  shards=str(shards_folder), ds_config=zero_config(cfg, stage, optimizer, nprocs),
                  checkpoint_every=checkpoint_every)
    return launch(entry="dslib.train.zero_trainer:train_rank", nprocs=nprocs, kwargs=kwargs, timeout=timeout)
