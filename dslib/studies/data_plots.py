"""Chapter 01's figures: funnel, near-dup Jaccard distribution, filter precision/recall,
annotator agreement."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from dslib.data.dedup import candidate_probability
from dslib.data.pipeline import Funnel
from dslib.viz import new_figure


def funnel(f: Funnel) -> Any:
    """Left: documents/bytes passed on by each step. Right: what each step dropped, stacked
    by reason (drops are usually a few percent, invisible on the kept scale)."""
    import matplotlib

    fig, axes = new_figure(2, 2, width=7, height=3.8)
    steps = [r["step"] for r in f.rows]
    drops = pd.DataFrame(f.drops, columns=["step", "reason", "docs", "bytes"])
    reasons = sorted(drops["reason"].unique())
    colors = matplotlib.colormaps["tab20"].resampled(max(1, len(reasons)))
    x = np.arange(len(steps))
    for row, (unit, scale, label) in enumerate((("docs", 1, "documents"), ("bytes", 1e6, "MB (UTF-8, as read)"))):
        ax_kept, ax_drop = axes[row]
        ax_kept.bar(x, [r[f"{unit}_kept"] / scale for r in f.rows], color="0.55")
        ax_kept.axhline((f.input_docs if unit == "docs" else f.input_bytes) / scale, color="k", ls=":", label="input")
        ax_kept.set_title(f"{label}: passed on by each step")
        ax_kept.legend(fontsize=8)
        bottom = np.zeros(len(steps))
        for k, reason in enumerate(reasons):
            group = drops[drops.reason == reason]
            values = np.array([group.loc[group.step == s, unit].sum() for s in steps]) / scale
            ax_drop.bar(x, values, bottom=bottom, label=reason, color=colors(k))
            bottom += values
        ax_drop.set_title(f"{label}: dropped, by reason")
        for ax in (ax_kept, ax_drop):
            ax.set_xticks(x, steps, rotation=20)
            ax.set_ylabel(label)
    axes[0][1].legend(fontsize=7, ncols=2)
    fig.tight_layout()
    return fig


def jaccard_distribution(jaccard: np.ndarray, accepted: np.ndarray, threshold: float, bands: int, rows: int,
                         known_jaccard: np.ndarray | None = None) -> Any:
    fig, axes = new_figure(2)
    ax, ax_s = axes[0]
    bins = np.linspace(0, 1, 41)
    ax.hist(jaccard[accepted], bins, label="accepted (duplicate)", color="C3")
    ax.hist(jaccard[~accepted], bins, label="rejected candidates", color="C0")
    if known_jaccard is not None:
        ax.hist(known_jaccard, bins, histtype="step", color="k", label="all known translation pairs (exact)")
    ax.axvline(threshold, color="k", ls="--")
    ax.set_xlabel("Jaccard of word-shingle sets")
    ax.set_ylabel("pairs")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("LSH candidate pairs against the threshold")
    s = np.linspace(0, 1, 200)
    ax_s.plot(s, candidate_probability(s, bands, rows))
    ax_s.axvline(threshold, color="k", ls="--")
    ax_s.set_xlabel("Jaccard s")
    ax_s.set_ylabel("P(candidate)")
    ax_s.set_title(f"1-(1-s^r)^b, b={bands} bands, r={rows} rows")
    fig.tight_layout()
    return fig


def filter_scores(table: pd.DataFrame) -> Any:
    fig, ax = new_figure(1, width=8)
    x = np.arange(len(table))
    for k, metric in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (k - 1) * 0.27, table[metric], 0.27, label=metric)
    for i, share in enumerate(table["model_share"]):
        ax.text(i, 1.02, f"model on {share:.0%}", ha="center", fontsize=8)
    ax.set_xticks(x, [f.split(" (")[0] for f in table["filter"]])
    ax.set_ylim(0, 1.1)
    ax.legend(loc="lower right")
    ax.set_title("Medical-domain filters on the held-out split")
    return fig


def plot_kappa_matrix(matrix: np.ndarray, fleiss: float) -> Any:
    fig, ax = new_figure(1, width=5, height=4.5)
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    n = len(matrix)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", color="w" if matrix[i, j] < 0.6 else "k")
    ax.set_xticks(range(n), [f"A{i + 1}" for i in range(n)])
    ax.set_yticks(range(n), [f"A{i + 1}" for i in range(n)])
    ax.grid(False)
    ax.set_title(f"Cohen's kappa per annotator pair (Fleiss' kappa {fleiss:.2f})")
    fig.colorbar(image, ax=ax)
    return fig
