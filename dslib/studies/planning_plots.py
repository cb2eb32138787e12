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
