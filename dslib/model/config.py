"""Model configuration: pydantic models for configs/model/*.yaml and the loader.

A bad value fails when the config is built, before any tensor exists, with a
message that names the field (pydantic puts the field name in the error's location).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from dslib import configs
from dslib.configs import Strict
from dslib.env import REPO_ROOT

CONFIG_DIR = REPO_ROOT / "configs" / "model"


class GateConfig(Strict):
    """The per-layer dynamic gate (chapter 04). Disabled by default."""

    enabled: bool = False
    # aux_loss = penalty * expected fraction of computed (kept) layer evaluations:
    # the price of compute, traded against the LM loss; a higher penalty skips more.
    penalty: float = Field(0.0, ge=0.0)
    # Gumbel-sigmoid temperature of the straight-through estimator (lower = sharper).
    temperature: float = Field(1.0, gt=0.0)
    # one decision per sequence (skip the whole row) or per token
    granularity: Literal["sequence", "token"] = "sequence"
    hidden_size: int = Field(32, gt=0, description="width of the gate's small MLP")
    # initial keep logit: the gate starts by keeping (almost) everything
    init_keep_logit: float = 3.0


class ModelConfig(Strict):
    """A decoder-only Transformer-XL language model."""

    name: str = "custom"
    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    seq_len: int = Field(gt=0, description="tokens per training segment")
    memory_length: int = Field(0, ge=0, description="cached hidden states per layer")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    layer_norm_eps: float = Field(1e-5, gt=0.0)
    gate: GateConfig = GateConfig()

    @field_validator("hidden_size")
    @classmethod
    def _even_hidden(cls, value: int) -> int:
        if value % 2:
            raise ValueError(f"hidden_size={value} must be even (sin/cos position pairs)")
        return value

    @field_validator("num_attention_heads")
    @classmethod
    def _heads_divide_hidden(cls, value: int, info: ValidationInfo) -> int:
        hidden = info.data.get("hidden_size")
        if hidden is not None and hidden % value:
            raise ValueError(
                f"num_attention_heads={value} does not divide hidden_size={hidden}"
            )
        return value

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def load_config(name_or_path: str | Path, **overrides: Any) -> ModelConfig:
    """Load configs/model/<name>.yaml (or a YAML path), apply overrides, validate.

    Nested sections merge key by key: `load_config("tiny", gate={"enabled": True})`
    keeps the file's other gate settings.
    """
    return configs.load(ModelConfig, name_or_path, CONFIG_DIR, ".yaml", "model", overrides)
