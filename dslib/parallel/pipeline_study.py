"""Pipeline measurements (chapter 06): stage load balance per partition method, and the bubble.

``study(...)`` trains every layout x partition method, plus one layout at several micro-batch
counts, in one launch of dslib.parallel.pipeline, and turns the instruction timestamps each
stage recorded into plain rows for the notebook:
  balance  per (layout, method): layers, parameters and forward+backward ms per micro-batch of
           each stage; load-balance ratio = slowest / fastest stage
  bubble   per micro-batch count m: measured idle fraction against (p - 1) / (m + p - 1)
"""
from __future__ import annotations

import statistics
from typing import Any

from dslib.parallel.pipeline import PipeRun, pipe_config, run_pipeline

STAGE_WORK = ("ForwardPass", "BackwardPass")  # the instructions that compute
SHORT = {"EmbeddingPipe": "E", "BlockPipe": "B", "LayerNorm": "N", "EmbeddingPipe(head)": "H"}


def stage_times(run: PipeRun, skip: int = 1) -> list[float]:
    """Seconds of forward + backward compute of one micro-batch, per stage: the fastest forward plus
    the fastest backward seen after ``skip`` warm-up steps. A stage's compute is the same every
    micro-batch; other processes on the machine can only add time, so the minimum is its cost."""
    times = []
    for steps in run.events:
        kept = [rec for step in steps[skip:] or steps for rec in step]
        times.append(sum(min(e - s for name, s, e in kept if name == work) for work in STAGE_WORK))
    return times


def _step_records(run: PipeRun, skip: int) -> list[list[list[tuple]]]:
    first = min(skip, len(run.events[0]) - 1)
    return [[stage[step] for stage in run.events] for step in range(first, len(run.events[0]))]


def idle_fraction(run: PipeRun, skip: int = 1) -> float:
    """Measured bubble: the share of a step's span (first instruction on any stage to the last
    backward on any stage) in which a stage is not computing; mean over stages, median over steps."""
    fractions = []
    for records in _step_records(run, skip):
        start = min(s for rec in records for _, s, _ in rec)
        end = max(e for rec in records for name, _, e in rec if name == "BackwardPass")
        busy = [sum(min(e, end) - s for name, s, e in rec if name in STAGE_WORK) for rec in records]
        fractions.append(sum(1 - b / (end - start) for b in busy) / len(busy))
    return statistics.median(fractions)


def bubble_formula(stages: int, micro_batches: int) -> float:
    """GPipe/1F1B idle fraction with equal stages and free communication: (p - 1) / (m + p - 1)."""
    return (stages - 1) / (micro_batches + stages - 1)


def step_span(run: PipeRun, skip: int = 1) -> float:
    """Median seconds from a step's first instruction (any stage) to its last backward (any stage)."""
    return statistics.median([max(e for rec in records for name, _, e in rec if name == "BackwardPass")
                    - min(s for rec in records for _, s, _ in rec) for records in _step_records(run, skip)])


def describe_stages(run: PipeRun) -> str:
    """'E+3B | 3B+N+H': the layers of each stage, counted."""
    def short(names: list[str]) -> str:
        counts: dict[str, int] = {}
        for name in names:
            counts[SHORT[name]] = counts.get(SHORT[name], 0) + 1
        return "+".join(f"{n if n > 1 else ''}{key}" for key, n in counts.items())
    return " | ".join(short(names) for names in run.stage_layers)


def balance_rows(runs: list[PipeRun]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        times = stage_times(run)
        rows.append({"layout": run.label, "partition_method": run.partition_method, "stages": describe_stages(run),
                     "params_per_stage": run.stage_params,
                     "ms_per_stage": [round(t * 1e3, 2) for t in times],
                     "balance_ratio": max(times) / min(times), "step_ms": step_span(run) * 1e3})
    for row in rows:  # improvement over DeepSpeed's layer-count split of the same layout
        uniform = next(r for r in rows if r["layout"] == row["layout"] and r["partition_method"] == "uniform")
        row["improvement_vs_uniform"] = uniform["balance_ratio"] / row["balance_ratio"]
    return rows


def bubble_rows(runs: list[PipeRun]) -> list[dict[str, Any]]:
    return [{"micro_batches": run.micro_batches, "partition_method": run.partition_method,
             "stages": describe_stages(run), "measured_idle": idle_fraction(run),
             "formula_idle": bubble_formula(len(run.parts) - 1, run.micro_batches),
             "balance_ratio": max(stage_times(run)) / min(stage_times(run))} for run in runs]


def study(model: str, layouts: dict[str, dict], methods: list[str], balance_micro_batches: int,
          bubble_layout: str, bubble_method: str, bubble_micro_batches: list[int], stages: int = 2,
          micro_batch: int = 2, steps: int = 3, seed: int = 0, timeout: float = 600) -> dict[str, Any]:
    """Every layout (model overrides) x partition method at ``balance_micro_batches``, then the
    bubble layout at each micro-batch count, in one launch. Returns {"balance", "bubble", "runs"}."""
    if "uniform" not in methods:
        raise ValueError("methods must include 'uniform' (the baseline the improvement is measured against)")
    runs = [{"label": name, "config": pipe_config(model, **overrides), "partition_method": method,
             "micro_batches": balance_micro_batches} for name, overrides in layouts.items() for method in methods]
    runs += [{"label": "bubble", "config": pipe_config(model, **layouts[bubble_layout]),
              "partition_method": bubble_method, "micro_batches": m} for m in bubble_micro_batches]
    results = run_pipeline(runs, stages=stages, micro_batch=micro_batch, steps=steps, seed=seed, timeout=timeout)
    balance = [r for r in results if r.label != "bubble"]
    return {"balance": balance_rows(balance), "bubble": bubble_rows(results[len(balance):]), "runs": results}
