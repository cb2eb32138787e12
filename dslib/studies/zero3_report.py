"""Chapter 05's tables and plots: measured ZeRO runs next to chapter 02's memory model."""
from __future__ import annotations

from typing import Any

from dslib import viz
from dslib.parallel.zero_memory import predicted_model_states
from dslib.plan.memory import model_states
from dslib.studies import planning_plots
from dslib.studies.zero3 import ZeroResult
from dslib.units import MiB

COMPONENTS = ("params", "grads", "master", "optimizer")


def label(result: ZeroResult) -> str:
    offload = [f"{what}->{dev}" for what, dev in (("opt", result.offload_optimizer), ("param", result.offload_param))
               if dev != "none"]
    return f"ZeRO-{result.stage}" + (f" ({', '.join(offload)})" if offload else "")


def summary_row(result: ZeroResult) -> dict[str, Any]:
    """One run, rank 0: measured model states (in memory, on NVMe), the model's prediction, RSS."""
    mem = result.memory[0]
    layout = (result.n_params, result.stage, result.world_size, result.offload_optimizer, result.offload_param,
              result.largest_layer_params)
    predicted = predicted_model_states(*layout)  # the moment measured: between backward and step
    other = {acc: predicted_model_states(*layout, accounting=acc) for acc in ("peak", "paper")}
    measured_total = result.model_state_bytes + mem["params_nvme"]
    predicted_total = predicted["in_memory"] + predicted["nvme"]
    return {
        "run": label(result), "config": result.config, "ranks": result.world_size,
        "final_loss": result.losses[-1], "step_s": result.step_time,
        **{f"{c}_MiB": mem[c] / MiB for c in COMPONENTS},
        "states_in_memory_MiB": result.model_state_bytes / MiB,
        "predicted_in_memory_MiB": predicted["in_memory"] / MiB,
        "params_on_nvme_MiB": mem["params_nvme"] / MiB,
        "predicted_nvme_MiB": predicted["nvme"] / MiB,
        "nvme_files_MiB": result.nvme_bytes[0] / MiB,
        "states_total_vs_model": measured_total / predicted_total,
        **{f"states_total_vs_{acc}": measured_total / (o["in_memory"] + o["nvme"]) for acc, o in other.items()},
        "rss_MiB": result.process[0]["rss"] / MiB,
    }


def nvme_rows(results: list[ZeroResult]) -> list[dict[str, Any]]:
    """Per NVMe-offload run and rank: the bytes of the partitions whose home is NVMe, and the
    sizes of the swap files read from that rank's NVMe folder (they must be equal)."""
    return [{"run": label(r), "rank": rank, "partitions_on_nvme_bytes": mem["params_nvme"],
             "swap_file_bytes": r.nvme_bytes[rank]}
            for r in results if r.offload_param == "nvme" for rank, mem in enumerate(r.memory)]


def plot_model_states(results: list[ZeroResult]):
    """Per run: measured model states by component (stacked), the model's prediction, and RSS."""
    fig, (ax_states, ax_rss) = _two_axes()
    rows = [summary_row(r) for r in results]
    xs = range(len(rows))
    bottom = [0.0] * len(rows)
    for component in COMPONENTS + ("params_on_nvme",):
        key = f"{component}_MiB"
        heights = [row[key] for row in rows]
        ax_states.bar([x - 0.2 for x in xs], heights, 0.4, bottom=bottom, label=f"measured {component}",
                      hatch="//" if component == "params_on_nvme" else None)
        bottom = [b + h for b, h in zip(bottom, heights)]
    predicted = [row["predicted_in_memory_MiB"] + row["predicted_nvme_MiB"] for row in rows]
    ax_states.bar([x + 0.2 for x in xs], predicted, 0.4, color="lightgray", edgecolor="black",
                  label="chapter 02 model")
    ax_states.set_ylabel("model states per rank (MiB)")
    ax_states.set_xticks(list(xs), [row["run"] for row in rows], rotation=30, ha="right", fontsize=8)
    ax_states.set_ylim(0, max(bottom + predicted) * 1.45)  # headroom for the legend
    ax_states.legend(fontsize=7, ncol=3, loc="upper center")
    ax_rss.bar(list(xs), [row["rss_MiB"] for row in rows], color="tab:purple")
    ax_rss.set_ylabel("process RSS, rank 0 (MiB)")
    ax_rss.set_xticks(list(xs), [row["run"] for row in rows], rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    return fig


def _two_axes():
    fig, axes = viz.new_figure(ncols=2, width=6.5, height=4.2)
    return fig, (axes[0][0], axes[0][1])


def plot_training(results: list[ZeroResult]):
    """Loss per step (the curves should lie on each other) and median step time per run."""
    fig, (ax_loss, ax_time) = _two_axes()
    for r in results:
        ax_loss.plot(range(r.first_step + 1, r.first_step + len(r.losses) + 1), r.losses, marker=".", label=label(r))
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss (global batch)")
    ax_loss.legend(fontsize=7)
    ax_time.bar(range(len(results)), [r.step_time for r in results], color="tab:green")
    ax_time.set_xticks(range(len(results)), [label(r) for r in results], rotation=30, ha="right", fontsize=8)
    ax_time.set_ylabel("median step time (s)")
    fig.tight_layout()
    return fig


CLUSTER_LAYOUTS = (("DP (stage 0)", 0, "none", "none"), ("ZeRO-3", 3, "none", "none"),
                   ("ZeRO-3, optimizer -> CPU", 3, "cpu", "none"),
                   ("ZeRO-3, optimizer -> CPU, params -> NVMe (the article's config)", 3, "cpu", "nvme"))


def cluster_prediction(n_params: float, gpus_per_node: int, num_nodes: int = 1) -> list[dict[str, Any]]:
    """The memory model at the article's scale (mixed-precision AdamW): GB per GPU, CPU and NVMe per node."""

    rows = []
    for name, stage, opt, param in CLUSTER_LAYOUTS:
        states = model_states(int(n_params), zero_stage=stage, gpus_per_node=gpus_per_node, num_nodes=num_nodes,
                              offload_optimizer=opt, offload_param=param)
        rows.append({"layout": name, "gpus": gpus_per_node * num_nodes, "GB_per_gpu": states.device_total / 1e9,
                     "cpu_GB_per_node": states.cpu_per_node / 1e9, "nvme_GB_per_node": states.nvme_per_node / 1e9})
    return rows


def cluster_evidence(rows: list[dict[str, Any]], note: str = "") -> list[dict[str, Any]]:
    """run.evidence rows for zero3_100b_1_2tb_to_320gb from cluster_prediction's rows: before = the
    whole model's states on one GPU (DP), after = per GPU under each ZeRO-3 layout (modelled)."""
    dp = next(r for r in rows if r["layout"].startswith("DP"))
    return [{"value": {"before_GB": dp["GB_per_gpu"], "after_GB": r["GB_per_gpu"]}, "kind": "modelled",
             "conditions": {"before": "memory model: DP (stage 0)", "devices": r["gpus"],
                            "after": "memory model: " + r["layout"].replace(", ", " ")},
             "default": "article" in r["layout"], "note": note}
            for r in rows if r["layout"].startswith("ZeRO-3")]


def plot_measured_partitioning(results: list[ZeroResult]) -> Any:
    """Chapter 02's ZeRO partitioning diagram drawn from the bytes each rank measured (stages
    without offload), scaled to what the stage-0 run holds on one rank; None without a stage-0 run."""
    plain = [r for r in results if r.offload_optimizer == "none" and r.offload_param == "none"]
    base = next((r for r in plain if r.stage == 0), None)
    if base is None:
        return None
    # a component's whole: what stage 0 replicates on a rank, or, for one stage 0 does not keep
    # (DeepSpeed's fp32 master clone), the sum of its partitions over the ranks
    full = {c: float(base.memory[0].get(c, 0)) or max(sum(m.get(c, 0) for m in r.memory) for r in plain)
            for c in COMPONENTS}
    full = {c: b for c, b in full.items() if b > 0}
    per_rank = {label(r): [{c: float(m.get(c, 0)) for c in COMPONENTS} for m in r.memory] for r in plain}
    return planning_plots.plot_zero_partitioning(
        per_rank, full, "Model states each rank holds, measured from DeepSpeed's tensors (before the optimizer step)")
