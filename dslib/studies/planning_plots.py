"""Chapter 02's three figures: memory stacks per stage, memory versus devices, comm share versus bandwidth."""
from __future__ import annotations

from typing import Any

import numpy as np

from dslib.plan import comm
from dslib.units import GB


def plot_memory_stacks(ax: Any, stacks: dict[str, dict[str, float]], title: str,
                       device_memory: float | None = None, legend: bool = True) -> None:
    """Stacked bars: one per stage, one colour per memory component (GB per rank)."""
    components = list(dict.fromkeys(name for stack in stacks.values() for name in stack))
    bottom = np.zeros(len(stacks))
    for name in components:
        heights = np.array([stack.get(name, 0.0) for stack in stacks.values()]) / GB
        ax.bar(list(stacks), heights, bottom=bottom, label=name)
        bottom += heights
    if device_memory:
        ax.axhline(device_memory / GB, color="black", linestyle="--", label=f"{device_memory / GB:.0f} GB device")
    ax.set_ylabel("GB per rank")
    ax.set_title(title)
    if legend:  # outside, right of the axes
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def plot_memory_vs_devices(ax: Any, rows: list[dict[str, Any]], title: str,
                           device_memory: float | None = None) -> None:
    """Per-device model-state GB against device count, one line per layout (log-log)."""
    for layout in dict.fromkeys(row["layout"] for row in rows):
        points = [(row["devices"], row["per_device_GB"]) for row in rows if row["layout"] == layout]
        ax.plot(*zip(*points), marker="o", label=layout)
    if device_memory:
        ax.axhline(device_memory / GB, color="black", linestyle="--", label=f"{device_memory / GB:.0f} GB device")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("devices")
    ax.set_ylabel("model states, GB per device")
    ax.set_title(title)
    ax.legend(fontsize=7)


def overhead_vs_bandwidth(setting: comm.CommSetting, tokens_per_device: float,
                          bandwidths: list[float], zero_stage: int, overlap: float) -> list[float]:
    """Exposed-communication share of the step for each link bandwidth (latency of setting.link)."""
    return [setting.with_link(comm.Link("sweep", bw, setting.link.latency)).overhead(
        tokens_per_device, zero_stage, overlap) for bw in bandwidths]


def plot_comm_vs_bandwidth(ax: Any, setting: comm.CommSetting, tokens_per_device: float,
                           links: list[comm.Link], points: int = 60) -> None:
    """Communication share of the step against link bandwidth for DP/ZeRO-3, with and without overlap."""
    bandwidths = list(np.logspace(7, 12.5, points))
    for stage, overlap, style in [(2, 0.0, "-"), (2, comm.BACKWARD_SHARE, ":"), (3, 0.0, "--")]:
        label = f"{'DP / ZeRO-1/2' if stage < 3 else 'ZeRO-3'}, {'backward overlap' if overlap else 'no overlap'}"
        shares = overhead_vs_bandwidth(setting, tokens_per_device, bandwidths, stage, overlap)
        ax.plot(bandwidths, shares, style, label=label)
    for i, link in enumerate(sorted(links, key=lambda l: l.bandwidth)):
        ax.axvline(link.bandwidth, color="grey", alpha=0.5)
        # alternate label heights so neighbouring links stay readable
        ax.text(link.bandwidth, 1.0 if i % 2 else 0.55, link.name, rotation=90, fontsize=6, va="top", ha="right")
    ax.set_xscale("log")
    ax.set_xlabel("link bandwidth, bytes/s")
    ax.set_ylabel("communication share of step")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{setting.n_params / 1e9:.0f}B params, {setting.n_devices} devices, "
                 f"{tokens_per_device:.0f} tokens/device/step, MFU {setting.mfu:.0%}")
    ax.legend(fontsize=7, loc="center left")


ZERO_COLOURS = {"params": "tab:blue", "grads": "tab:orange", "master": "tab:green", "optimizer": "tab:red"}


def plot_zero_partitioning(per_rank: dict[str, list[dict[str, float]]], full: dict[str, float], title: str) -> Any:
    """ZeRO's partitioning drawn from bytes: one row per stage, one box per rank; in each box the
    model-state components side by side at their unpartitioned size (``full``, outlined), filled
    where that rank holds bytes (a 1/N slice at the rank's offset when it holds 1/N)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    components = [c for c in ZERO_COLOURS if full.get(c)]
    total = sum(full[c] for c in components)
    n_ranks = max(len(ranks) for ranks in per_rank.values())
    fig, ax = plt.subplots(figsize=(2.6 * n_ranks + 1.5, 0.9 * len(per_rank) + 1.2))
    for row, (stage, ranks) in enumerate(per_rank.items()):
        y = len(per_rank) - 1 - row
        for rank, held in enumerate(ranks):
            x0 = rank * 1.15
            for component in components:
                width = full[component] / total
                share = min(held.get(component, 0.0) / full[component], 1.0)
                ax.add_patch(Rectangle((x0, y + 0.1), width, 0.6, fill=False, edgecolor=ZERO_COLOURS[component]))
                start = x0 + (0.0 if share > 0.99 else rank * share * width)
                ax.add_patch(Rectangle((start, y + 0.1), share * width, 0.6, color=ZERO_COLOURS[component]))
                x0 += width
            ax.text(rank * 1.15 + 0.5, y + 0.78, f"rank {rank}: {sum(held.get(c, 0.0) for c in components) / total:.0%}",
                    ha="center", fontsize=8)
    ax.set_xlim(-0.05, n_ranks * 1.15)
    ax.set_ylim(0, len(per_rank) + 0.1)
    ax.set_yticks([len(per_rank) - 1 - i + 0.4 for i in range(len(per_rank))], list(per_rank))
    ax.set_xticks([])
    ax.grid(False)
    ax.legend(handles=[Rectangle((0, 0), 1, 1, color=ZERO_COLOURS[c]) for c in components], labels=components,
              fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def zero_partition_bytes(n_params: int, world_size: int) -> tuple[dict[str, list[dict[str, float]]], dict[str, float]]:
    """Per stage 0-3, each rank's model-state bytes by component (the ZeRO paper's accounting,
    from dslib.plan.memory), and the unpartitioned bytes: the input of plot_zero_partitioning."""
    from dslib.plan import memory

    full = dict(memory.model_states(n_params, zero_stage=0, accounting="paper").device)
    per_rank = {f"ZeRO-{stage}" if stage else "DP (stage 0)":
                [dict(memory.model_states(n_params, zero_stage=stage, gpus_per_node=world_size,
                                          accounting="paper").device)] * world_size
                for stage in range(4)}
    return per_rank, full
