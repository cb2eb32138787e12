"""Single-process DeepSpeed runs for chapters 07-08: precision configs under ZeRO, and Lion.

DeepSpeed reads the optimizer and precision from its JSON config:
``{"optimizer": {"type": "Lion", ...}}`` picks FusedLion on GPU and, with
``offload_optimizer: cpu``, the C++ DeepSpeedCPULion; on a CPU without offload it fails
("This op had not been implemented on CPU backend"). ``{"fp16": {"enabled": true}}`` is
refused on CPUs ("Type fp16 is not supported on your device"); bf16 runs.
"""
from __future__ import annotations

import copy
import os
import socket
from typing import Any, Callable, Iterable

import torch
from torch import nn

from dslib.env import dist_backend
from dslib.optim.lion import Lion

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def ensure_process_group() -> None:
    """A one-rank process group (gloo on CPU, nccl on CUDA) so deepspeed.initialize can run in-process."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0",
                       "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(key, value)
    deepspeed.init_distributed(dist_backend=dist_backend(), verbose=False)


def ds_config(micro_batch: int, precision: str = "fp32", zero_stage: int = 1,
              optimizer: dict[str, Any] | None = None, offload_optimizer: bool = False) -> dict[str, Any]:
    """A DeepSpeed config: precision section (bf16/fp16 with the article's loss scaling), ZeRO, optimizer."""
    zero: dict[str, Any] = {"stage": zero_stage}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": 1,
        "zero_optimization": zero, "steps_per_print": 10**9, "wall_clock_breakdown": False,
        # torch_adam: torch.optim.AdamW instead of the fused_adam op (no 50-80 s JIT build)
        "optimizer": optimizer or {"type": "AdamW",
                                   "params": {"lr": 1e-3, "weight_decay": 0.01, "torch_adam": True}},
    }
    if precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif precision == "fp16":
        # the article's dynamic loss scaling: 2**15 initial scale, x2 growth, x0.5 backoff
        config["fp16"] = {"enabled": True, "initial_scale_power": 15, "loss_scale": 0, "hysteresis": 1,
                          "loss_scale_window": 1000, "min_loss_scale": 1}
    return config


def run_engine(model: nn.Module, config: dict[str, Any], batches: Iterable[Any],
               loss_fn: LossFn) -> dict[str, Any]:
    """deepspeed.initialize + train over batches. A refused config is returned as its error
    (so a notebook shows DeepSpeed's message instead of crashing), not raised."""
    from dslib.parallel.ops import initialize_engine

    ensure_process_group()
    try:
        engine = initialize_engine(model, config)
    except (ValueError, RuntimeError, AssertionError, NotImplementedError) as error:
        return {"ok": False, "error": f"{type(error).__name__}: {error}", "losses": []}
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    losses = []
    try:
        for batch in batches:
            loss = loss_fn(engine, batch)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
    except (RuntimeError, NotImplementedError) as error:
        return {"ok": False, "error": f"{type(error).__name__}: {error}", "losses": losses}
    return {"ok": True, "error": None, "losses": losses, "engine": engine,
            "optimizer": type(inner).__name__, "param_dtype": str(next(engine.module.parameters()).dtype)}


def deepspeed_lion_matches(model: nn.Module, batches: list[Any], loss_fn: LossFn, lr: float = 1e-4,
                           betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.1) -> dict[str, Any]:
    """Train a copy with DeepSpeed's Lion (ZeRO-1, optimizer offloaded to CPU) and a copy
    with dslib Lion on the same batches; report the largest parameter difference.

    Expect exact agreement except where Lion's interpolation is exactly 0 (a gradient and
    momentum of 0, e.g. embedding rows of tokens absent from every batch so far): the paper
    takes sign(0) = 0, DeepSpeed's C++ op computes -copysign(lr, +0.0) = -lr and moves them.
    Hyper-parameters are passed explicitly: DeepSpeed's Lion defaults (lr 1e-3, betas
    0.9/0.999) are not the paper's (1e-4, 0.9/0.99).
    """
    reference = copy.deepcopy(model)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = {"type": "Lion", "params": {"lr": lr, "betas": list(betas), "weight_decay": weight_decay}}
    config = ds_config(micro_batch=1, zero_stage=1, optimizer=optimizer, offload_optimizer=True)
    result = run_engine(model, config, batches, loss_fn)
    if not result["ok"]:
        return result
    ours = Lion(reference.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    for batch in batches:
        loss = loss_fn(reference, batch)
        ours.zero_grad(set_to_none=True)
        loss.backward()
        ours.step()
    trained = result["engine"].module.state_dict()
    diffs = {k: (trained[k].float() - v.float()).abs() for k, v in reference.state_dict().items()}
    diff = max(d.max().item() for d in diffs.values())
    differing = sum(int((d > 1e-6).sum()) for d in diffs.values())
    moved = max((v.float() - initial[k].float()).abs().max().item() for k, v in reference.state_dict().items())
    return {**result, "max_abs_param_diff": diff, "max_abs_param_update": moved, "lr": lr,
            "differing_elements": differing, "elements": sum(d.numel() for d in diffs.values())}
