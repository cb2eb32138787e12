"""Chapter 06's pipeline figures and claim evidence, from pipeline_study's plain rows."""
from __future__ import annotations

from typing import Any

from dslib import viz

def plot_balance(rows: list[dict[str, Any]]):
    """Per layout: forward+backward ms of one micro-batch on each stage, per partition method."""
    layouts = list(dict.fromkeys(r["layout"] for r in rows))
    fig, axes = viz.new_figure(ncols=len(layouts), width=4.8)
    axes = axes[0] if len(layouts) > 1 else [axes]
    for ax, layout in zip(axes, layouts):
        mine = [r for r in rows if r["layout"] == layout]
        n_stages = len(mine[0]["ms_per_stage"])
        width = 0.8 / n_stages
        for stage in range(n_stages):
            ax.bar([i + stage * width for i in range(len(mine))], [r["ms_per_stage"][stage] for r in mine],
                   width, label=f"stage {stage}")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(mine))],
                      [f"{r['partition_method']}\n{r['stages']}\nratio {r['balance_ratio']:.2f}" for r in mine],
                      fontsize=8)
        ax.set_title(layout, fontsize=10)
        ax.set_ylabel("fwd+bwd ms per micro-batch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_bubble(rows: list[dict[str, Any]], stages: int):
    """Measured idle fraction against (p - 1) / (m + p - 1), over the micro-batch count m."""
    fig, ax = viz.new_figure()
    m = [r["micro_batches"] for r in rows]
    dense = list(range(1, max(m) + 1))
    ax.plot(dense, [(stages - 1) / (k + stages - 1) for k in dense], "--", color="gray",
            label=f"(p-1)/(m+p-1), p={stages}")
    ax.plot(m, [r["measured_idle"] for r in rows], "o-", label="measured (instruction timestamps)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(m, [str(k) for k in m])
    ax.set_xlabel("micro-batches per step (m)")
    ax.set_ylabel("idle fraction of a stage")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("Pipeline bubble: DeepSpeed 1F1B schedule")
    return fig


def plot_losses(result: dict[str, Any]):
    fig, ax = viz.new_figure()
    steps = range(1, len(result["losses_single"]) + 1)
    ax.plot(steps, result["losses_single"], "o-", label="one process")
    ax.plot(steps, result["losses_3d"], "x--", label=result["layout"])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"3D vs one process: max |diff| {result['max_abs_diff']:.1e}")
    ax.legend()
    return fig


DEEPSPEED_DEFAULT_METHOD = "parameters"  # PipelineModule's partition_method default


def balance_evidence(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """run.evidence rows for pipeline_balance_2_3x: per layout and balancing method, the measured
    improvement of the slowest/fastest stage ratio over 'uniform', and the one FLOPs predict
    (modelled). The gain is how unequal 'uniform's layer-count split was for that layout."""
    evidence = []
    for row in rows:
        if row["partition_method"] == "uniform":
            continue
        conditions = {"layout": row["layout"], "partition_method": row["partition_method"]}
        default = row["partition_method"] == DEEPSPEED_DEFAULT_METHOD
        evidence += [{"value": row["improvement_vs_uniform"], "conditions": conditions, "default": default,
                      "note": f"stages {row['stages']}, slowest/fastest {row['balance_ratio']:.2f}"},
                     {"value": row["flops_improvement_vs_uniform"], "conditions": conditions, "kind": "modelled",
                      "default": default, "note": "from dslib.model.flops"}]
    return evidence


WORK_COLORS = {"ForwardPass": "tab:blue", "BackwardPass": "tab:orange"}


def plot_pipeline_timeline(runs: list, step: int = -1):
    """Gantt chart of one measured step of the run with the most micro-batches: one row per stage,
    every recorded instruction at its measured start and length (ms from the step's first
    instruction); forward and backward numbered by micro-batch in the order each stage ran them."""
    run = max(runs, key=lambda r: (r.micro_batches, len(r.events)))
    records = [stage[step] for stage in run.events]
    start = min(s for rec in records for _, s, _ in rec)
    fig, ax = viz.new_figure(width=11, height=0.9 * len(records) + 1.6)
    for row, rec in enumerate(records):
        seen = {name: 0 for name in WORK_COLORS}
        for name, s, e in rec:
            work = name in WORK_COLORS
            ax.barh(row, (e - s) * 1e3, left=(s - start) * 1e3, height=0.7 if work else 0.25,
                    color=WORK_COLORS.get(name, "lightgray"), edgecolor="black" if work else "none", linewidth=0.4)
            if work:
                ax.text((s + e - 2 * start) / 2 * 1e3, row, f"{'F' if name == 'ForwardPass' else 'B'}{seen[name]}",
                        ha="center", va="center", fontsize=7, color="white")
                seen[name] += 1
    from matplotlib.patches import Patch

    legend = [Patch(color=c, label=n) for n, c in WORK_COLORS.items()]
    legend.append(Patch(color="lightgray", label="other instructions (send/recv, load, reduce, step)"))
    ax.set_yticks(range(len(records)), [f"stage {i}" for i in range(len(records))])
    ax.invert_yaxis()
    ax.set(xlabel="ms from the step's first instruction (measured)",
           title=f"1F1B, measured: {run.label}, {run.partition_method}, {run.micro_batches} micro-batches")
    ax.legend(handles=legend, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=3)
    fig.tight_layout()
    return fig

