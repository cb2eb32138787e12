"""Chapter 03's figures: the four score terms of one head, the segment recurrence as measured
(one token's influence per layer and segment, the stop-gradient), and the reach against L x M."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from dslib import viz
from dslib.model.attention import ScoreTerms


def plot_score_terms(terms: ScoreTerms, layer: int, head: int = 0, row: int = 0) -> Any:
    """Heatmaps (query x key) of the four terms and their sum for one head of one batch row."""
    fig, axes = viz.new_figure(ncols=5, width=3.2, height=3.4)
    visible = terms.visible.cpu().numpy()
    panels = {**terms.named(), "sum = score": terms.total()}
    for ax, (name, term) in zip(axes[0], panels.items()):
        values = np.where(visible, term[head, row].detach().float().cpu().numpy(), np.nan)
        limit = np.nanmax(np.abs(values))
        image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_title(f"{name}\nmean |.| {np.nanmean(np.abs(values)):.3f}", fontsize=9)
        ax.set_xlabel("key (memory, then segment)")
        ax.grid(False)
        fig.colorbar(image, ax=ax, fraction=0.05)
    axes[0][0].set_ylabel("query")
    fig.suptitle(f"Layer {layer}, head {head}: Transformer-XL's score split into its four terms", fontsize=10)
    fig.tight_layout()
    return fig


def plot_recurrence(influence: np.ndarray, seq_len: int, memory_length: int, position: int,
                    grad_rows: list[dict[str, Any]]) -> Any:
    """The segment recurrence as measured: log10 of how far each layer's output moves (rows,
    embedding at the bottom) at every position (columns) when the token at ``position`` changes;
    arrows for the memory each layer reads from the layer below in the previous segment, marked
    with the measured gradient through it (none: the stop-gradient)."""
    n_rows, n_pos = influence.shape
    fig, ax = viz.new_figure(width=11.0, height=4.2)
    with np.errstate(divide="ignore"):
        shown = np.log10(np.where(influence > 0, influence, np.nan))
    image = ax.imshow(shown, origin="lower", aspect="auto", cmap="viridis", interpolation="nearest",
                      extent=(-0.5, n_pos - 0.5, -0.5, n_rows - 0.5))
    fig.colorbar(image, ax=ax, label="log10 max |change| (blank: exactly 0)")
    for boundary in range(seq_len, n_pos, seq_len):
        ax.axvline(boundary - 0.5, color="white", lw=1.5)
    ax.plot(position, 0, marker="*", color="red", markersize=14, label=f"changed token (position {position})")
    detached = [r for r in grad_rows if r["memory"].startswith("detached")]
    attached = {r["layer"]: r["grad_norm"] for r in grad_rows if r["memory"].startswith("attached")}
    for layer in range(1, n_rows):
        for start in range(0, n_pos - seq_len, seq_len):
            # block `layer` in segment s+1 reads the last M inputs of segment s (the layer below)
            ax.annotate("", xy=(start + seq_len + seq_len / 2, layer - 0.15),
                        xytext=(start + seq_len - min(memory_length, seq_len) / 2, layer - 0.85),
                        arrowprops=dict(arrowstyle="->", color="white", ls="--", lw=1))
    none_grads = all(r["grad_is_none"] for r in detached)
    note = (f"dashed arrows: memory (last {memory_length} inputs of the layer below, previous segment)\n"
            f"gradient through it: {'None (stop-gradient)' if none_grads else 'NOT None'}; without the detach: "
            + ", ".join(f"layer {k}: {v:.2g}" for k, v in attached.items()))
    ax.text(0.01, 0.98, note, transform=ax.transAxes, va="top", fontsize=8, color="white",
            bbox=dict(facecolor="black", alpha=0.5))
    ax.set_yticks(range(n_rows), ["embedding"] + [f"block {i}" for i in range(1, n_rows)])
    ax.set_xlabel("token position (white lines: segment boundaries)")
    ax.set_title(f"Segment recurrence, measured: one changed token, segment {seq_len}, memory {memory_length}")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(False)
    fig.tight_layout()
    return fig


def plot_reach(rows: list[dict[str, Any]]) -> Any:
    """Measured reach (tokens after the changed one whose logits move) against memory length, per
    position of the changed token in its segment; the structural bound and layers x memory length."""
    table = pd.DataFrame(rows)
    fig, ax = viz.new_figure()
    for position, group in table.groupby("position"):
        ax.plot(group.memory_length, group.measured_reach, "o-", label=f"measured, token at {position}")
        ax.plot(group.memory_length, group.bound_reach, "k+", markersize=10)
    by_memory = table.groupby("memory_length").layers_x_memory.first()
    ax.plot(by_memory.index, by_memory.values, "--", color="gray", label="layers x memory length")
    ax.plot([], [], "k+", label="structural bound")
    ax.set_xlabel("memory length M (positions per layer)")
    ax.set_ylabel("reach (tokens)")
    ax.set_title("Effective context: how far one token's change reaches the logits")
    ax.legend(fontsize=8)
    return fig
