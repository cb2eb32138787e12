"""Lion vs AdamW vs the article's sign-Adam at equal compute: sweeps, curves, speed-up ratios.

Every run of one comparison sees the same batches in the same order (``batch_fn(step)``)
and the same validation batches, for the same number of steps; only the optimizer and
its hyper-parameters change. Wall time counts training steps only (evaluation excluded),
so a slower optimizer step shows up in the loss-over-time curves.

"Lion converges 1.8x faster" is measured as (steps or seconds AdamW needs to reach a
target validation loss) / (steps or seconds Lion needs), per seed, with each optimizer
at its best learning rate from a small sweep. A best learning rate on the edge of its grid
is no optimum: `grid_edge` flags it and `widen_to_interior` extends the grid past that edge
until the best is inside. Steps (and seconds) to a target are interpolated linearly between
the two evaluations that bracket it, so the ratio is not quantised to `eval_every`; ratios are
reported at several targets (`loss_targets`), not only at the slowest run's best loss.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from dslib.optim.lion import ArticleSignAdam, Lion, state_bytes_per_param
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

    def reach(self, target: float) -> tuple[float, float] | None:
        """(step, training seconds) where the validation loss first falls to ``target``,
        interpolated linearly between the two evaluations around it (from step 0 at the first
        evaluation's loss when that one is already below), or None if it never does."""
        prev = (0.0, 0.0, None)
        for step, wall, loss in zip(self.val_steps, self.val_wall_s, self.val_loss):
            if loss <= target:
                p_step, p_wall, p_loss = prev
                if p_loss is None or p_loss == loss:
                    return float(step), wall
                frac = (p_loss - target) / (p_loss - loss)
                return p_step + frac * (step - p_step), p_wall + frac * (wall - p_wall)
            prev = (float(step), wall, loss)
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


def loss_targets(curves: list[Curve], fractions: Iterable[float] = (0.5, 0.8, 1.0)) -> list[float]:
    """Targets part of the way from the highest first-evaluation loss down to the common
    target (fraction 1.0 = `common_target`, which the slowest run reaches only at its best)."""
    start, end = max(c.val_loss[0] for c in curves), common_target(curves)
    return [start + f * (end - start) for f in fractions]


def grid_edge(lrs: list[float], losses: list[float]) -> str | None:
    """Where the best (lowest-loss) learning rate sits in its grid: "low" or "high" edge,
    "single point" for a one-point grid, None when inside. NaN losses count as diverged."""
    if len(lrs) < 2:
        return "single point"
    finite = [loss if loss == loss else float("inf") for loss in losses]
    best = lrs[finite.index(min(finite))]
    return "low" if best == min(lrs) else "high" if best == max(lrs) else None


def sweep_edges(sweep: dict[str, list[Curve]]) -> dict[str, str | None]:
    """`grid_edge` of each optimizer's sweep (by final validation loss)."""
    return {name: grid_edge([c.spec.lr for c in curves], [c.final_val_loss for c in curves])
            for name, curves in sweep.items()}


def widen_to_interior(model_fn: Callable[[], nn.Module], sweep: dict[str, list[Curve]], seed: int,
                      factor: float = 3.0, max_rounds: int = 2, **train_kwargs: Any) -> dict[str, list[Curve]]:
    """Extend each optimizer's grid by `factor` past the edge its best lr sits on, one point
    per round, until the best is inside or `max_rounds` points were added; `sweep_edges` of
    the result says which grids still end on their best."""
    sweep = {name: list(curves) for name, curves in sweep.items()}
    for name, curves in sweep.items():
        for _ in range(max_rounds):
            lrs = [c.spec.lr for c in curves]
            edge = grid_edge(lrs, [c.final_val_loss for c in curves])
            if edge not in ("low", "high"):
                break
            lr = min(lrs) / factor if edge == "low" else max(lrs) * factor
            spec = dataclasses.replace(curves[0].spec, lr=lr)
            curves.append(train_curve(model_fn, spec, seed, **train_kwargs))
        curves.sort(key=lambda c: c.spec.lr)
    return sweep


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


def speedups_at(baseline: list[Curve], challenger: list[Curve], targets: Iterable[float]) -> list[dict[str, Any]]:
    """One row per target: `speedup`'s mean, range and number of seeds that reached it."""
    rows = []
    for target in targets:
        result = speedup(baseline, challenger, target)
        rows.append({"target_val_loss": target, "seeds_reached": sum("step_ratio" in r for r in result["per_seed"]),
                     **{k: v for k, v in result.items() if k not in ("target_val_loss", "per_seed")}})
    return rows


def curves_table(curves: dict[str, list[Curve]]) -> list[dict[str, Any]]:
    return [row for group in curves.values() for c in group for row in c.rows()]


def state_after_one_step(model_fn: Callable[[], nn.Module], batch: Batch) -> list[dict[str, Any]]:
    """Optimizer state bytes per parameter, measured from the state tensors after one step of
    Lion, AdamW and the article's sign-Adam on the same fresh model and batch."""
    makers = {"Lion": Lion, "AdamW": torch.optim.AdamW, "article sign-Adam": ArticleSignAdam}
    rows = []
    for name, make in makers.items():
        model = model_fn()
        optimizer = make(model.parameters())
        batch_loss(model, batch).backward()
        optimizer.step()
        rows.append({"optimizer": name, **state_bytes_per_param(optimizer)})
    return rows
