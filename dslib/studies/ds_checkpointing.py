"""DeepSpeed's activation checkpointing under ZeRO, beside torch.utils.checkpoint, on real ranks.

``deepspeed.checkpointing.checkpoint(fn, *args)`` is DeepSpeed's version of
``torch.utils.checkpoint`` (reentrant: an autograd Function that keeps ``args`` and re-runs
``fn`` in backward). What it adds is the ``activation_checkpointing`` config section, which
``deepspeed.initialize`` does NOT read: each rank must call
``deepspeed.checkpointing.configure(mpu, deepspeed_config=config)``. Its keys:
  partition_activations     each saved checkpoint input is split across the MODEL-parallel group
                            taken from ``mpu`` (its ranks hold identical layer inputs, as in a
                            tensor-parallel group) and all-gathered before the recompute. Without
                            an mpu that group is one rank: the "partition" is a full copy. ZeRO's
                            data-parallel ranks hold different activations, so they cannot share.
  cpu_checkpointing         keep the saved inputs in host memory (for GPUs). On a CPU device
                            they are in host memory already.
  contiguous_memory_optimization
                            copy the partitions into buffers preallocated for
                            ``number_checkpoints`` checkpointed calls (fragmentation on GPUs);
                            needs partition_activations.
VARIANTS lists the settings measured here. Each (variant, k) gets its own DeepSpeed engine on
every rank over the chapter 03 model with every k-th block checkpointed
(dslib.tune.checkpointing.apply_checkpointing): steps timed round-robin over the engines with
the normal allocator, then each engine's peak memory above its state at rest
(dslib.train.memory.peak_memory: RSS that follows the tensors on a CPU, the CUDA allocator's
peak on a GPU). A variant that raises is recorded with its error.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist

from dslib.dist.ds_config import DeepSpeedConfig, load_ds_config
from dslib.dist.launch import launch
from dslib.dist.ops import initialize_engine
from dslib.env import device
from dslib.model import build_model, load_config
from dslib.train.memory import peak_memory
from dslib.train.step import EngineStepper, train_step
from dslib.tune.checkpointing import (apply_checkpointing, checkpoint_input_bytes, checkpointed_layers,
                                      modelled_activation_bytes, modelled_recompute_overhead)
from dslib.units import MB



@dataclass(frozen=True)
class Variant:
    impl: Literal["none", "torch", "deepspeed"]
    section: dict[str, Any] = field(default_factory=dict)  # the activation_checkpointing section
    model_parallel: bool = False   # all ranks form one model-parallel group (and get the same batch)


VARIANTS: dict[str, Variant] = {
    "none": Variant("none"),
    "torch": Variant("torch"),
    "deepspeed": Variant("deepspeed"),
    "ds_partition": Variant("deepspeed", {"partition_activations": True}, model_parallel=True),
    "ds_partition_contiguous": Variant("deepspeed", {"partition_activations": True,
                                                     "contiguous_memory_optimization": True},
                                       model_parallel=True),
    "ds_partition_cpu": Variant("deepspeed", {"partition_activations": True, "cpu_checkpointing": True},
                                model_parallel=True),
    "ds_cpu": Variant("deepspeed", {"cpu_checkpointing": True}),
}


class CheckpointGroups:
    """The ``mpu`` that deepspeed.checkpointing.configure reads. Data parallel: all ranks (ZeRO's
    group). Model parallel: all ranks when ``model_parallel``, else each rank alone."""

    def __init__(self, model_parallel: bool) -> None:
        self.model_parallel = model_parallel

    def get_model_parallel_rank(self) -> int:
        return dist.get_rank() if self.model_parallel else 0

    def get_model_parallel_world_size(self) -> int:
        return dist.get_world_size() if self.model_parallel else 1

    def get_model_parallel_group(self):
        return dist.group.WORLD if self.model_parallel else None

    def get_data_parallel_rank(self) -> int:
        return dist.get_rank()

    def get_data_parallel_world_size(self) -> int:
        return dist.get_world_size()

    def get_data_parallel_group(self):
        return dist.group.WORLD


def variant_config(ds_config: dict[str, Any], variant: str, checkpointed_calls: int) -> dict[str, Any]:
    """The DeepSpeed config of a variant: its activation_checkpointing section added, validated."""
    v = VARIANTS[variant]
    if v.impl != "deepspeed":
        return ds_config
    section = dict(v.section)
    if section.get("contiguous_memory_optimization"):
        section["number_checkpoints"] = max(checkpointed_calls, 1)  # one buffer slot per checkpointed call
    return DeepSpeedConfig(**{**ds_config, "activation_checkpointing": section}).as_dict()


def build_checkpointing_engine(ds_config: dict[str, Any], variant: str, model: str, model_overrides: dict[str, Any],
                 every: int | None, seed: int):
    """A DeepSpeed engine over the chapter 03 model, every k-th block checkpointed by the variant,
    and the variant's config (for ``configure_checkpointing``)."""

    v = VARIANTS[variant]
    net = build_model(load_config(model, **model_overrides), seed, device())
    layers = apply_checkpointing(net, every if v.impl != "none" else None,
                                 "deepspeed" if v.impl == "deepspeed" else "torch")
    config = variant_config(ds_config, variant, len(layers))
    engine = initialize_engine(net, config)
    return engine, config


def configure_checkpointing(variant: str, config: dict[str, Any]) -> None:
    """Point DeepSpeed's checkpointing settings (process-wide globals) at this variant's section."""
    import deepspeed

    v = VARIANTS[variant]
    if v.impl == "deepspeed":
        deepspeed.checkpointing.configure(CheckpointGroups(v.model_parallel), deepspeed_config=config)


def rank_batch(model: str, model_overrides: dict[str, Any], micro_batch: int, seed: int,
               same_on_all_ranks: bool) -> torch.Tensor:
    """This rank's micro-batch of random tokens (the same on every rank when asked)."""

    config = load_config(model, **model_overrides)
    gen = torch.Generator().manual_seed(seed + (0 if same_on_all_ranks else 1 + dist.get_rank()))
    return torch.randint(0, config.vocab_size, (micro_batch, config.seq_len), generator=gen).to(device())


class _Run:
    """One (variant, k) on this rank: its engine, config and micro-batch."""

    def __init__(self, ds_config, variant, every, model, model_overrides, micro_batch, seed) -> None:
        self.variant = variant
        self.engine, self.config = build_checkpointing_engine(ds_config, variant, model, model_overrides, every, seed)
        self.stepper = EngineStepper(self.engine)
        idx = rank_batch(model, model_overrides, micro_batch, seed, VARIANTS[variant].model_parallel)
        self.batch = (idx, idx)

    def step(self) -> float:
        """One training step (the caller runs ``configure_checkpointing`` first); returns the loss."""
        return train_step(self.engine, self.batch, self.stepper).loss.item()  # .item() waits for the device


def _error_text(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def sweep_rank(ds_config: dict[str, Any], runs: list[tuple[str, int | None]], model: str,
               model_overrides: dict[str, Any], micro_batch: int, steps: int = 2, timed_steps: int = 3,
               seed: int = 0) -> list[dict[str, Any]]:
    """One rank of ``deepspeed_checkpoint_sweep``; rank 0 returns the rows. Every (variant, k) gets an engine
    and a warm-up step (a variant that raises is recorded and dropped: the ranks fail alike); steps
    are timed round-robin over the engines, so a slow phase of a shared machine hits all alike;
    then each engine's peak memory over ``steps`` steps, the others at rest."""
    import time

    rows, live = [], []
    for variant, every in runs:
        rows.append({"variant": variant, "checkpoint_every": every, "error": ""})
        try:
            run = _Run(ds_config, variant, every, model, model_overrides, micro_batch, seed)
            configure_checkpointing(variant, run.config)
            run.step()  # warm-up: optimizer states exist from here on
            live.append((rows[-1], run, []))
        except Exception as error:  # noqa: BLE001  (a variant that fails is a result: say why)
            rows[-1]["error"] = _error_text(error)
    for _ in range(timed_steps):
        for _, run, times in live:
            configure_checkpointing(run.variant, run.config)
            start = time.perf_counter()
            run.step()
            times.append(time.perf_counter() - start)
    for row, run, times in live:
        configure_checkpointing(run.variant, run.config)
        with peak_memory(run.engine.device) as peak:
            for _ in range(steps):
                row["loss"] = run.step()
            row["peak_MB"] = peak() / MB
        row["step_s"] = min(times)
    for row in rows:
        peaks = [None] * dist.get_world_size()
        dist.all_gather_object(peaks, row.get("peak_MB"))
        row["peak_MB_per_rank"] = peaks
        if not row["error"]:
            row["peak_MB"] = sum(peaks) / len(peaks)  # the mean: RSS peaks of one rank vary by ~2 MB
    for _, run, _ in live:
        run.engine.destroy()
    return rows


def deepspeed_checkpoint_sweep(everies: list[int | None], impls: list[str], section_variants: list[str] = (),
                     section_every: int = 1, model: str = "tiny", model_overrides: dict[str, Any] | None = None,
                     config: str = "zero2", nprocs: int = 2, micro_batch: int = 8, steps: int = 2,
                     timed_steps: int = 3, seed: int = 0, timeout: float = 900) -> list[dict[str, Any]]:
    """Under ZeRO ``config`` on ``nprocs`` ranks: no checkpointing, each of ``impls`` (torch,
    deepspeed) at every k of ``everies``, and each of ``section_variants`` (activation_checkpointing
    settings) at k = ``section_every``. Per row: mean peak step memory over the ranks, fastest step,
    and the modelled bytes of checkpoint inputs a rank keeps. Configs are validated here."""

    runs = [("none", None)] + [(v, k) for v in impls for k in everies if k] \
        + [(v, section_every) for v in section_variants]
    ds_config = load_ds_config(config, {"train_micro_batch_size_per_gpu": micro_batch}).as_dict()
    model_cfg = load_config(model, **(model_overrides or {}))
    for variant, every in runs:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
        variant_config(ds_config, variant, len(checkpointed_layers(model_cfg.num_layers, every)))
    rows = launch("dslib.studies.ds_checkpointing:sweep_rank", nprocs=nprocs, timeout=timeout, kwargs=dict(
        ds_config=ds_config, runs=runs, model=model, model_overrides=model_overrides or {},
        micro_batch=micro_batch, steps=steps, timed_steps=timed_steps, seed=seed))
    plain = rows[0]
    for row in rows:
        v = VARIANTS[row["variant"]]
        split = nprocs if v.model_parallel and v.section.get("partition_activations") else 1
        calls = len(checkpointed_layers(model_cfg.num_layers, row["checkpoint_every"])) if v.impl != "none" else 0
        row["modelled_checkpoint_inputs_MB"] = calls * checkpoint_input_bytes(model_cfg, micro_batch) / split / MB
        every = row["checkpoint_every"] if calls else None
        row["modelled_activations_MB"] = modelled_activation_bytes(model_cfg, micro_batch, every) / MB
        row["modelled_recompute"] = modelled_recompute_overhead(model_cfg, every)
        row["config"], row["world_size"] = config, nprocs
        if not row["error"]:
            row["time_overhead"] = row["step_s"] / plain["step_s"] - 1
            row["memory_saved_MB"] = plain["peak_MB"] - row["peak_MB"]
    return rows


def _gradient_differences(ds_config: dict[str, Any], variant: str, every: int, model: str,
                          model_overrides: dict[str, Any], micro_batch: int, seed: int) -> dict[str, float]:
    """Per parameter: max |engine's full gradient - plain model's gradient on the global batch|,
    relative to the plain gradient's max (the engine checkpointed, its gradients ZeRO-partitioned)."""
    from deepspeed.utils import safe_get_full_grad

    same = VARIANTS[variant].model_parallel
    idx = rank_batch(model, model_overrides, micro_batch, seed, same)
    batches = [torch.empty_like(idx) for _ in range(dist.get_world_size())]
    dist.all_gather(batches, idx)
    plain = build_model(load_config(model, **model_overrides), seed, device())
    global_batch = torch.cat(batches)  # mean loss over it = DeepSpeed's mean of the ranks' losses
    plain(global_batch, targets=global_batch).loss.backward()
    engine, config = build_checkpointing_engine(ds_config, variant, model, model_overrides, every, seed)
    configure_checkpointing(variant, config)
    engine.backward(engine(idx, targets=idx).loss)
    diffs = {}
    for (name, p), (_, q) in zip(plain.named_parameters(), engine.module.named_parameters()):
        full = safe_get_full_grad(q)
        diffs[name] = float((full - p.grad).abs().max() / p.grad.abs().max().clamp_min(1e-12))
    engine.destroy()
    return diffs


def gradient_check(variants: list[str], every: int = 2, model: str = "tiny",
                   model_overrides: dict[str, Any] | None = None, config: str = "zero2", nprocs: int = 2,
                   micro_batch: int = 2, timeout: float = 300) -> dict[str, dict[str, float]]:
    """Per variant: relative max gradient difference per parameter, checkpointed engine vs plain model."""

    ds_config = load_ds_config(config, {"train_micro_batch_size_per_gpu": micro_batch}).as_dict()
    return launch("dslib.studies.ds_checkpointing:gradients_rank", nprocs=nprocs, timeout=timeout, kwargs=dict(
        ds_config=ds_config, variants=variants, every=every, model=model,
        model_overrides=model_overrides or {}, micro_batch=micro_batch))


def gradients_rank(variants: list[str], seed: int = 0, **kwargs: Any) -> dict[str, dict[str, float]]:
    """One rank of ``gradient_check``."""
    return {variant: _gradient_differences(variant=variant, seed=seed, **kwargs) for variant in variants}
