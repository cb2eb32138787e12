"""Activation checkpointing applied from outside the model, and what it should cost.

"Checkpoint every 4 layers" has two readings, and a third scheme is what practitioners run:
  - ``apply_checkpointing(model, every=4)``: blocks 0, 4, 8, ... are each checkpointed alone, the
    others keep their activations (a quarter of the blocks recompute);
  - ``apply_chunked_checkpointing(model, chunk=4)``: DeepSpeed's ``activation_checkpoint_interval=4``
    and Megatron's ``recompute_method=uniform, recompute_num_layers=4``: consecutive chunks of 4
    blocks, only each chunk's input saved, every block recomputed in backward;
  - ``apply_selective_recompute(model)``: Korthikanti et al. 2022 (arXiv 2205.05198) recompute only
    the attention core (scores, softmax, dropout, probabilities x values) and keep the linear
    layers' outputs: the s^2 terms go, for a little recompute.

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


def checkpoint_chunks(num_layers: int, chunk: int) -> list[list[int]]:
    """Consecutive chunks of ``chunk`` blocks (the last may be shorter): [[0..k-1], [k..2k-1], ...]."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return [list(range(start, min(start + chunk, num_layers))) for start in range(0, num_layers, chunk)]


def apply_chunked_checkpointing(model: nn.Module, chunk: int) -> list[list[int]]:
    """Checkpoint chunks of ``chunk`` consecutive blocks: only a chunk's input is kept, and in backward
    the whole chunk runs again. Returns the chunks.

    The model's loop still calls every block: the chunk's first block runs the whole chunk under one
    checkpoint and hands each later block of the chunk its precomputed result (the memories the loop
    stores are the true layer inputs). Each block's memory comes from the model's call (a pre-hook).
    """
    chunks = checkpoint_chunks(len(model.blocks), chunk)
    calls: dict[str, list] = {}

    def remember_mems(module: nn.Module, args: tuple, kwargs: dict) -> None:
        idx = args[0] if args else kwargs["idx"]
        mems = args[1] if len(args) > 1 else kwargs.get("mems")
        calls["mems"] = mems if mems is not None and module.memory_length else module.init_mems(idx.size(0))

    model.__dict__["_chunk_mems_hook"] = model.register_forward_pre_hook(remember_mems, with_kwargs=True)
    for members in chunks:
        forwards = [type(model.blocks[i]).forward.__get__(model.blocks[i]) for i in members]
        pending: dict[int, tuple] = {}  # block -> (the input the loop must pass, its precomputed result)

        def run_chunk(x, mems, pos_emb, forwards=forwards):
            results = []
            for forward, mem in zip(forwards, mems):
                results.append(forward(x, mem, pos_emb))
                x = results[-1][0]
            return results

        def chunk_start(x, mem, pos_emb, members=members, run_chunk=run_chunk, pending=pending):
            mems = [calls["mems"][i] for i in members]
            results = checkpoint(run_chunk, x, mems, pos_emb, use_reentrant=False, context_fn=_same_precision_modes)
            for i, before, result in zip(members[1:], results, results[1:]):
                pending[i] = (before[0], result)
            return results[0]

        def chunk_member(x, mem, pos_emb, i, pending=pending):
            if i not in pending or x is not pending[i][0]:
                raise RuntimeError(f"block {i} is inside a checkpointed chunk: call it through the model's loop")
            return pending.pop(i)[1]

        model.blocks[members[0]].forward = chunk_start
        for i in members[1:]:
            model.blocks[i].forward = functools.partial(chunk_member, i=i)
    return chunks


def apply_selective_recompute(model: nn.Module) -> list[int]:
    """Recompute only each block's attention core (Korthikanti et al. 2022, selective recomputation):
    the q, k, v projections stay saved; the [heads x queries x keys] scores, softmax and dropout are
    dropped and recomputed in backward. Returns the blocks (all of them)."""
    for block in model.blocks:
        attn = block.attn
        attn._attend_last = functools.partial(_checkpointed_forward, type(attn)._attend_last.__get__(attn))
    return list(range(len(model.blocks)))


RECOMPUTE_SCHEMES = ("every_kth", "chunks", "selective")


def apply_recompute(model: nn.Module, scheme: str | None, k: int | None = None) -> None:
    """One of ``RECOMPUTE_SCHEMES`` (None: nothing): every k-th block alone, chunks of k, or selective."""
    if scheme is None:
        return
    if scheme == "every_kth":
        apply_checkpointing(model, k)
    elif scheme == "chunks":
        apply_chunked_checkpointing(model, k)
    elif scheme == "selective":
        apply_selective_recompute(model)
    else:
        raise ValueError(f"scheme must be one of {RECOMPUTE_SCHEMES} or None, got {scheme!r}")


def remove_checkpointing(model: nn.Module) -> None:
    """Back to the plain forward for every block (every scheme above)."""
    for block in model.blocks:
        block.__dict__.pop("forward", None)
        block.attn.__dict__.pop("_attend_last", None)
    hook = model.__dict__.pop("_chunk_mems_hook", None)
    if hook is not None:
        hook.remove()


def checkpoint_input_bytes(config: ModelConfig, micro_batch: int, element_bytes: int = 4) -> int:
    """What a checkpointed layer keeps through the step: its input, e*s*b*h bytes."""
    return element_bytes * config.seq_len * micro_batch * config.hidden_size


def _shape(config: ModelConfig, micro_batch: int, element_bytes: int, heads: int | None = None) -> ActivationShape:
    return ActivationShape(seq_len=config.seq_len, micro_batch=micro_batch, hidden=config.hidden_size,
                           heads=config.num_attention_heads if heads is None else heads, layers=config.num_layers,
                           element_bytes=element_bytes, dropout=config.dropout > 0)


def modelled_activation_bytes(config: ModelConfig, micro_batch: int, every: int | None,
                              element_bytes: int = 4, scheme: str = "every_kth") -> float:
    """Activation bytes of one step under a recompute scheme (``RECOMPUTE_SCHEMES``; module docstring).

    every_kth: every k-th layer keeps only its input; while layer i is recomputed, the layers below
    still hold what they stored. chunks: a chunk keeps its input, and while it is recomputed its k
    layers' full activations live. selective: every layer keeps all but its s^2 score terms, one
    layer's score terms live again in its recompute. No memory (first segment) and no logits.
    """
    n = config.num_layers
    layer = layer_activation_bytes(_shape(config, micro_batch, element_bytes))
    layer_input = checkpoint_input_bytes(config, micro_batch, element_bytes)
    if scheme == "selective":
        # the score terms are linear in the heads, the rest does not depend on them
        doubled = layer_activation_bytes(_shape(config, micro_batch, element_bytes, heads=2 * config.num_attention_heads))
        scores = doubled - layer
        return n * (layer - scores) + scores
    if scheme == "chunks":
        if every is None:
            return n * layer
        chunks = checkpoint_chunks(n, every)
        return max(len(chunks) * layer_input, max(c * layer_input + len(members) * layer
                                                  for c, members in enumerate(chunks)))
    wrapped = set(checkpointed_layers(n, every))
    stored, peak = 0.0, 0.0
    for i in range(n):
        if i in wrapped:
            peak = max(peak, stored + layer)  # layers below i still hold what they stored
        stored += layer_input if i in wrapped else layer
    return max(peak, stored)


def modelled_recompute_overhead(config: ModelConfig, every: int | None, scheme: str = "every_kth") -> float:
    """Extra compute of a step (fraction) from re-running forward work in backward: the checkpointed
    layers' forward (every_kth: c of L layers, chunks: all of them), or the score matmuls (selective)."""
    parts = flops_breakdown(config, with_memory=False)
    head = 6.0 * config.vocab_size * config.hidden_size
    if scheme == "selective":
        return parts["attention"] / 3 / sum(parts.values())
    layers_forward = (parts["dense"] - head + parts["attention"]) / 3
    if scheme == "chunks":
        c = config.num_layers if every is not None else 0
    else:
        c = len(checkpointed_layers(config.num_layers, every))
    return c / config.num_layers * layers_forward / sum(parts.values())
