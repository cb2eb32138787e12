"""DeepSpeed configs (configs/deepspeed/*.json): load, override, validate before any rank starts.

DeepSpeed validates its config inside ``deepspeed.initialize``, i.e. on every rank after the
processes started; a typo then costs a launch and a traceback per rank. Here the fields the
book varies (ZeRO stage, offload devices, NVMe path, batch sizes) are checked by pydantic in
the parent process, and an error names the field (``zero_optimization.offload_param.device``).
Other DeepSpeed keys pass through untouched (``extra="allow"``) for DeepSpeed to check.

The book's configs (JSON has no comments, so they are explained here):
  zero0..zero3        torch AdamW (``torch_adam``), small buckets (5e5) for small models, stage 3
                      with ``stage3_param_persistence_threshold: 0`` so every weight is partitioned
  zero3_offload_cpu   stage 3, optimizer partition + Adam states on CPU (DeepSpeedCPUAdam, cpu_adam op)
  zero3_nvme          + parameter partitions on NVMe, in the form that works on CPU ranks:
                      no prefetch (``stage3_prefetch_bucket_size: 0``), 40 swap buffers (prefetching
                      tripped "Not enough buffers" / "already assigned swap buffer id" assertions)
  article             the article's config: stage 3, optimizer -> CPU, parameters -> NVMe,
                      DeepSpeed's defaults otherwise (for GPU clusters)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dslib.configs import config_path, deep_merge
from dslib.env import REPO_ROOT

CONFIG_DIR = REPO_ROOT / "configs" / "deepspeed"


class Offload(BaseModel):
    model_config = ConfigDict(extra="allow")

    device: Literal["none", "cpu", "nvme"] = "none"
    nvme_path: str | None = None

    @model_validator(mode="after")
    def _nvme_needs_path(self) -> "Offload":
        if self.device == "nvme" and not self.nvme_path:
            raise ValueError("device 'nvme' needs nvme_path (a folder on a local disk)")
        return self


class ZeroSection(BaseModel):
    model_config = ConfigDict(extra="allow")

    stage: Literal[0, 1, 2, 3] = 0
    offload_optimizer: Offload | None = None
    offload_param: Offload | None = None

    @model_validator(mode="after")
    def _offload_needs_stage(self) -> "ZeroSection":
        if self.offload_param and self.offload_param.device != "none" and self.stage != 3:
            raise ValueError(f"offload_param needs stage 3 (parameters are partitioned only there), "
                             f"got stage {self.stage}")
        if self.offload_optimizer and self.offload_optimizer.device != "none" and self.stage == 0:
            raise ValueError("offload_optimizer needs stage >= 1 (ZeRO-Offload moves the optimizer's "
                             "partition)")
        if self.offload_optimizer and self.offload_optimizer.device == "nvme" and self.stage != 3:
            # DeepSpeed's stage-1/2 optimizer offloads only to cpu: nvme would silently stay in memory
            raise ValueError(f"offload_optimizer device 'nvme' needs stage 3 (ZeRO-Infinity), got stage {self.stage}")
        return self


class ActivationCheckpointing(BaseModel):
    """The ``activation_checkpointing`` section. DeepSpeed reads it only when the ranks call
    ``deepspeed.checkpointing.configure(mpu, deepspeed_config=...)`` (``deepspeed.initialize`` does
    not), and checks it there with asserts; here an unknown key or a missing partner fails first."""

    model_config = ConfigDict(extra="forbid")

    partition_activations: bool = False        # split each saved checkpoint across the model-parallel group
    cpu_checkpointing: bool = False            # keep the (partitioned) checkpoints in host memory
    contiguous_memory_optimization: bool = False  # copy checkpoints into one preallocated buffer
    number_checkpoints: int | None = Field(None, gt=0)  # that buffer's slots: checkpointed calls per step
    synchronize_checkpoint_boundary: bool = False
    profile: bool = False

    @model_validator(mode="after")
    def _contiguous_needs_partition(self) -> "ActivationCheckpointing":
        if self.contiguous_memory_optimization and not (self.partition_activations and self.number_checkpoints):
            raise ValueError("contiguous_memory_optimization needs partition_activations and number_checkpoints")
        return self


class DeepSpeedConfig(BaseModel):
    """The checked part of a DeepSpeed config; anything else is kept for DeepSpeed."""

    model_config = ConfigDict(extra="allow")

    train_micro_batch_size_per_gpu: int = Field(gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    zero_optimization: ZeroSection = ZeroSection()
    activation_checkpointing: ActivationCheckpointing | None = None

    @property
    def stage(self) -> int:
        return self.zero_optimization.stage

    def offload_device(self, what: Literal["optimizer", "param"]) -> str:
        section = getattr(self.zero_optimization, f"offload_{what}")
        return section.device if section else "none"

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def load_ds_config(name_or_path: str | Path, overrides: dict | None = None) -> DeepSpeedConfig:
    """configs/deepspeed/<name>.json (or a path) with nested ``overrides`` merged in, validated.

    ``load_ds_config("zero3", {"zero_optimization": {"stage": 5}})`` raises a ValidationError
    naming ``zero_optimization.stage``.
    """
    path = config_path(name_or_path, CONFIG_DIR, ".json", "DeepSpeed")
    return DeepSpeedConfig(**deep_merge(json.loads(path.read_text()), overrides or {}))


def engine_config(micro_batch: int, precision: str = "fp32", zero_stage: int = 1,
                  optimizer: dict[str, Any] | None = None, offload_optimizer: bool = False) -> dict[str, Any]:
    """A DeepSpeed config: precision section (bf16/fp16 with the article's loss scaling), ZeRO, optimizer."""
    zero: dict[str, Any] = {"stage": zero_stage}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": 1,
        "zero_optimization": zero, "steps_per_print": 10**9, "wall_clock_breakdown": False,
        # torch_adam: torch.optim.AdamW instead of the fused_adam op (no 50-80 s JIT build)
        "optimizer": optimizer or {"type": "AdamW",
                                   "params": {"lr": 1e-3, "weight_decay": 0.01, "torch_adam": True}},
    }
    if precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif precision == "fp16":
        # the article's dynamic loss scaling: 2**15 initial scale, x2 growth, x0.5 backoff
        config["fp16"] = {"enabled": True, "initial_scale_power": 15, "loss_scale": 0, "hysteresis": 1,
                          "loss_scale_window": 1000, "min_loss_scale": 1}
    return config
