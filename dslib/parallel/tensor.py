"""Megatron tensor parallelism, applied from outside to the chapter 03 TransformerXL.

Two conjugate autograd ops do all the communication (Shoeybi et al., 2019, section 3):

    f: identity forward, all-reduce backward   (before a column-parallel linear)
    g: all-reduce forward, identity backward   (after a row-parallel linear)

An MLP becomes  Y = g( gelu( f(X) A_r ) B_r ):  A split by columns (output features),
B by rows (input features), so the GELU runs on a local slice and the only
communication is one all-reduce forward (g) and one backward (f). Attention is split
by heads: q/k/v (and Transformer-XL's r_proj, pos_bias_u/v) column-wise, o_proj
row-wise. As in Megatron, f sits once per sub-layer, on the LayerNorm output that
feeds the column-parallel linears (a forward hook on ln_1 / ln_2), so q, k and v share
one all-reduce: per layer, 2 all-reduces forward and 2 backward. Embedding, LayerNorms
and the head stay replicated; their gradients come out complete on every rank because
f all-reduces the gradient entering the residual stream.

Two paths with the same plan:
- `parallelize_tensor(model, tp_group)`: explicit ops (this file), with every byte they
  move counted in COMM_BYTES (what the notebook's communication table reads);
- `parallelize_tensor_dtensor(model, tp_mesh)`: torch.distributed.tensor.parallel's
  parallelize_module with ColwiseParallel / RowwiseParallel on a DeviceMesh. Verified on
  gloo/CPU with torch 2.13 (2 ranks): forward and backward match the single process.
  Its plans cover nn.Linear only: the per-head bias parameters pos_bias_u/v are sliced
  by hand (plain local Parameters, not DTensors).
Dropout inside the parallel region would need per-rank RNG streams (Megatron's RNG
tracker); the chapter's configs use dropout 0, and parallelize_* refuses dropout > 0.
"""
from __future__ import annotations

from collections import Counter

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

# Per collective this rank entered, by "<op>:<collective>(<pass>)": the full tensor's bytes
# (COMM_BYTES: the all-reduced tensor, the gathered result, the reduce-scattered input),
# the bytes this rank sends with a ring algorithm (COMM_RING_BYTES: all-reduce 2(p-1)/p of
# them, all-gather and reduce-scatter (p-1)/p), and how many calls (COMM_CALLS).
COMM_BYTES: Counter[str] = Counter()
COMM_RING_BYTES: Counter[str] = Counter()
COMM_CALLS: Counter[str] = Counter()


def reset_comm() -> None:
    for counter in (COMM_BYTES, COMM_RING_BYTES, COMM_CALLS):
        counter.clear()


def record_comm(name: str, full_bytes: int, group) -> None:
    p = dist.get_world_size(group)
    COMM_BYTES[name] += full_bytes
    COMM_RING_BYTES[name] += full_bytes * (p - 1) * (2 if "all_reduce" in name else 1) // p
    COMM_CALLS[name] += 1


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def counted_all_reduce(x: torch.Tensor, group, name: str) -> torch.Tensor:
    """Sum of x over the group (a new tensor), its bytes recorded under name."""
    if dist.get_world_size(group) == 1:
        return x
    x = x.contiguous().clone()  # never reduce a tensor autograd may still hold
    record_comm(name, nbytes(x), group)
    dist.all_reduce(x, group=group)
    return x


class CopyToParallelRegion(torch.autograd.Function):
    """f: identity forward, all-reduce of the input gradient backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return counted_all_reduce(grad, ctx.group, "f:all_reduce(backward)"), None


class ReduceFromParallelRegion(torch.autograd.Function):
    """g: all-reduce of the partial outputs forward, identity backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        return counted_all_reduce(x, group, "g:all_reduce(forward)")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def _shard(tensor: torch.Tensor, dim: int, group) -> nn.Parameter:
    """This rank's contiguous slice of `tensor` along dim, tagged for gathering back."""
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    param = nn.Parameter(tensor.detach().chunk(size, dim=dim)[rank].clone())
    param.tp_shard_dim = dim  # read by gather_full
    return param


class ColumnParallelLinear(nn.Module):
    """Y_r = X W_r^T: this rank's rows of W (output features). Its input must enter the
    parallel region through f (or sequence parallel's all-gather); parallelize_tensor puts
    one f on the LayerNorm output that q, k and v share, as Megatron does."""

    def __init__(self, linear: nn.Linear, group):
        super().__init__()
        self.weight = _shard(linear.weight, 0, group)
        self.bias = _shard(linear.bias, 0, group) if linear.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """Y = sum_r X_r W_r^T: this rank's columns of W (input features) on its slice of X.
    `reduce_output` applies g; sequence parallel reduce-scatters instead."""

    def __init__(self, linear: nn.Linear, group, reduce_output: bool = True):
        super().__init__()
        self.group, self.reduce_output = group, reduce_output
        self.weight = _shard(linear.weight, 1, group)
        self.bias = linear.bias  # replicated; added once, after the reduction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if self.reduce_output:
            y = ReduceFromParallelRegion.apply(y, self.group)
        return y if self.bias is None else y + self.bias


def check_tensor_parallel(config, tp: int) -> None:
    """Refuse what the split cannot represent, naming the field."""
    if config.dropout > 0:
        raise ValueError(f"dropout={config.dropout}: tensor parallel here needs dropout 0 "
                         "(per-rank RNG streams are not built)")
    for field in ("num_attention_heads", "hidden_size", "intermediate_size"):
        if getattr(config, field) % tp:
            raise ValueError(f"tp={tp} does not divide the model's {field}={getattr(config, field)}")


# The plan of a Transformer-XL block, read by both paths: module -> how its Linear is split.
# "column": output features split (heads of q/k/v and of the relative position projection r,
# the MLP's up projection); "row": input features split, outputs summed (all-reduce, g).
TP_PLAN: dict[str, str] = {
    "attn.q_proj": "column", "attn.k_proj": "column", "attn.v_proj": "column",
    "attn.r_proj": "column",  # its input (the position embeddings) needs no gradient
    "attn.o_proj": "row",
    "mlp.fc_in": "column",
    "mlp.fc_out": "row",
}


def _split_head_biases(attn: nn.Module, group) -> None:
    attn.num_heads //= dist.get_world_size(group)
    attn.pos_bias_u = _shard(attn.pos_bias_u, 0, group)
    attn.pos_bias_v = _shard(attn.pos_bias_v, 0, group)


def parallelize_block(block: nn.Module, tp_group, sequence_parallel: bool = False) -> nn.Module:
    """Split one transformer_xl.Block's attention (by heads) and MLP across tp_group, in place
    (what a pipeline stage holding some of the blocks calls on each of them)."""
    for path, style in TP_PLAN.items():
        parent_path, name = path.rsplit(".", 1)
        parent = block.get_submodule(parent_path)
        linear = getattr(parent, name)
        setattr(parent, name, ColumnParallelLinear(linear, tp_group) if style == "column"
                else RowParallelLinear(linear, tp_group, reduce_output=not sequence_parallel))
    _split_head_biases(block.attn, tp_group)
    if not sequence_parallel:  # one f per sub-layer, where its input enters the parallel region
        for norm in (block.ln_1, block.ln_2):
            norm.register_forward_hook(lambda _m, _i, out: CopyToParallelRegion.apply(out, tp_group))
    return block


def parallelize_tensor(model: nn.Module, tp_group, sequence_parallel: bool = False) -> nn.Module:
    """Split every block of a TransformerXL across tp_group, in place.

    sequence_parallel=True leaves out f and g (dslib.parallel.sequence puts an all-gather
    and a reduce-scatter around the same linears instead)."""
    check_tensor_parallel(model.config, dist.get_world_size(tp_group))
    for block in model.blocks:
        parallelize_block(block, tp_group, sequence_parallel)
    return model


def parallelize_tensor_dtensor(model: nn.Module, tp_mesh) -> nn.Module:
    """The same plan through torch.distributed.tensor.parallel (weights become DTensors)."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    check_tensor_parallel(model.config, tp_mesh.size())
    plan = {path: ColwiseParallel() if style == "column" else RowwiseParallel() for path, style in TP_PLAN.items()}
    for block in model.blocks:
        parallelize_module(block, tp_mesh, plan)
        _split_head_biases(block.attn, tp_mesh.get_group())
    return model


def gather_full(model: nn.Module, group, grads: bool = False) -> dict[str, torch.Tensor]:
    """Every parameter (or its gradient) at full size, under the single-process names."""
    from torch.distributed.tensor import DTensor

    full = {}
    for name, param in model.named_parameters():
        value = param.grad if grads else param.detach()
        if value is None:
            continue
        if isinstance(value, DTensor):
            value = value.full_tensor()
        elif hasattr(param, "tp_shard_dim"):
            parts = [torch.empty_like(value) for _ in range(dist.get_world_size(group))]
            dist.all_gather(parts, value.contiguous(), group=group)
            value = torch.cat(parts, dim=param.tp_shard_dim)
        full[name] = value.detach().clone()
    return full


def predicted_comm_bytes(config, batch_size: int, segments: int, tp: int, bytes_per_element: int = 4) -> int:
    """Payload of f and g per rank for `segments` consecutive segments (Megatron's count;
    0 for tp = 1, where f and g are identities and no collective runs):
    per layer, g all-reduces two [B, T, d] outputs forward; f all-reduces the gradient of
    the attention's input context [B, M + T, d] and of the MLP's input [B, T, d] backward
    (M: the memory present, which grows by T per segment up to memory_length)."""
    if tp == 1:
        return 0
    B, T, d = batch_size, config.seq_len, config.hidden_size
    total = 0
    for segment in range(segments):
        memory = min(segment * T, config.memory_length)
        total += config.num_layers * (2 * B * T * d + B * (memory + T) * d + B * T * d)
    return total * bytes_per_element
