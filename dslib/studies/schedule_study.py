"""Pipeline schedules (chapter 13): torch's 1F1B, Interleaved1F1B, ZBVZeroBubble and DualPipeV on
the chapter 12 model, measured from each rank's action timeline, beside chapter 06's DeepSpeed 1F1B.

``study(...)`` runs every schedule at each micro-batch count in one launch (dslib.parallel.schedules),
trains the same micro-batches in one process, and returns plain rows:
  schedules  per (schedule, m): loss and gradient max |diff| to one process, measured bubble
             (idle share of a step per rank, mean over ranks), its formula, chunk times F/B/W,
             step time, peak saved-activation KiB per stage and per rank; or the exact error
  deepspeed  per m: chapter 06's engine (1F1B, TransformerXL of the same width, depth, vocabulary),
             the same measurements
``memory_rows(result)`` puts both engines' activation memory per rank beside the formulas: peak
bytes / one micro-batch's bytes = micro-batches in flight (1F1B: min(m, p - r)).
"""
from __future__ import annotations

import os
import statistics
from typing import Any

from dslib import viz
from dslib.parallel.schedules import (SCHEDULES, ScheduleRun, bubble_1f1b, bubble_interleaved, in_flight_formula,
                                      run_schedules, schedule_config, stages_of_rank, table2_bubble_time,
                                      train_reference)

KIND_COLOURS = {"F": "tab:blue", "B": "tab:orange", "I": "tab:red", "W": "tab:green"}


def _steps(run: ScheduleRun, skip: int) -> list[list[list[tuple]]]:
    """[step][rank] -> actions, after ``skip`` warm-up steps (the first builds buffers and shapes)."""
    n = len(run.actions[0])
    return [[rank[s] for rank in run.actions] for s in range(min(skip, n - 1), n)]


def measured_bubble(run: ScheduleRun, skip: int = 1) -> tuple[float, float]:
    """(idle fraction, step seconds): a step spans the first action start to the last action end on
    any rank; a rank is idle when it computes nothing. Mean over ranks, median over steps."""
    fractions, spans = [], []
    for ranks in _steps(run, skip):
        start = min(a[3] for rank in ranks for a in rank)
        span = max(a[4] for rank in ranks for a in rank) - start
        fractions.append(statistics.mean(1 - sum(a[4] - a[3] for a in rank) / span for rank in ranks))
        spans.append(span)
    return statistics.median(fractions), statistics.median(spans)


def chunk_times(run: ScheduleRun, skip: int = 1) -> dict[str, float]:
    """Median seconds of one chunk's F, full backward B (I + W where it is split) and W."""
    durations: dict[str, list[float]] = {}
    for ranks in _steps(run, skip):
        for rank in ranks:
            for _, kind, _, start, end in rank:
                durations.setdefault(kind, []).append(end - start)
    med = {k: statistics.median(v) for k, v in durations.items()}
    split = med.get("I", 0.0) + med.get("W", 0.0)
    return {"F": med["F"], "B": med.get("B", split), "W": med.get("W", 0.0)}


def formula_bubble(schedule: str, p: int, m: int, times: dict[str, float]) -> tuple[float, str]:
    """The idle fraction a schedule's formula gives, and which formula. Table 2 rows (time) become a
    fraction as bubble / (bubble + work), work = the chunks a rank computes: v m (F + B)."""
    f, b, w = times["F"], times["B"], times["W"]
    if schedule == "1F1B":
        return bubble_1f1b(p, m), "(p-1)/(m+p-1)"
    if schedule == "Interleaved1F1B":
        return bubble_interleaved(p, m, 2), "(p-1)/(v*m+p-1), v=2"
    if schedule == "ZBVZeroBubble":  # ZB1P's row with ZB-V's chunks, p ranks
        bubble, name = table2_bubble_time("ZB1P", p, f, b, w), "V3 Table 2 ZB1P (PP-1)(F+B-2W), PP=p"
    else:  # DualPipeV: PP = 2p stages on p ranks; F&B = F + B, the overlap runs one after the other on a CPU
        bubble, name = table2_bubble_time("DualPipe", 2 * p, f, b, w), "V3 Table 2 (PP/2-1)(F&B+B-3W), PP=2p"
    bubble = max(bubble, 0.0)
    return bubble / (bubble + 2 * m * (f + b)), name


def schedule_rows(runs: list[ScheduleRun], references: dict[int, tuple]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        row: dict[str, Any] = {"schedule": run.schedule, "ranks": run.ranks, "micro_batches": run.micro_batches,
                               "stages_per_rank": run.stages_per_rank, "error": run.error}
        if run.error is None:
            losses, grads = references[run.micro_batches]
            times = chunk_times(run)
            idle, step = measured_bubble(run)
            formula, name = formula_bubble(run.schedule, run.ranks, run.micro_batches, times)
            row.update(loss_max_diff=max(abs(a - b) for a, b in zip(run.losses, losses)),
                       grad_max_diff=max((run.grads[n] - g).abs().max().item() for n, g in grads.items()),
                       measured_bubble=idle, formula_bubble=formula, formula=name, step_ms=step * 1e3,
                       **{f"{k}_ms": v * 1e3 for k, v in times.items()},
                       peak_activation_kib=[round(b / 1024) for _, b in sorted(run.peak_activation_bytes.items())],
                       rank_peak_activation_kib=[round(b / 1024) for b in run.rank_peak_activation_bytes],
                       threads_per_rank=run.threads_per_rank)
        rows.append(row)
    return rows


def run_deepspeed(num_layers: int, micro_batches: list[int], ranks: int, steps: int, micro_batch: int,
                  timeout: float) -> list:
    """Chapter 06's DeepSpeed 1F1B engine at each m (one launch) on its TransformerXL of the schedules'
    width, depth, vocabulary and sequence; its forwards' saved activations measured as the torch
    schedules' are (SavedActivations)."""
    from dslib.parallel.pipeline import pipe_config, run_pipeline_engines

    ds = schedule_config()
    config = pipe_config("tiny", num_layers=num_layers, hidden_size=ds.hidden_size, seq_len=ds.seq_len,
                         vocab_size=ds.vocab_size)
    return run_pipeline_engines([{"config": config, "partition_method": "type:BlockPipe", "micro_batches": m,
                                  "label": f"m={m}"} for m in micro_batches],
                                stages=ranks, micro_batch=micro_batch, steps=steps, timeout=timeout,
                                measure_activations=True)


def deepspeed_row(run) -> dict[str, Any]:
    """Bubble, step time, chunk times and peak saved activations per stage of one DeepSpeed run."""
    from dslib.model import ModelConfig, count_parameters
    from dslib.studies.pipeline_study import STAGE_WORK, idle_fraction, step_span

    config, ranks = ModelConfig(**run.config), len(run.events)
    chunk = {work: statistics.median(e - s for stage in run.events for step in stage[1:] or stage
                                     for name, s, e in step if name == work) for work in STAGE_WORK}
    return {"engine": "DeepSpeed PipelineEngine (chapter 06)",
            "model": f"TransformerXL d={config.hidden_size} L={config.num_layers}",
            "params": count_parameters(config), "ranks": ranks, "micro_batches": run.micro_batches,
            "measured_bubble": idle_fraction(run), "formula_bubble": bubble_1f1b(ranks, run.micro_batches),
            "step_ms": step_span(run) * 1e3, "F_ms": chunk["ForwardPass"] * 1e3, "B_ms": chunk["BackwardPass"] * 1e3,
            "params_per_stage": run.stage_params,
            "peak_activation_kib": [round(b / 1024) for b in run.peak_activation_bytes]}


def memory_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per engine/schedule, m and rank: peak saved-activation KiB, one micro-batch's KiB through the
    rank's stages, their ratio (micro-batches in flight) and the schedule's formula for it."""
    rows = []

    def row(engine: str, schedule: str, p: int, m: int, rank: int, stages: list[int], peak: int, unit: int):
        formula, name = in_flight_formula(schedule, p, m, rank)
        rows.append({"engine": engine, "schedule": schedule, "ranks": p, "micro_batches": m, "rank": rank,
                     "stages": stages, "peak_kib": round(peak / 1024), "micro_batch_kib": round(unit / 1024),
                     "in_flight": peak / unit, "in_flight_formula": formula, "formula": name})

    for run in result["runs"]:
        if run.error is None:
            for rank, peak in enumerate(run.rank_peak_activation_bytes):
                stages = stages_of_rank(run.schedule, rank, run.ranks)
                unit = sum(run.micro_batch_activation_bytes[s] for s in stages)
                row("torch.distributed.pipelining", run.schedule, run.ranks, run.micro_batches, rank, stages, peak,
                    unit)
    for ds in result["deepspeed_runs"]:
        for stage, (peak, unit) in enumerate(zip(ds.peak_activation_bytes, ds.micro_batch_activation_bytes)):
            row("DeepSpeed PipelineEngine", "1F1B", len(ds.events), ds.micro_batches, stage, [stage], peak, unit)
    return rows


def study(schedules: list[str], micro_batches: list[int], ranks: int = 2, num_layers: int | None = None,
          steps: int = 3, micro_batch: int = 2, seed: int = 0, compare_deepspeed: bool = True, timeout: float = 600
          ) -> dict[str, Any]:
    """Every schedule at every micro-batch count (one launch), the one-process reference per count,
    and (``compare_deepspeed``) chapter 06's engine at the same counts. ``num_layers`` defaults to
    2 x ranks: one layer per stage for the two-stages-per-rank schedules."""
    config = schedule_config(num_layers=num_layers or 2 * ranks)
    runs = run_schedules([(s, m) for s in schedules for m in micro_batches], config, ranks=ranks, steps=steps,
                         micro_batch=micro_batch, seed=seed, timeout=timeout)
    references = {m: train_reference(config, steps, micro_batch, m, seed) for m in micro_batches}
    rows = schedule_rows(runs, references)
    ds_runs = run_deepspeed(config.num_layers, micro_batches, ranks, steps, micro_batch, timeout) \
        if compare_deepspeed else []
    return {"schedules": rows, "deepspeed": [deepspeed_row(r) for r in ds_runs], "runs": runs,
            "deepspeed_runs": ds_runs, "config": config.model_dump()}


def plot_gantt(run: ScheduleRun):
    """The last step's actions per rank, from their measured start and end; the label is stage:micro-batch."""
    fig, ax = viz.new_figure(width=9, height=0.6 + 0.7 * run.ranks)
    step = [rank[-1] for rank in run.actions]
    t0 = min(a[3] for rank in step for a in rank)
    for r, rank in enumerate(step):
        for stage, kind, mb, start, end in rank:
            ax.barh(r, (end - start) * 1e3, left=(start - t0) * 1e3, color=KIND_COLOURS[kind], edgecolor="white")
            ax.text((start + end) / 2 * 1e3 - t0 * 1e3, r, f"{stage}:{mb}", ha="center", va="center", fontsize=6)
    ax.set_yticks(range(run.ranks), [f"rank {r}" for r in range(run.ranks)])
    ax.invert_yaxis()
    ax.set_xlabel("ms since the step's first action")
    handles = [_patch(c, k) for k, c in KIND_COLOURS.items()]
    ax.legend(handles=handles, fontsize=7, ncol=4, loc="upper right")
    ax.set_title(f"{run.schedule}: p={run.ranks}, m={run.micro_batches}, {run.stages_per_rank} stage(s) per rank")
    return fig


def _patch(colour: str, kind: str):
    from matplotlib.patches import Patch

    return Patch(color=colour, label={"F": "forward", "B": "backward", "I": "backward (input)",
                                      "W": "backward (weight)"}[kind])


def plot_bubble(rows: list[dict[str, Any]]):
    """Measured idle fraction (markers) against each schedule's formula (dashed), over m."""
    fig, ax = viz.new_figure()
    for i, name in enumerate(dict.fromkeys(r["schedule"] for r in rows if r["error"] is None)):
        mine = [r for r in rows if r["schedule"] == name and r["error"] is None]
        m = [r["micro_batches"] for r in mine]
        ax.plot(m, [r["measured_bubble"] for r in mine], "o-", color=f"C{i}", label=f"{name} measured")
        ax.plot(m, [r["formula_bubble"] for r in mine], "--", color=f"C{i}", label=f"{name} formula")
    ax.set_xlabel("micro-batches per step (m)")
    ax.set_ylabel("idle fraction of a rank")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    return fig


def dualpipe_evidence(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """run.evidence rows for dualpipe_bubble_below_1f1b: DualPipeV's bubble / 1F1B's at equal p and m,
    measured, and from the formulas with the measured chunk times (modelled)."""
    evidence = []
    ok = {(r["schedule"], r["micro_batches"]): r for r in rows if r["error"] is None}
    for (name, m), dual in ok.items():
        base = ok.get(("1F1B", m))
        if name != "DualPipeV" or base is None:
            continue
        # ranks beyond the cores cannot all compute at once: the idle then measures the machine too
        conditions = {"ranks": dual["ranks"], "micro_batches": m, "cpu_cores": os.cpu_count()}
        evidence += [{"value": dual["measured_bubble"] / base["measured_bubble"], "conditions": conditions,
                      "note": f"idle {dual['measured_bubble']:.3f} vs {base['measured_bubble']:.3f}"},
                     {"value": dual["formula_bubble"] / base["formula_bubble"], "conditions": conditions,
                      "kind": "modelled", "note": "V3 Table 2 with measured chunk times"}]
    return evidence


def record_gantts(job_run: Any, result: dict[str, Any]) -> None:
    """job_run.figure for every schedule that ran, at the largest micro-batch count."""
    m = max(r.micro_batches for r in result["runs"])
    for run in result["runs"]:
        if run.error is None and run.micro_batches == m:
            job_run.figure(plot_gantt(run), f"gantt_{run.schedule}")


def record_evidence(job_run: Any, result: dict[str, Any]) -> None:
    """job_run.evidence rows for dualpipe_bubble_below_1f1b."""
    for row in dualpipe_evidence(result["schedules"]):
        job_run.evidence("dualpipe_bubble_below_1f1b", **row)


def loss_max_diff(rows: list[dict[str, Any]]) -> float:
    """Largest |loss - one process's loss| over every schedule that ran."""
    return max((r["loss_max_diff"] for r in rows if r["error"] is None), default=float("nan"))
