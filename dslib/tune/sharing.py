"""ALBERT-style parameter sharing applied from outside: one MLP for each group of layers.

``share_mlp(model, group_size=g)`` assigns block ``g*j``'s MLP module to blocks
``g*j+1 .. g*j+g-1``: the feed-forward weights (2*d*ff per layer, two thirds of a
layer's weights when ff = 4d) exist once per group, their gradient is the sum over the
group's layers. ``model.parameters()`` yields each shared tensor once, so optimizer
states shrink with the parameters.
"""
from __future__ import annotations

import math

from torch import nn

from dslib.model.config import ModelConfig
from dslib.model.flops import count_parameters


def share_mlp(model: nn.Module, group_size: int) -> int:
    """Share the MLP inside consecutive groups of ``group_size`` blocks; returns distinct MLPs."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    blocks = model.blocks
    for start in range(0, len(blocks), group_size):
        for i in range(start + 1, min(start + group_size, len(blocks))):
            blocks[i].mlp = blocks[start].mlp
    return math.ceil(len(blocks) / group_size)


def shared_parameter_count(config: ModelConfig, group_size: int) -> int:
    """Parameters after ``share_mlp``: each of the L - ceil(L/g) dropped MLPs had 2*d*ff weights."""
    dropped = config.num_layers - math.ceil(config.num_layers / group_size)
    return count_parameters(config) - dropped * 2 * config.hidden_size * config.intermediate_size


def unique_parameter_count(model: nn.Module) -> int:
    """Parameters of ``model`` counted once each (shared and tied tensors once)."""
    return sum(p.numel() for p in model.parameters())


def compare_sharing(group_size: int, model: str = "tiny", model_overrides: dict | None = None,
                    steps: int = 60, batch_size: int = 8, lr: float = 2e-3, seed: int = 0) -> dict[str, dict]:
    """Train the plain and the MLP-shared model the same steps on the same Markov stream.

    Returns, per variant, its parameter count, losses per step, and the measured peak
    training memory of a step (dslib.tune.memory.measure, fresh process).
    """
    from dslib.model import build_model, load_config
    from dslib.train import TrainConfig, Trainer
    from dslib.tune.memory import measure
    from dslib.tune.synthetic import markov_tokens

    config = load_config(model, **(model_overrides or {}))
    tokens = markov_tokens(config.vocab_size, (steps + 2) * config.seq_len * batch_size, seed=seed)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, seq_len=config.seq_len, lr=lr, min_lr=lr / 10,
                      warmup_steps=min(10, steps), eval_every=0, log_every=steps, use_memory=False,
                      progress=False, seed=seed)
    results = {}
    for name, group in (("plain", None), (f"shared_mlp_x{group_size}", group_size)):
        net = build_model(config, seed)
        if group:
            share_mlp(net, group)
        losses = Trainer(net, cfg, tokens).fit().losses  # dslib.env.device()
        peak = measure(model, model_overrides, None, group, batch_size, seed=seed)["peak_MB"]
        results[name] = {"params": unique_parameter_count(net), "losses": losses, "peak_MB": peak}
    return results
