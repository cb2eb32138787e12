"""Pipeline measurements (chapter 06): stage load balance per partition method, and the bubble.

``study(...)`` trains every layout x partition method, plus one layout at several micro-batch
counts, in one launch of dslib.parallel.pipeline, and turns the instruction timestamps each
stage recorded into plain rows for the notebook:
  balance  per (layout, method): layers, parameters and forward+backward ms per micro-batch of
           each stage; load-balance ratio = slowest / fastest stage
  bubble   per micro-batch count m: measured idle fraction against (p - 1) / (m + p - 1)
``run_3d(...)`` trains the same model on dp=1 x pp x tp ranks (DeepSpeed's pipeline engine with
dslib.parallel.tensor's Megatron layers inside each stage) and in one process, from the same
initial weights on the same micro-batches, and returns both loss curves.
"""
from __future__ import annotations

import statistics
from typing import Any

import torch

from dslib.data.shards import corpus_shards, load_shards
from dslib.env import device
from dslib.model import ModelConfig, TransformerXL, flops_breakdown
from dslib.parallel.schedules import bubble_1f1b
from dslib.parallel.pipeline import (BlockPipe, EmbeddingPipe, PipeRun, micro_batch_stream, pipe_config,
                                     pipe_ds_config, run_pipeline_engines)
from dslib.train.step import OptimizerStepper, train_step

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


def layer_flops(config: ModelConfig) -> list[float]:
    """Training FLOPs per token of each pipeline layer (dslib.model.flops, no memory): the embedding
    is a lookup (0), a block its matmuls + attention, the head 6 * vocab * d, the norm ~0."""
    parts = flops_breakdown(config, with_memory=False)
    head = 6.0 * config.vocab_size * config.hidden_size
    block = (parts["dense"] - head + parts["attention"]) / config.num_layers
    return [0.0, *[block] * config.num_layers, 0.0, head]


def stage_flops(run: PipeRun) -> list[float]:
    flops = layer_flops(ModelConfig(**run.config))
    return [sum(flops[a:b]) for a, b in zip(run.parts, run.parts[1:])]


def step_span(run: PipeRun, skip: int = 1) -> float:
    """Median seconds from a step's first instruction (any stage) to its last backward (any stage)."""
    spans = [max(e for rec in records for name, _, e in rec if name == "BackwardPass")
             - min(s for rec in records for _, s, _ in rec) for records in _step_records(run, skip)]
    return statistics.median(spans)


def _ratio(values: list[float]) -> float:
    """Slowest / fastest stage (inf when a stage has nothing to compute, e.g. the embedding alone)."""
    return max(values) / min(values) if min(values) > 0 else float("inf")


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
        times, flops = stage_times(run), stage_flops(run)
        rows.append({"layout": run.label, "partition_method": run.partition_method, "stages": describe_stages(run),
                     "params_per_stage": run.stage_params,
                     "ms_per_stage": [round(t * 1e3, 2) for t in times],
                     "balance_ratio": _ratio(times), "flops_ratio": _ratio(flops),
                     "step_ms": step_span(run) * 1e3})
    for row in rows:  # improvement over DeepSpeed's layer-count split of the same layout
        uniform = next(r for r in rows if r["layout"] == row["layout"] and r["partition_method"] == "uniform")
        row["improvement_vs_uniform"] = uniform["balance_ratio"] / row["balance_ratio"]
        row["flops_improvement_vs_uniform"] = uniform["flops_ratio"] / row["flops_ratio"]
    return rows


def bubble_rows(runs: list[PipeRun]) -> list[dict[str, Any]]:
    return [{"micro_batches": run.micro_batches, "partition_method": run.partition_method,
             "stages": describe_stages(run), "measured_idle": idle_fraction(run),
             "formula_idle": bubble_1f1b(len(run.parts) - 1, run.micro_batches),
             "balance_ratio": _ratio(stage_times(run))} for run in runs]


def study(model: str, layouts: dict[str, dict], methods: list[str], balance_micro_batches: int,
          bubble_layout: str, bubble_method: str, bubble_micro_batches: list[int], stages: int = 2,
          micro_batch: int = 2, steps: int = 3, seed: int = 0, timeout: float = 600) -> dict[str, Any]:
    """Every layout (model overrides) x partition method at ``balance_micro_batches``, then the
    bubble layout at each micro-batch count, in one launch. Returns {"balance", "bubble", "runs"}."""
    if bubble_layout not in layouts:
        raise ValueError(f"bubble_layout {bubble_layout!r} is not one of the layouts {list(layouts)}")
    if "uniform" not in methods:
        raise ValueError("methods must include 'uniform' (the baseline the improvement is measured against)")
    runs = [{"label": name, "config": pipe_config(model, **overrides), "partition_method": method,
             "micro_batches": balance_micro_batches} for name, overrides in layouts.items() for method in methods]
    runs += [{"label": "bubble", "config": pipe_config(model, **layouts[bubble_layout]),
              "partition_method": bubble_method, "micro_batches": m} for m in bubble_micro_batches]
    results = run_pipeline_engines(runs, stages=stages, micro_batch=micro_batch, steps=steps, seed=seed, timeout=timeout)
    balance = [r for r in results if r.label != "bubble"]
    return {"balance": balance_rows(balance), "bubble": bubble_rows(results[len(balance):]), "runs": results}


def reference_model(config: ModelConfig, seed: int) -> TransformerXL:
    """The non-pipelined TransformerXL with exactly the pipeline's initial weights."""
    model = TransformerXL(config)
    model.embed.weight.data.copy_(EmbeddingPipe(config, seed).weight)
    for i, block in enumerate(model.blocks):
        block.load_state_dict(BlockPipe(config, i, seed).block.state_dict())
    return model


def train_reference(config: ModelConfig, ds_config: dict, shards: str, steps: int, seed: int = 0) -> list[float]:
    """The same training in one process, no pipeline: TransformerXL with the pipeline's initial
    weights, the config's AdamW, the same micro-batches accumulated per step. Losses per step."""

    model = reference_model(config, seed).to(device())
    params = {k: v for k, v in ds_config["optimizer"]["params"].items() if k != "torch_adam"}
    stepper = OptimizerStepper(torch.optim.AdamW(model.parameters(), **params))
    m, micro = ds_config["gradient_accumulation_steps"], ds_config["train_micro_batch_size_per_gpu"]
    tokens = torch.from_numpy(load_shards(shards).tokens("train").astype("int64"))
    data = micro_batch_stream(tokens, micro, m, config.seq_len, seed)
    return [train_step(model, [tuple(t.to(device()) for t in next(data)) for _ in range(m)], stepper).loss.item()
            for _ in range(steps)]


def run_3d(model: str = "tiny", model_overrides: dict | None = None, pipeline: int = 2, tensor: int = 2,
           micro_batches: int = 4, micro_batch: int = 2, steps: int = 10, seed: int = 0,
           token_docs: int = 2000, timeout: float = 600) -> dict[str, Any]:
    """dp=1 x pp=pipeline x tp=tensor training against the single-process run: both loss curves."""

    config = pipe_config(model, **(model_overrides or {}))
    run = run_pipeline_engines([{"config": config, "partition_method": "type:BlockPipe", "micro_batches": micro_batches,
                         "label": "3d"}], stages=pipeline, tensor=tensor, micro_batch=micro_batch, steps=steps,
                       seed=seed, transform="dslib.parallel.pipeline:tensor_parallel_stage", token_docs=token_docs,
                       timeout=timeout)[0]
    single = train_reference(config, pipe_ds_config(micro_batch, micro_batches),
                             str(corpus_shards(config.vocab_size, limit=token_docs)), steps, seed)
    return {"layout": f"dp=1 x pp={pipeline} x tp={tensor}", "stages": describe_stages(run),
            "stage_params": run.stage_params, "losses_3d": run.losses, "losses_single": single,
            "max_abs_diff": max(abs(a - b) for a, b in zip(run.losses, single))}
