"""ZeRO on several ranks: the training recipe under DeepSpeed (stages 1-3), and an engine's teardown.

``train_zero`` trains with the same recipe as the single-process ``Trainer`` (the model from
one seed, the warmup + cosine schedule, gradient clipping, weight decay on matrices only, the
forward under the precision's autocast with FP32 master weights, Transformer-XL memory carried
along each lane), every step the book's one step with an ``EngineStepper``. DeepSpeed
partitions the optimizer states (stage 1), the gradients (2) and the parameters (3) over the
ranks. Each rank reads its own contiguous share of the training stream in
``batch_size / world`` lanes, so a step sees ``batch_size`` lanes in all, as one process does.

The optimizer comes from DeepSpeed's config (chapter 08): AdamW (torch's, no op to build) or
Lion, which on a CPU exists only as the offloaded DeepSpeedCPULion (the prebuilt ``cpu_lion``
op). Rank 0 returns a ``TrainResult`` (each step's loss averaged over the ranks) and the full
FP32 weights, gathered first under stage 3. Chapter 05's measured runs are in
dslib.studies.zero3.
"""
from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist

from dslib.data.loader import StreamLoader
from dslib.data.shards import load_shards
from dslib.dist.ds_config import DeepSpeedConfig, engine_config
from dslib.dist.launch import launch
from dslib.dist.ops import initialize_engine
from dslib.env import device
from dslib.model import ModelConfig, build_model
from dslib.train.recipe import TrainConfig, lr_at, param_groups
from dslib.train.step import EngineStepper, carried_memory, train_step
from dslib.train.trainer import TrainResult
from dslib.tune.checkpointing import apply_checkpointing

ZeroOptimizer = Literal["adamw", "lion"]


def ds_optimizer(name: ZeroOptimizer, cfg: TrainConfig) -> dict[str, Any]:
    """DeepSpeed's optimizer section for the recipe's hyper-parameters."""
    params = {"lr": cfg.lr, "betas": list(cfg.betas), "weight_decay": cfg.weight_decay}
    if name == "adamw":
        return {"type": "AdamW", "params": {**params, "torch_adam": True}}
    if name == "lion":
        return {"type": "Lion", "params": params}
    raise ValueError(f"optimizer must be 'adamw' or 'lion', got {name!r}")


def zero_config(cfg: TrainConfig, stage: int, optimizer: ZeroOptimizer, world: int) -> dict[str, Any]:
    """The DeepSpeed config of a run, validated here (before any rank starts)."""
    if stage not in (1, 2, 3):
        raise ValueError(f"zero stage must be 1, 2 or 3 here (0 is the single-process Trainer), got {stage}")
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} does not split over {world} ranks")
    offload = optimizer == "lion" and device().type == "cpu"  # DeepSpeed has no in-place CPU Lion
    config = engine_config(cfg.batch_size // world, "fp32", stage, ds_optimizer(optimizer, cfg), offload)
    config["gradient_clipping"] = cfg.grad_clip
    return DeepSpeedConfig(**config).as_dict()


def _full_state_dict(engine: Any, stage: int) -> dict[str, torch.Tensor] | None:
    """Every rank must call this (stage 3 gathers the partitions); rank 0 gets FP32 CPU weights."""
    import deepspeed  # seconds to import: only where an engine runs

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=stage == 3):
        if dist.get_rank() == 0:
            return {k: v.detach().float().cpu().clone() for k, v in engine.module.state_dict().items()}
    return None


def train_zero_rank(model_config: dict[str, Any], train_config: dict[str, Any], shards: str,
               ds_config: dict[str, Any], checkpoint_every: int | None = None
               ) -> tuple[TrainResult, dict[str, torch.Tensor]] | None:
    """One rank (called by dslib.dist.worker with torch.distributed up)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = TrainConfig(**train_config)
    # the same initial weights as the single-process run
    model = build_model(ModelConfig(**model_config), cfg.seed, device())
    apply_checkpointing(model, checkpoint_every)
    engine = initialize_engine(
        model, ds_config, param_groups(model, cfg.weight_decay),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, cfg) / cfg.lr))
    tokens = load_shards(shards).tokens("train")
    share = len(tokens) // world
    loader = StreamLoader(tokens[rank * share:(rank + 1) * share], cfg.batch_size // world, cfg.seq_len,
                          engine.device)
    losses, mems, stepper = torch.zeros(cfg.steps, device=engine.device), None, EngineStepper(engine)
    start = time.perf_counter()
    for step in range(cfg.steps):
        mems = carried_memory(mems, loader.at_start, cfg.use_memory)
        result = train_step(engine, loader.next_batch(), stepper, mems, cfg.precision)  # the engine clips
        mems = result.out.mems if cfg.use_memory else None
        losses[step] = result.loss
    seconds = time.perf_counter() - start
    dist.all_reduce(losses)
    state = _full_state_dict(engine, ds_config["zero_optimization"]["stage"])
    if rank != 0:
        return None
    result = TrainResult(losses=(losses / world).tolist(), history=[], evals=[],
                         tokens_per_s=cfg.steps * cfg.batch_size * cfg.seq_len / seconds)
    return result, state


def train_zero(model_config: Any, cfg: TrainConfig, shards_folder: str | Path, stage: int,
               optimizer: ZeroOptimizer = "adamw", checkpoint_every: int | None = None, nprocs: int = 2,
               timeout: float = 900) -> tuple[TrainResult, dict[str, torch.Tensor]]:
    """Train on ``nprocs`` DeepSpeed ranks through dslib.dist.launch; returns rank 0's
    (TrainResult, FP32 state dict). ``model_config``: a dslib ModelConfig."""
    kwargs = dict(model_config=model_config.model_dump(mode="json"), train_config=cfg.model_dump(mode="json"),
                  shards=str(shards_folder), ds_config=zero_config(cfg, stage, optimizer, nprocs),
                  checkpoint_every=checkpoint_every)
    return launch(entry="dslib.parallel.zero:train_zero_rank", nprocs=nprocs, kwargs=kwargs, timeout=timeout)


AIO_HANDLE_ATTRS = ("aio_read_handle", "aio_write_handle", "aio_handle", "read_aio_handle", "write_aio_handle")


def release_engine(engine) -> None:
    """Tear a DeepSpeed engine down now, on this rank, instead of at interpreter exit.

    NVMe offload owns async-I/O handles (DeepSpeed's C++ ``aio_handle``), each running I/O
    threads; left to interpreter finalization they are destroyed in no set order with torch's
    and gloo's C++ state. Here the engine drops its hooks (``engine.destroy()``), every swapper
    waits for its in-flight reads and writes, and its handles are dropped (their destructors
    stop and join the I/O threads) while the interpreter and the process group are still up.
    """
    swappers = {id(s): s for p in engine.module.parameters() if (s := getattr(p, "nvme_swapper", None)) is not None}
    optimizer_swapper = getattr(engine.optimizer, "optimizer_swapper", None)
    if optimizer_swapper is not None:
        swappers[id(optimizer_swapper)] = optimizer_swapper
    engine.destroy()
    for swapper in swappers.values():
        # nothing may be in flight when a handle's threads stop (the swapper counts what is;
        # a handle's own wait() asserts that something is pending)
        for sync in ("synchronize_reads", "synchronize_writes"):
            if callable(getattr(swapper, sync, None)):
                getattr(swapper, sync)()
        for attr in AIO_HANDLE_ATTRS:
            if not isinstance(getattr(swapper, attr, None), (type, type(None))):  # "aio_handle" may name the class
                setattr(swapper, attr, None)
    gc.collect()  # the engine's reference cycles go now, not during finalization
