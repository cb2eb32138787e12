"""Single-process DeepSpeed runs for chapters 07-08: precision configs under ZeRO, and Lion.

DeepSpeed reads the optimizer and precision from its JSON config:
``{"optimizer": {"type": "Lion", ...}}`` picks FusedLion on GPU and, with
``offload_optimizer: cpu``, the C++ DeepSpeedCPULion; on a CPU without offload it fails
("This op had not been implemented on CPU backend"). ``{"fp16": {"enabled": true}}`` is
refused on CPUs ("Type fp16 is not supported on your device"); bf16 runs.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable

from torch import nn

from dslib.dist.ds_config import engine_config
from dslib.dist.ops import initialize_engine, start_single_rank
from dslib.optim.lion import Lion
from dslib.train.step import Batch, EngineStepper, OptimizerStepper, train_step


def run_engine(model: nn.Module, config: dict[str, Any], batches: Iterable[Batch]) -> dict[str, Any]:
    """A DeepSpeed engine in this process (one rank), trained over ``batches``. A refused config
    is returned as its error (so a notebook shows DeepSpeed's message instead of crashing)."""
    start_single_rank()
    try:
        engine = initialize_engine(model, config)
    except (ValueError, RuntimeError, AssertionError, NotImplementedError) as error:
        return {"ok": False, "error": f"{type(error).__name__}: {error}", "losses": []}
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    losses, stepper = [], EngineStepper(engine)
    try:
        for batch in batches:
            losses.append(train_step(engine, batch, stepper).loss.item())
    except (RuntimeError, NotImplementedError) as error:
        return {"ok": False, "error": f"{type(error).__name__}: {error}", "losses": losses}
    return {"ok": True, "error": None, "losses": losses, "engine": engine,
            "optimizer": type(inner).__name__, "param_dtype": str(next(engine.module.parameters()).dtype)}


def deepspeed_lion_matches(model: nn.Module, batches: list[Batch], lr: float = 1e-4,
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
    config = engine_config(micro_batch=1, zero_stage=1, optimizer=optimizer, offload_optimizer=True)
    result = run_engine(model, config, batches)
    if not result["ok"]:
        return result
    ours = OptimizerStepper(Lion(reference.parameters(), lr=lr, betas=betas, weight_decay=weight_decay))
    for batch in batches:
        train_step(reference, batch, ours)
    trained = result["engine"].module.state_dict()
    diffs = {k: (trained[k].float() - v.float()).abs() for k, v in reference.state_dict().items()}
    diff = max(d.max().item() for d in diffs.values())
    differing = sum(int((d > 1e-6).sum()) for d in diffs.values())
    moved = max((v.float() - initial[k].float()).abs().max().item() for k, v in reference.state_dict().items())
    return {**result, "max_abs_param_diff": diff, "max_abs_param_update": moved, "lr": lr,
            "differing_elements": differing, "elements": sum(d.numel() for d in diffs.values())}
