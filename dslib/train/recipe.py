"""The training recipe: its config, the learning-rate schedule, the default optimizer, seeding.

``TrainConfig`` validates every knob before any compute (pydantic names the bad field).
``cfg.lr`` / ``cfg.min_lr`` drive the schedule of whatever optimizer the factory builds.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

OptimizerFactory = Callable[[Iterable[dict[str, Any]]], torch.optim.Optimizer]


class TrainConfig(BaseModel):
    """Everything the loop needs besides the model and the data."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(200, gt=0)
    batch_size: int = Field(8, gt=0)
    seq_len: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0, description="peak learning rate, for any optimizer")
    min_lr: float = Field(1e-4, ge=0, description="end of the cosine decay")
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.1, ge=0, description="on matrices and embeddings only")
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm; 0 disables")
    eval_every: int = Field(50, ge=0, description="0: evaluate only at the end")
    eval_batches: int = Field(8, gt=0)
    checkpoint_every: int = Field(0, ge=0, description="0: checkpoint only at the end")
    keep_checkpoints: int = Field(2, gt=0)
    log_every: int = Field(10, gt=0)
    seed: int = 0
    use_memory: bool = Field(True, description="carry Transformer-XL memories across segments")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast dtype of the forward pass; fp16 adds a gradient scaler")
    progress: bool = True
    out_dir: Path | None = Field(None, description="checkpoints and result.json; None keeps nothing")
    name: str = "train"

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr} is above lr={self.lr}")
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} exceeds steps={self.steps}")
        return self


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of (0-based) step: linear warmup to ``lr``, then cosine decay to ``min_lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min((step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1), 1.0)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices and embeddings; not biases and norm weights (nanoGPT's split)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def adamw(cfg: TrainConfig) -> OptimizerFactory:
    """The default optimizer: AdamW, fused (one kernel for all parameters) where torch has it."""
    def make(groups: Iterable[dict[str, Any]]) -> torch.optim.Optimizer:
        groups = list(groups)
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"])
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused)
    return make
