"""Lion vs AdamW vs the article's sign-Adam at equal compute: sweeps, curves, speed-up ratios.

Every run of one comparison sees the same batches in the same order (``batch_fn(step)``)
and the same validation batches, for the same number of steps; only the optimizer and
its hyper-parameters change. Wall time counts training steps only (evaluation excluded),
so a slower optimizer step shows up in the loss-over-time curves.

"Lion converges 1.8x faster" is measured as (steps or seconds AdamW needs to reach a
target validation loss) / (steps or seconds Lion needs), per seed, with each optimizer
at its best learning rate from a small sweep.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from dslib.optim.lion import ArticleSignAdam, Lion
from dslib.train.step import Batch, OptimizerStepper, batch_loss, train_step


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer setting: name in {"lion", "adamw", "article"}, lr, weight decay."""

    name: str
    lr: float
    weight_decay: float = 0.0

    def build(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        if self.name == "lion":
            return Lion(params, lr=self.lr, betas=(0.9, 0.99), weight_decay=self.weight_decay)
        if self.name == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, betas=(0.9, 0.999), weight_decay=self.weight_decay)
        if self.name == "article":
            return ArticleSignAdam(params, lr=self.lr, weight_decay=self.weight_decay)
        raise ValueError(f"OptimizerSpec.name must be lion, adamw or article, got {self.name!r}")

    @property
    def label(self) -> str:
        return f"{self.name} lr={self.lr:g} wd={self.weight_decay:g}"


@dataclass
class Curve:
    """One training run: train loss per step, validation loss at eval steps, cumulative step time."""

    spec: OptimizerSpec
    seed: int
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_wall_s: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)

    @property
    def final_val_loss(self) -> float:
        return self.val_loss[-1]

    def reach(self, target: float) -> tuple[int, float] | None:
        """(step, training seconds) of the first evaluation with val loss <= target, or None."""
        for step, wall, loss in zip(self.val_steps, self.val_wall_s, self.val_loss):
            if loss <= target:
                return step, wall
        return None

    def rows(self) -> list[dict[str, Any]]:
        """Long-format rows (one per evaluation) for tables and plots."""
        return [{"optimizer": self.spec.name, "lr": self.spec.lr, "weight_decay": self.spec.weight_decay,
                 "seed": self.seed, "step": s, "wall_s": w, "val_loss": v}
                for s, w, v in zip(self.val_steps, self.val_wall_s, self.val_loss)]


@torch.no_grad()
def mean_loss(model: nn.Module, batches: list[Batch]) -> float:
    """Mean of ``batch_loss`` over ``batches``, in eval mode (restored to train mode after)."""
    model.eval()
    loss = sum(batch_loss(model, b).item() for b in batches) / len(batches)
    model.train()
    return loss


def train_curve(model_fn: Callable[[], nn.Module], spec: OptimizerSpec, seed: int,
                batch_fn: Callable[[int], Batch], val_batches: list[Batch], steps: int, eval_every: int,
                grad_clip: float = 1.0) -> Curve:
    """Train a fresh model (initialised from ``seed``) for ``steps`` steps with one optimizer."""
    torch.manual_seed(seed)
    model = model_fn()
    model.train()
    stepper = OptimizerStepper(spec.build(model.parameters()), grad_clip=grad_clip)
    curve = Curve(spec, seed)
    elapsed = 0.0
    for step in range(1, steps + 1):
        start = time.perf_counter()
        loss = train_step(model, batch_fn(step), stepper).loss
        elapsed += time.perf_counter() - start
        curve.steps.append(step)
        curve.train_loss.append(loss.item())
        curve.wall_s.append(elapsed)
        if step % eval_every == 0 or step == steps:
            curve.val_steps.append(step)
            curve.val_wall_s.append(elapsed)
            curve.val_loss.append(mean_loss(model, val_batches))
    return curve


def lr_sweep(model_fn: Callable[[], nn.Module], specs: list[OptimizerSpec], seed: int,
             **train_kwargs: Any) -> dict[str, list[Curve]]:
    """Train every spec once with the same seed; curves grouped by optimizer name."""
    curves: dict[str, list[Curve]] = {}
    for spec in specs:
        curves.setdefault(spec.name, []).append(train_curve(model_fn, spec, seed, **train_kwargs))
    return curves


def best_specs(sweep: dict[str, list[Curve]]) -> dict[str, OptimizerSpec]:
    """Per optimizer, the setting with the lowest final validation loss (NaN/diverged loses)."""
    def key(c: Curve) -> float:
        return c.final_val_loss if c.final_val_loss == c.final_val_loss else float("inf")
    return {name: min(curves, key=key).spec for name, curves in sweep.items()}


def common_target(curves: list[Curve]) -> float:
    """The lowest validation loss every given run reaches: the highest of their best losses."""
    return max(min(c.val_loss) for c in curves)


def speedup(baseline: list[Curve], challenger: list[Curve], target: float) -> dict[str, Any]:
    """Per-seed ratios baseline/challenger of steps and seconds to reach ``target`` val loss.

    A ratio > 1 means the challenger (Lion) reaches the target sooner. Seeds where
    either run never reaches the target are reported and left out of the ratios.
    """
    by_seed = {c.seed: c for c in challenger}
    per_seed = []
    for base in baseline:
        other = by_seed.get(base.seed)
        hit_base, hit_other = base.reach(target), other.reach(target) if other else None
        row = {"seed": base.seed, "baseline_steps": hit_base and hit_base[0],
               "challenger_steps": hit_other and hit_other[0],
               "baseline_s": hit_base and hit_base[1], "challenger_s": hit_other and hit_other[1]}
        if hit_base and hit_other:
            row["step_ratio"] = hit_base[0] / hit_other[0]
            row["time_ratio"] = hit_base[1] / hit_other[1]
        per_seed.append(row)
    out: dict[str, Any] = {"target_val_loss": target, "per_seed": per_seed}
    for key in ("step_ratio", "time_ratio"):
        values = [r[key] for r in per_seed if key in r]
        out[f"{key}_mean"] = statistics.mean(values) if values else None
        out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
        out[f"{key}_min"] = min(values) if values else None
        out[f"{key}_max"] = max(values) if values else None
    return out


def seed_runs(model_fn: Callable[[], nn.Module], specs: dict[str, OptimizerSpec], seeds: Iterable[int],
              **train_kwargs: Any) -> dict[str, list[Curve]]:
    """Each chosen spec trained once per seed (seeds change the model's initialisation)."""
    return {name: [train_curve(model_fn, spec, seed, **train_kwargs) for seed in seeds]
            for name, spec in specs.items()}


def curves_table(curves: dict[str, list[Curve]]) -> list[dict[str, Any]]:
    return [row for group in curves.values() for c in group for row in c.rows()]
