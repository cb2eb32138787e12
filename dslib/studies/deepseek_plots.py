"""Chapter 12's figures, from the tables of deepseek_arch and deepseek_training."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from dslib import viz
from dslib.studies.deepseek_training import load_heatmap


def plot_kv_cache(table: pd.DataFrame) -> Any:
    """Bytes per token per layer of each attention variant, one group of bars per shape (log)."""
    fig, ax = viz.new_figure(width=9)
    shapes = list(dict.fromkeys(table["shape"]))
    for i, shape in enumerate(shapes):
        rows = table[table["shape"] == shape].reset_index(drop=True)
        xs = i * (len(rows) + 1) + np.arange(len(rows))
        bars = ax.bar(xs, rows["measured_bytes"], label=shape)
        ax.bar_label(bars, labels=rows["variant"], rotation=90, padding=2, fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks([])
    ax.set_ylabel("KV-cache bytes per token per layer (measured)")
    ax.legend(title="shape")
    ax.set_title("What one token leaves in each layer's cache")
    return fig


def plot_decode(rows: pd.DataFrame) -> Any:
    """ms per decoded token against the cached context, per attention path."""
    fig, axes = viz.new_figure(ncols=2)
    ax1, ax2 = axes[0]
    for variant, group in rows.groupby("variant"):
        ax1.plot(group["context"], group["ms_per_token"], "o-", label=variant)
        ax2.plot(group["context"], group["vs_mha"], "o-", label=variant)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens already in the cache")
        ax.legend()
    ax1.set_ylabel("ms per new token (one layer's attention)")
    ax2.set_ylabel("time / MHA's time")
    ax2.axhline(1.0, color="gray", ls="--")
    ax1.set_title("Decode time per token"), ax2.set_title("Relative to MHA")
    return fig


def plot_balancing(summary: pd.DataFrame, histories: pd.DataFrame) -> Any:
    """Left: training MaxVio_batch over steps (mean over seeds); right: validation loss against
    MaxVio_global per variant (seed means, bars one standard deviation)."""
    fig, axes = viz.new_figure(ncols=2)
    ax1, ax2 = axes[0]
    for variant, group in histories.groupby("variant", sort=False):
        mean = group.groupby("step")["moe_maxvio"].mean()
        ax1.plot(mean.index, mean.values, label=variant)
    ax1.set_xlabel("training step"), ax1.set_ylabel("MaxVio_batch (log-window mean)")
    ax1.legend(), ax1.set_title("Load imbalance during training")
    for r in summary.itertuples():
        ax2.errorbar(r.maxvio_global, r.val_loss, xerr=r.maxvio_global_std, yerr=r.val_loss_std, fmt="o",
                     capsize=3, label=r.variant)
    ax2.set_xlabel("MaxVio_global on validation"), ax2.set_ylabel("validation loss (nats/token)")
    ax2.legend(), ax2.set_title("Loss against balance (lower left is better)")
    return fig


def plot_load_heatmaps(histories: pd.DataFrame, layer: int, seed: int) -> Any:
    """Each variant's expert load shares over training (one MoE layer, one seed)."""
    variants = list(dict.fromkeys(histories["variant"]))
    fig, axes = viz.new_figure(ncols=len(variants), width=3.2, height=3.6)
    for ax, variant in zip(axes[0], variants):
        history = histories[(histories["variant"] == variant) & (histories["seed"] == seed)].to_dict("records")
        steps, shares = load_heatmap(history, layer)
        image = ax.imshow(shares.T, aspect="auto", cmap="viridis", vmin=0,
                          extent=(steps[0], steps[-1], shares.shape[1] - 0.5, -0.5))
        ax.set_title(variant, fontsize=9)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel(f"expert (layer {layer})")
    fig.colorbar(image, ax=axes[0].tolist(), label="share of the layer's assignments")
    return fig


def plot_curves(curves: pd.DataFrame, title: str) -> Any:
    """Validation loss against training FLOPs (left) and training wall time (right), per arm:
    the mean over seeds at each evaluation."""
    fig, axes = viz.new_figure(ncols=2)
    for ax, x, label in ((axes[0][0], "flops", "training FLOPs (named formulas)"),
                         (axes[0][1], "wall_s", "training wall time (s)")):
        for arm, group in curves.groupby("arm", sort=False):
            mean = group.groupby("step")[[x, "val_loss"]].mean()
            ax.plot(mean[x], mean["val_loss"], "o-", label=arm)
        ax.set_xlabel(label), ax.set_ylabel("validation loss (nats/token)")
        ax.legend()
    axes[0][0].set_title(title)
    return fig
