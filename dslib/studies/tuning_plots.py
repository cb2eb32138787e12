"""Chapter 09 figures: checkpointing trade-off, sharing, PowerSGD bytes and loss."""
from __future__ import annotations

from typing import Any

from dslib import viz


def _modelled_curve(ax, rows: list[dict[str, Any]], plain: dict[str, Any]) -> None:
    """The plain peak moved by the modelled activation bytes, at the modelled recompute overhead."""
    rows = sorted(rows, key=lambda r: r["modelled_recompute"])
    modelled = [plain["peak_MB"] - plain["modelled_activations_MB"] + r["modelled_activations_MB"] for r in rows]
    ax.plot([r["modelled_recompute"] * 100 for r in rows], modelled, "x--", color="gray",
            label="modelled (plan: activations, recompute FLOPs)")


def checkpoint_tradeoff(rows: list[dict[str, Any]]):
    """Memory saved against time overhead per k, measured, with the modelled curve drawn in."""
    fig, axes = viz.new_figure(2)
    ax_mem, ax_time = axes[0]
    labels = [f"k={r['checkpoint_every']}" if r["checkpoint_every"] else "none" for r in rows]
    ax_mem.scatter([r["time_overhead"] * 100 for r in rows], [r["peak_MB"] for r in rows], label="measured")
    _modelled_curve(ax_mem, rows, next(r for r in rows if r["checkpoint_every"] is None))
    for r, label in zip(rows, labels):
        ax_mem.annotate(label, (r["time_overhead"] * 100, r["peak_MB"]), fontsize=8)
    ax_mem.set(xlabel="step time overhead vs none (%)", ylabel="peak training memory (MB)",
               title="Activation checkpointing: memory vs time")
    ax_mem.legend(fontsize=8)
    ax_time.bar(labels, [r["step_s"] for r in rows], color="tab:orange")
    ax_time.set(ylabel="step time (s, fastest timed step)", title="Step time per checkpoint interval")
    fig.tight_layout()
    return fig


def checkpoint_readings(rows: list[dict[str, Any]]):
    """Peak memory and step time of each recompute scheme (checkpoint_readings rows), the modelled
    peak (plain peak moved by the modelled activation bytes) marked on each bar."""
    fig, axes = viz.new_figure(2)
    ax_mem, ax_time = axes[0]
    labels = [r["scheme"] + (f"\nk={r['checkpoint_every']}" if r["checkpoint_every"] else "") for r in rows]
    plain = next(r for r in rows if r["scheme"] == "none")
    ax_mem.bar(labels, [r["peak_MB"] for r in rows], label="measured peak")
    ax_mem.scatter(labels, [plain["peak_MB"] - plain["modelled_activations_MB"] + r["modelled_activations_MB"]
                            for r in rows], color="gray", marker="x", zorder=3, label="modelled")
    ax_mem.set(ylabel="peak training memory (MB)", title="Two readings of 'every k layers', selective, full")
    ax_mem.legend(fontsize=8)
    ax_time.bar(labels, [r["step_s"] * 1e3 for r in rows], color="tab:orange")
    for i, r in enumerate(rows):
        ax_time.annotate(f"+{r['time_overhead'] * 100:.0f}%\n(model +{r['modelled_recompute'] * 100:.0f}%)",
                         (i, r["step_s"] * 1e3), ha="center", va="bottom", fontsize=7)
    ax_time.set(ylabel="step time (ms, fastest timed step)", title="Step time and recompute overhead")
    for ax in (ax_mem, ax_time):
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    return fig


def sharing_losses(results: dict[str, dict[str, Any]]):
    fig, axes = viz.new_figure(2)
    ax_loss, ax_bar = axes[0]
    for name, res in results.items():
        ax_loss.plot(res["losses"], label=f"{name} ({res['params'] / 1e6:.2f}M params)")
    ax_loss.set(xlabel="step", ylabel="training loss", title="Shared feed-forward weights: loss")
    ax_loss.legend(fontsize=8)
    names = list(results)
    ax_bar.bar(names, [results[n]["peak_MB"] for n in names])
    ax_bar.set(ylabel="peak training memory (MB)", title="Memory with shared MLPs")
    fig.tight_layout()
    return fig


def powersgd_curves(runs: list[dict[str, Any]]):
    fig, axes = viz.new_figure(2)
    ax_bytes, ax_loss = axes[0]
    for run in runs:
        label = "plain all-reduce" if run["rank"] is None else f"PowerSGD rank {run['rank']}"
        ax_bytes.plot([b / 1e3 for b in run["bytes_per_step"]], label=label)
        ax_loss.plot(run["losses"], label=label)
    ax_bytes.set(xlabel="step", ylabel="kB all-reduced per rank and step (counted)", yscale="log",
                 title="Gradient bytes (warm-up steps are plain)")
    ax_loss.set(xlabel="step", ylabel="training loss (mean over ranks)", title="Loss cost of compression")
    ax_loss.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_overlap_timeline(result: dict[str, Any]):
    """Each bucket's all-reduce (start to end) against the backward pass, per bucket cap."""
    fig, axes = viz.new_figure(2)
    ax_tl, ax_step = axes[0]
    for row, entry in enumerate(result["buckets"]):
        ax_tl.barh(row, entry["backward_s"] * 1e3, color="lightgray", height=0.8,
                   label="backward (returns after the last all-reduce)" if row == 0 else None)
        for event in entry["events"]:
            end = event.get("end_s", event["start_s"])
            ax_tl.barh(row, (end - event["start_s"]) * 1e3, left=event["start_s"] * 1e3, height=0.4,
                       color="tab:blue", label="bucket all-reduce" if row == 0 and event["bucket"] == 0 else None)
    ax_tl.set_yticks(range(len(result["buckets"])), [f"{e['bucket_cap_mb']} MB" for e in result["buckets"]])
    ax_tl.set(xlabel="ms after backward starts", ylabel="bucket_cap_mb", title="DDP all-reduce during backward")
    ax_tl.legend(fontsize=8)
    labels = [f"overlap, {e['bucket_cap_mb']} MB" for e in result["buckets"]] + ["sync after backward"]
    ax_step.bar(labels, [e["step_s"] * 1e3 for e in result["buckets"]] + [result["sync"]["step_s"] * 1e3])
    ax_step.set(ylabel="step time (ms, fastest)", title="Overlapped buckets vs one all-reduce after backward")
    ax_step.tick_params(axis="x", labelsize=7, rotation=20)
    fig.tight_layout()
    return fig


def deepspeed_checkpointing(rows: list[dict[str, Any]]):
    """ZeRO ranks: peak step memory vs time overhead per k for torch's and DeepSpeed's checkpoint
    (left); every variant's peak memory and step time, failed variants marked (right)."""
    fig, axes = viz.new_figure(2)
    ax_k, ax_var = axes[0]
    plain = rows[0]
    for impl, marker in (("torch", "o-"), ("deepspeed", "s--")):
        series = sorted((r for r in rows if r["variant"] == impl and not r["error"]),
                        key=lambda r: r["checkpoint_every"])
        if not series:
            continue
        ax_k.plot([r["time_overhead"] * 100 for r in series], [r["peak_MB"] for r in series], marker,
                  label=f"{impl} checkpoint")
        for r in series:
            ax_k.annotate(f"k={r['checkpoint_every']}", (r["time_overhead"] * 100, r["peak_MB"]), fontsize=8)
    ax_k.scatter([0], [plain["peak_MB"]], color="black", label="no checkpointing")
    _modelled_curve(ax_k, [r for r in rows if r["variant"] in ("none", "deepspeed")], plain)
    ax_k.set(xlabel="step time overhead vs none (%)", ylabel="peak step memory per rank (MB, mean of ranks)",
             title=f"{plain['config']}, {plain['world_size']} ranks: torch vs DeepSpeed")
    ax_k.legend(fontsize=8)
    labels = [f"{r['variant']}\nk={r['checkpoint_every']}" for r in rows]
    ax_var.bar(labels, [0 if r["error"] else r["peak_MB"] for r in rows], color="tab:green")
    for i, r in enumerate(rows):
        text = "fails" if r["error"] else f"{r['step_s'] * 1e3:.0f} ms"
        ax_var.annotate(text, (i, 0 if r["error"] else r["peak_MB"]), ha="center", va="bottom", fontsize=7,
                        color="red" if r["error"] else "black")
    ax_var.set(ylabel="peak step memory per rank (MB)", title="Every variant (label: fastest step)")
    ax_var.tick_params(axis="x", labelsize=6, rotation=60)
    fig.tight_layout()
    return fig
