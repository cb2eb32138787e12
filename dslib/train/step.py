"""The one training step: every training loop in the book calls ``train_step``.

A step is the forward under the precision's autocast (LayerNorm, softmax and the loss stay
FP32), the backward of ``out.loss + out.aux_loss`` through a stepper, then the stepper's
update. Loops differ only in what they do around it (log, evaluate, checkpoint, count bytes,
measure memory between backward and update through ``after_backward``); the arithmetic is the
same in the single-process trainer, the DeepSpeed ranks, DDP, the sweeps and the studies.

A stepper owns how gradients become an update:
  OptimizerStepper  a torch optimizer with an optional GradScaler (fp16), gradient clipping and
                    a learning-rate schedule; for a plain model and a DDP-wrapped one alike
  EngineStepper     a DeepSpeed engine (its config decides clipping, ZeRO, offload, schedule)
After an update that was not skipped, a model with MoE routers moves their balancing biases
(``update_router_biases``, auxiliary-loss-free balancing).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

import torch
from torch import nn

from dslib.train.precision import Precision, autocast

Batch = tuple[torch.Tensor, torch.Tensor]  # (idx, targets), each [B, T]


class Stepper(Protocol):
    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> tuple[torch.Tensor | None, bool]:
        """Apply the update; returns (gradient norm before clipping or None, whether skipped)."""


class OptimizerStepper:
    """A torch optimizer, with an optional GradScaler, clipping and LR scheduler.

    ``params``: the parameters to clip (default: the optimizer's). The scaler may be disabled
    (fp32/bf16), in which case it passes everything through unchanged.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None,
                 grad_clip: float = 0.0, scheduler: Any = None,
                 params: Iterable[nn.Parameter] | None = None) -> None:
        self.optimizer, self.scaler, self.grad_clip, self.scheduler = optimizer, scaler, grad_clip, scheduler
        self.params = list(params) if params is not None else [
            p for group in optimizer.param_groups for p in group["params"]]

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self) -> tuple[torch.Tensor | None, bool]:
        grad_norm, skipped = None, False
        if self.grad_clip > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            grad_norm = nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        if self.scaler is not None:
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
            self.scaler.step(self.optimizer)  # fp16: skips the update when a gradient is inf/nan
            self.scaler.update()
            skipped = scale is not None and self.scaler.get_scale() < scale
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)  # gradients go before the next forward
        return grad_norm, skipped


class EngineStepper:
    """A DeepSpeed engine: backward and step are the engine's own (clipping, ZeRO, schedule)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> tuple[torch.Tensor | None, bool]:
        self.engine.step()
        return None, not self.engine.was_step_applied()  # fp16 overflow (or an accumulation micro-step)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper or a DeepSpeed engine (both keep it as ``.module``)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def carried_memory(mems: list[torch.Tensor] | None, stream_restarted: bool,
                   use_memory: bool) -> list[torch.Tensor] | None:
    """The memory a segment may attend to: none when the token stream starts over (a new pass
    over the lanes has nothing earlier to remember) or when memory is off."""
    return mems if use_memory and not stream_restarted else None


def forward(model: nn.Module, batch: Batch, mems: list[torch.Tensor] | None = None) -> Any:
    """``model(idx, [mems,] targets=targets)``: memory only for models that carry one."""
    idx, targets = batch
    return model(idx, targets=targets) if mems is None else model(idx, mems=mems, targets=targets)


def batch_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """What a step minimises on one batch: the LM loss plus the model's weighted auxiliary terms."""
    out = forward(model, batch)
    return out.loss + out.aux_loss


@dataclass
class StepResult:
    out: Any                          # the (last micro-batch's) ModelOutput: loss, aux_loss, mems, stats
    loss: torch.Tensor                # mean LM loss over the micro-batches, detached, on the device
    grad_norm: torch.Tensor | None    # before clipping, when the stepper clips
    skipped: bool                     # fp16: the scaler skipped this update (inf/nan gradients)


def train_step(model: nn.Module, batch: Batch | list[Batch], stepper: Stepper,
               mems: list[torch.Tensor] | None = None, precision: Precision | str = "fp32",
               after_backward: Callable[[], None] | None = None) -> StepResult:
    """One optimizer step of ``model`` on ``batch`` (or on a list of micro-batches, whose losses
    are averaged into one update: gradient accumulation; memory is carried only for one batch).

    ``after_backward`` runs between the backward and the update (what a loop measures there).
    """
    micro = batch if isinstance(batch, list) else [batch]
    if len(micro) > 1 and mems is not None:
        raise ValueError("memory is carried across segments, not across accumulated micro-batches")
    total = None
    for one in micro:
        with autocast(one[0].device, precision):
            out = forward(model, one, mems)
        loss = out.loss + out.aux_loss
        stepper.backward(loss / len(micro) if len(micro) > 1 else loss)
        total = out.loss.detach() if total is None else total + out.loss.detach()
    if after_backward is not None:
        after_backward()
    grad_norm, skipped = stepper.step()
    balance = getattr(unwrap(model), "update_router_biases", None)
    if balance is not None and not skipped:
        balance()
    return StepResult(out, total / len(micro), grad_norm, skipped)
