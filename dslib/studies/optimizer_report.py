"""What chapter 08 shows of the optimizer comparison (dslib.studies.optimizers): the sweep's
table and figure, the seed runs' figure, per-seed and per-step rows, and what it records
(metrics and the claim's evidence rows) on the job run."""
from __future__ import annotations

from typing import Any

from dslib import viz
from dslib.studies.optimizers import Curve, OptimizerSpec

COLOURS = {"lion": "C0", "adamw": "C1", "article": "C2"}


def sweep_specs(lion_lrs: list[float], adamw_lrs: list[float], article_lrs: list[float],
                lion_weight_decay: float, adamw_weight_decay: float) -> list[OptimizerSpec]:
    """The learning-rate grid of each optimizer (the article's variant takes AdamW's decay)."""
    return ([OptimizerSpec("lion", lr, lion_weight_decay) for lr in lion_lrs]
            + [OptimizerSpec("adamw", lr, adamw_weight_decay) for lr in adamw_lrs]
            + [OptimizerSpec("article", lr, adamw_weight_decay) for lr in article_lrs])


def sweep_rows(sweep: dict[str, list[Curve]], best: dict[str, OptimizerSpec],
               edges: dict[str, str | None]) -> list[dict[str, Any]]:
    """One row per swept setting: its final validation loss, whether it is its optimizer's best,
    and whether that best sits on the grid's edge."""
    return [{"setting": c.spec.label, "final_val_loss": c.final_val_loss, "best": c.spec == best[c.spec.name],
             "best_on_grid_edge": edges[c.spec.name]} for curves in sweep.values() for c in curves]


def record_grid_edges(job_run: Any, best: dict[str, OptimizerSpec], edges: dict[str, str | None]) -> None:
    for name, edge in edges.items():
        job_run.metric(f"{name}_best_lr_on_grid_edge", int(edge is not None),
                       note=f"{best[name].label}: {edge or 'inside'}")


def plot_sweep(sweep: dict[str, list[Curve]]) -> Any:
    """One panel per optimizer, one validation curve per learning rate."""
    fig, axes = viz.new_figure(ncols=len(sweep))
    for ax, (name, curves) in zip(axes.flat, sweep.items()):
        for c in curves:
            ax.plot(c.val_steps, c.val_loss, marker=".", label=c.spec.label)
        ax.set(title=name, xlabel="step", ylabel="validation loss")
        ax.legend(fontsize=7)
    return fig


def plot_seed_runs(runs: dict[str, list[Curve]], target: float) -> Any:
    """Validation loss over steps (left) and training seconds (right), one colour per optimizer,
    one curve per seed; the dashed line is the common target."""
    top = max(max(c.val_loss) for c in runs["lion"] + runs["adamw"])
    # set both limits: with one fixed, a nearly flat smoke run autoscales the other far away
    bottom = min([target] + [min(c.val_loss) for curves in runs.values() for c in curves])
    fig, axes = viz.new_figure(ncols=2)
    ax_steps, ax_time = axes.flat
    for name, curves in runs.items():
        for i, c in enumerate(curves):
            label = c.spec.label if i == 0 else None
            ax_steps.plot(c.val_steps, c.val_loss, color=COLOURS[name], alpha=0.7, label=label)
            ax_time.plot(c.val_wall_s, c.val_loss, color=COLOURS[name], alpha=0.7, label=label)
    for ax, xlabel in ((ax_steps, "step"), (ax_time, "training seconds")):
        ax.axhline(target, color="grey", ls="--", lw=0.8)
        ax.set(xlabel=xlabel, ylabel="validation loss", ylim=(bottom - 0.05 * (top - bottom), 1.05 * top))
    ax_steps.legend(fontsize=7)
    return fig


def per_seed_rows(speedups: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """`speedup` results by challenger name -> one row per challenger and seed."""
    return [{"challenger": name, **row} for name, result in speedups.items() for row in result["per_seed"]]


def record_step_times(job_run: Any, runs: dict[str, list[Curve]], best: dict[str, OptimizerSpec]) -> dict[str, float]:
    """Mean training-step seconds per optimizer over its seed runs, recorded in ms."""
    step_s = {name: sum(c.wall_s[-1] for c in curves) / sum(len(c.wall_s) for c in curves)
              for name, curves in runs.items()}
    for name, seconds in step_s.items():
        job_run.metric(f"{name}_step_ms", 1e3 * seconds, unit="ms", note=f"mean training step, {best[name].label}")
    return step_s


def record_lion_evidence(job_run: Any, at_targets: list[dict[str, Any]], fractions: list[float],
                         conditions: dict[str, Any], edges: dict[str, str | None]) -> None:
    """One evidence row of lion_1_8x_faster per target (AdamW's steps over Lion's, seed mean); the
    common target (fraction 1) is the default reading."""
    for row, fraction in zip(at_targets, fractions):
        job_run.metric(f"lion_vs_adamw_step_ratio_target_{fraction:g}", row["step_ratio_mean"],
                       note=f"target {row['target_val_loss']:.3f}")
        job_run.evidence("lion_1_8x_faster", row["step_ratio_mean"], unit="x", seeds=row["seeds_reached"],
                         default=fraction == 1.0,
                         conditions={**conditions, "target_val_loss": round(row["target_val_loss"], 3),
                                     "target_fraction": fraction},
                         note=f"per seed {row['step_ratio_min']:.2f} to {row['step_ratio_max']:.2f}; wall time "
                              f"{row['time_ratio_mean']:.2f}x; steps interpolated between evaluations; "
                              f"lr grid edges: {edges}")
