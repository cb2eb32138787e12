"""Activation checkpointing applied from outside the model, and what it should cost.

The article lists "activation checkpointing" and "gradient checkpointing" as two
techniques: they are one. A checkpointed layer keeps only its input in the forward pass
and recomputes its activations during backward; the two names differ only in which
layers are checkpointed. Here ``apply_checkpointing(model, every=k)`` wraps the forward
of every k-th block (blocks 0, k, 2k, ...) in ``torch.utils.checkpoint.checkpoint``
(non-reentrant), without touching the model's code: k=1 checkpoints every layer, k=4
("recompute every 4 layers") a quarter of them. ``impl="deepspeed"`` wraps the same blocks in
``deepspeed.checkpointing.checkpoint`` instead (configured by the ranks; dslib.studies.ds_checkpointing).

The modelled costs use the chapter 02 formulas (dslib.plan.memory.layer_activation_bytes
and dslib.model.flops.flops_breakdown):
  activations(k) = max(stored, max over checkpointed i of stored_below(i) + layer)
                   where checkpointed layers store only their input (e*s*b*h), the others
                   their full activations (``layer``); while checkpointed layer i is
                   recomputed in backward, everything above it is already freed
  recompute(k)   = c/L * (forward FLOPs of the layers) / (training FLOPs of the step)
"""
from __future__ import annotations

import contextlib
import functools
from typing import Literal

from torch import nn
from torch.overrides import _get_current_function_mode_stack
from torch.utils.checkpoint import checkpoint

from dslib.model.config import ModelConfig
from dslib.model.flops import flops_breakdown
from dslib.plan.memory import ActivationShape, layer_activation_bytes
from dslib.train.precision import UpcastSensitiveOps


def checkpointed_layers(num_layers: int, every: int | None) -> list[int]:
    """Indices of the blocks that ``apply_checkpointing`` wraps: 0, k, 2k, ... (none for None)."""
    if every is None:
        return []
    if every < 1:
        raise ValueError(f"every must be >= 1 or None, got {every}")
    return list(range(0, num_layers, every))


def _same_precision_modes() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    """(forward, recompute) contexts: torch replays autocast in the recompute by itself, not
    chapter 07's FP32 upcast mode; without it a bf16 recompute mismatches the saved FP32 tensors."""
    upcast = any(isinstance(mode, UpcastSensitiveOps) for mode in _get_current_function_mode_stack())
    return contextlib.nullcontext(), UpcastSensitiveOps() if upcast else contextlib.nullcontext()


def _checkpointed_forward(forward, *args, **kwargs):
    return checkpoint(forward, *args, use_reentrant=False, context_fn=_same_precision_modes, **kwargs)


def _deepspeed_checkpointed_forward(forward, x, mem, pos_emb):
    import deepspeed  # deepspeed.checkpointing is an attribute of the package, not a module

    # Only x, the block's input, is DeepSpeed's checkpoint argument: with partition_activations or
    # cpu_checkpointing DeepSpeed replaces the storage of every tensor argument it saves, and
    # pos_emb (read by every block) and mem (the caller's memory) are still read elsewhere.
    return deepspeed.checkpointing.checkpoint(lambda x_: forward(x_, mem, pos_emb), x)


_WRAPPERS = {"torch": _checkpointed_forward, "deepspeed": _deepspeed_checkpointed_forward}


def apply_checkpointing(model: nn.Module, every: int | None,
                        impl: Literal["torch", "deepspeed"] = "torch") -> list[int]:
    """Wrap the forward of every ``every``-th block of ``model.blocks``; returns their indices.

    Each wrapped block recomputes its forward in backward: gradients are unchanged. The
    instance attribute shadows the class's forward, so ``remove_checkpointing`` undoes it.
    """
    if impl not in _WRAPPERS:
        raise ValueError(f"impl must be one of {sorted(_WRAPPERS)}, got {impl!r}")
    layers = checkpointed_layers(len(model.blocks), every)
    for i in layers:
        block = model.blocks[i]
        block.forward = functools.partial(_WRAPPERS[impl], type(block).forward.__get__(block))
    return layers


def remove_checkpointing(model: nn.Module) -> None:
    """Back to the plain forward for every block."""
    for block in model.blocks:
        block.__dict__.pop("forward", None)


def checkpoint_input_bytes(config: ModelConfig, micro_batch: int, element_bytes: int = 4) -> int:
    """What a checkpointed layer keeps through the step: its input, e*s*b*h bytes."""
    return element_bytes * config.seq_len * micro_batch * config.hidden_size


def modelled_activation_bytes(config: ModelConfig, micro_batch: int, every: int | None,
                              element_bytes: int = 4) -> float:
    """Activation bytes of one step with every k-th layer checkpointed (module docstring formula).

    No memory (first segment) and no logits: the part checkpointing changes.
    """
    shape = ActivationShape(seq_len=config.seq_len, micro_batch=micro_batch, hidden=config.hidden_size,
                            heads=config.num_attention_heads, layers=config.num_layers,
                            element_bytes=element_bytes, dropout=config.dropout > 0)
    layer = layer_activation_bytes(shape)
    layer_input = checkpoint_input_bytes(config, micro_batch, element_bytes)
    wrapped = set(checkpointed_layers(config.num_layers, every))
    stored, peak = 0.0, 0.0
    for i in range(config.num_layers):
        if i in wrapped:
            peak = max(peak, stored + layer)  # layers below i still hold what they stored
        stored += layer_input if i in wrapped else layer
    return max(peak, stored)


def modelled_recompute_overhead(config: ModelConfig, every: int | None) -> float:
    """Extra compute of a step (fraction) from re-running the checkpointed layers' forward."""
    parts = flops_breakdown(config, with_memory=False)
    head = 6.0 * config.vocab_size * config.hidden_size
    layers_forward = (parts["dense"] - head + parts["attention"]) / 3
    c = len(checkpointed_layers(config.num_layers, every))
    return c / config.num_layers * layers_forward / sum(parts.values())
