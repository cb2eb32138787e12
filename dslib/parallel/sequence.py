"""Megatron sequence parallelism (Korthikanti et al., 2022) on top of tensor parallelism.

Tensor parallel leaves the LayerNorms, dropouts and the residual stream replicated: every
rank holds (and saves for backward) all T positions there. Sequence parallel splits
those regions along the sequence over the same tp group, and swaps the collectives:

    tensor parallel:    ln -> f (identity / all-reduce) -> column ... row -> g (all-reduce / identity)
    sequence parallel:  ln -> all-gather / reduce-scatter -> column ... row -> reduce-scatter / all-gather

An all-reduce is a reduce-scatter followed by an all-gather, so the bytes moved stay the
same, while the activations of the split regions shrink by the group size. As in
Megatron, the gathered inputs of the column-parallel linears are not kept for backward:
each rank keeps its chunk and all-gathers again when backward needs them
(RegatherInBackward; regather_in_backward=False keeps them, for comparison).

Transformer-XL needs care in two places, both handled here:
- Attention runs on the gathered, full-length context with heads split, exactly as in
  tensor parallel: the relative shift (attention.rel_shift) sees [memory ; segment] in
  time order and all distances, so it is unchanged. Only the positional embeddings must
  cover the full context, which the model (counting local memory) does not know: the
  block rebuilds them for the gathered length.
- The memory caches each layer's *input*, which is now split. Each rank keeps its own
  chunk of every cached segment (memory_length / tp positions), so the all-gather of
  [memory chunks ; segment chunk] from all ranks is re-ordered segment by segment into
  time order. That holds when memory_length is a multiple of seq_len (whole segments
  cached); other lengths are refused.
LayerNorm weights in the split regions see 1/tp of the tokens on each rank: their
gradients are summed over the group by hooks. The final norm's output is all-gathered
before the (replicated) head and loss; its backward keeps this rank's chunk.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from dslib.model.attention import sinusoidal_embedding
from dslib.parallel.tensor import counted_all_reduce, nbytes, parallelize_tensor, record_comm


def _chunks_in_time_order(parts: list[torch.Tensor], chunk: int) -> torch.Tensor:
    """Rank r's [B, n*chunk, d] holds its chunk of n segments: interleave to [B, n*tp*chunk, d]."""
    B, L, d = parts[0].shape
    stacked = torch.stack([p.view(B, L // chunk, chunk, d) for p in parts], dim=2)
    return stacked.reshape(B, -1, d)


def _all_gather_in_time_order(x: torch.Tensor, group, chunk: int, name: str) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    record_comm(name, nbytes(x) * len(parts), group)
    dist.all_gather(parts, x.contiguous(), group=group)
    return _chunks_in_time_order(parts, chunk)


# Called with every tensor the re-gather hooks store (measurements observe through them:
# saved_tensors_hooks do not nest, so an outer hook cannot see what is saved inside).
SAVED_OBSERVERS: list = []


class RegatherInBackward:
    """Megatron's activation trick, as saved-tensor hooks around one sub-layer: a tensor
    saved for backward that lives in the gathered activation's storage (the column-parallel
    linears' input, or a view of it) is kept as this rank's chunk and all-gathered again
    when backward needs it. Saves (1 - 1/tp) of those bytes for one more all-gather."""

    def __init__(self, gathered: torch.Tensor, local: torch.Tensor, group, chunk: int):
        self.storage = gathered.untyped_storage().data_ptr()
        self.local, self.group, self.chunk = local.detach(), group, chunk
        self.full, self.pending = None, 0

    def _observe(self, t: torch.Tensor) -> torch.Tensor:
        for observer in SAVED_OBSERVERS:
            observer(t)
        return t

    def pack(self, t: torch.Tensor):
        if t.untyped_storage().data_ptr() != self.storage:
            return self._observe(t)
        self.pending += 1
        return self._observe(self.local), t.size(), t.stride(), t.storage_offset()

    def unpack(self, packed):
        if isinstance(packed, torch.Tensor):
            return packed
        _, size, stride, offset = packed
        if self.full is None:
            self.full = _all_gather_in_time_order(self.local, self.group, self.chunk,
                                                  "sp:all_gather(backward, re-gather)")
        view = self.full.as_strided(size, stride, offset)
        self.pending -= 1
        if self.pending == 0:  # every saved use restored: free the full tensor
            self.full = None
        return view

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


class GatherFromSequenceParallel(torch.autograd.Function):
    """All-gather along the sequence (time order restored); backward: reduce-scatter,
    because every rank's heads used the whole context and contribute to every position's
    gradient. `reduce_grad=False` (before a replicated head): backward keeps own chunk."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group, chunk: int, reduce_grad: bool) -> torch.Tensor:
        ctx.group, ctx.chunk, ctx.reduce_grad, ctx.shape = group, chunk, reduce_grad, x.shape
        return _all_gather_in_time_order(x, group, chunk, "sp:all_gather(forward)")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        B, L, d = ctx.shape
        tp = dist.get_world_size(ctx.group)
        by_rank = grad.reshape(B, L // ctx.chunk, tp, ctx.chunk, d)  # inverse of the interleave
        if not ctx.reduce_grad:
            return by_rank[:, :, dist.get_rank(ctx.group)].reshape(ctx.shape), None, None, None
        inputs = [by_rank[:, :, r].reshape(ctx.shape).contiguous() for r in range(tp)]
        out = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device)
        record_comm("sp:reduce_scatter(backward)", nbytes(grad), ctx.group)
        dist.reduce_scatter(out, inputs, group=ctx.group)
        return out, None, None, None


class ReduceScatterToSequenceParallel(torch.autograd.Function):
    """Row-parallel partial sums [B, T, d] -> this rank's summed chunk [B, T/tp, d];
    backward: all-gather of the chunks' gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        inputs = [c.contiguous() for c in x.chunk(dist.get_world_size(group), dim=1)]
        out = torch.empty_like(inputs[0])
        record_comm("sp:reduce_scatter(forward)", nbytes(x), group)
        dist.reduce_scatter(out, inputs, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        parts = [torch.empty_like(grad) for _ in range(dist.get_world_size(ctx.group))]
        record_comm("sp:all_gather(backward)", nbytes(grad) * len(parts), ctx.group)
        dist.all_gather(parts, grad.contiguous(), group=ctx.group)
        return torch.cat(parts, dim=1), None


class ScatterToSequenceParallel(torch.autograd.Function):
    """Keep this rank's chunk of a replicated [B, T, d]; backward: all-gather the gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return x.chunk(dist.get_world_size(group), dim=1)[dist.get_rank(group)].contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ReduceScatterToSequenceParallel.backward(ctx, grad)


class SequenceSplit(nn.Module):
    """After the embedding (and its dropout): each rank continues with its chunk."""

    def __init__(self, group):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ScatterToSequenceParallel.apply(x, self.group)


class SequenceParallelBlock(nn.Module):
    """A Block whose residual stream and LayerNorms hold T/tp positions per rank.

    Adopts the block's submodules under the same names (parameter names do not change)."""

    def __init__(self, block: nn.Module, group, regather_in_backward: bool = True):
        super().__init__()
        if block.gate is not None:
            raise ValueError("sequence parallel does not support gated blocks (config.gate.enabled)")
        self.ln_1, self.attn, self.ln_2, self.mlp, self.drop = block.ln_1, block.attn, block.ln_2, block.mlp, block.drop
        self.group, self.regather_in_backward = group, regather_in_backward

    def _parallel_region(self, local: torch.Tensor, chunk: int, layer, *args):
        """all-gather -> layer(gathered, *args) -> reduce-scatter; returns this rank's chunk."""
        gathered = GatherFromSequenceParallel.apply(local, self.group, chunk, True)
        if self.regather_in_backward:
            with RegatherInBackward(gathered, local, self.group, chunk).hooks():
                out = layer(gathered, *args)
        else:
            out = layer(gathered, *args)
        return ReduceScatterToSequenceParallel.apply(out, self.group)

    def _attention(self, context: torch.Tensor, segment_len: int) -> torch.Tensor:
        S = context.size(1)  # the model built pos_emb for its local memory length: rebuild
        pos_emb = sinusoidal_embedding(S, context.size(-1), device=context.device, dtype=context.dtype)
        return self.attn(context[:, S - segment_len:], context, pos_emb)

    def forward(self, x: torch.Tensor, mem: torch.Tensor, pos_emb: torch.Tensor):
        """x [B, T/tp, d]; mem [B, M/tp, d]: this rank's chunk of each cached segment."""
        chunk, T = x.size(1), x.size(1) * dist.get_world_size(self.group)
        h = x + self.drop(self._parallel_region(self.ln_1(torch.cat([mem, x], dim=1)), chunk, self._attention, T))
        return h + self.drop(self._parallel_region(self.ln_2(h), chunk, self.mlp)), None, None


def check_sequence_parallel(config, tp: int) -> None:
    """Refuse shapes the split cannot represent, naming the field."""
    if config.seq_len % tp:
        raise ValueError(f"tp={tp} does not divide the model's seq_len={config.seq_len}")
    if config.memory_length % config.seq_len:
        raise ValueError(f"memory_length={config.memory_length} must be a multiple of seq_len="
                         f"{config.seq_len} under sequence parallel (whole segments are cached)")


def parallelize_sequence(model: nn.Module, tp_group, regather_in_backward: bool = True) -> nn.Module:
    """Tensor + sequence parallel over tp_group, in place. Feed it the full [B, T] tokens
    and targets on every rank; logits and loss come out full and replicated.

    regather_in_backward: keep only this rank's chunk of the gathered inputs of the
    column-parallel linears and all-gather them again in backward (Megatron does this)."""
    tp = dist.get_world_size(tp_group)
    check_sequence_parallel(model.config, tp)
    parallelize_tensor(model, tp_group, sequence_parallel=True)
    model.memory_length //= tp  # per rank: its chunk of every cached segment
    model.drop = nn.Sequential(model.drop, SequenceSplit(tp_group))
    model.blocks = nn.ModuleList(SequenceParallelBlock(b, tp_group, regather_in_backward) for b in model.blocks)
    model.norm.register_forward_hook(
        lambda _m, _i, out: GatherFromSequenceParallel.apply(out, tp_group, out.size(1), False))
    norms = [model.norm] + [n for b in model.blocks for n in (b.ln_1, b.ln_2)]
    for param in (p for n in norms for p in n.parameters()):  # each rank saw 1/tp of the tokens
        param.register_hook(lambda grad: counted_all_reduce(grad, tp_group, "sp:norm_grad_all_reduce(backward)"))
    return model
