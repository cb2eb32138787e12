"""The one seeded model builder: the model a config describes, its weights drawn from a seed.

Every rank, pipeline stage, sweep point and rerun that builds from one seed starts from the
same weights (the seed is set immediately before the modules draw theirs).
"""
from __future__ import annotations

import torch
from torch import nn

from dslib.env import seed_everything
from dslib.model.config import ModelConfig
from dslib.model.deepseek import DeepSeekModel
from dslib.model.deepseek_config import DeepSeekConfig
from dslib.model.transformer_xl import TransformerXL


def build_model(config: ModelConfig | DeepSeekConfig, seed: int | None = None,
                device: torch.device | str | None = None) -> nn.Module:
    """TransformerXL for a ModelConfig, DeepSeekModel for a DeepSeekConfig; seeded when ``seed``
    is given (torch, numpy, random), moved to ``device`` when given."""
    if seed is not None:
        seed_everything(seed)
    if isinstance(config, ModelConfig):
        model: nn.Module = TransformerXL(config)
    elif isinstance(config, DeepSeekConfig):
        model = DeepSeekModel(config)
    else:
        raise TypeError(f"no model for a {type(config).__name__}; expected ModelConfig or DeepSeekConfig")
    return model.to(device) if device is not None else model
