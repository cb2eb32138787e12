"""Expert parallel for the chapter 12 DeepSeekMoE, applied from outside the plain model.

The E routed experts of every MoE layer are split over the ep ranks of an expert-parallel
group: rank j keeps experts [j E/ep, (j+1) E/ep). Everything else (attention, norms, the
router, the shared experts, embedding, head) stays replicated, and each rank runs its own
slice of the global batch: the replicas are data parallel over the group.

One MoE layer on one rank, N local tokens, k experts each:
  route      N x k assignments, sorted by expert, hence by the rank that owns it
  counts     all_to_all of the [ep, E/ep] assignment counts (so every rank knows its splits)
  dispatch   all_to_all_single of the [N k, d] token rows, variable splits
  experts    the received rows regrouped expert by expert, one grouped matmul (or a loop)
  combine    all_to_all_single back, the exact reverse; then weighted by g and added per token
`TokenAllToAll` is the autograd op of dispatch and combine: its backward is the all-to-all
with the splits swapped. The combine weight is applied on the token's own rank, after
combine (down(a) g = down(a g): the expert FFN is linear after the activation), so only
the d-wide rows travel.

Bytes (`A2A_BYTES`, counted per rank as what it sends to other ranks):
  per MoE layer and direction = (N k - assignments to this rank's own experts) x d x element size
and the same again in backward (the gradients travel the reverse way of each forward send).

Gradients: the loss on each rank is a mean over its own tokens, the global loss the mean over
replicas, so every gradient is summed over the replicas and divided by their number.
Expert gradients already hold every source rank's contribution (the backward all-to-all
brought them); they are summed only over the expert-data-parallel group (the ranks holding
the same experts, dp of them). The balancing bias moves by sign(mean load - load) of the
global loads: the routers' load counters are all-reduced before the bias update.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dslib.model.moe import DeepSeekMoE, RoutedExperts, Router
from dslib.train.step import OptimizerStepper

# Bytes this rank sent to other ranks, and calls, by "<dispatch|combine>(<forward|backward>)"
A2A_BYTES: Counter[str] = Counter()
A2A_CALLS: Counter[str] = Counter()


def reset_a2a() -> None:
    A2A_BYTES.clear()
    A2A_CALLS.clear()


def _all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group, name: str) -> torch.Tensor:
    """Rows of x: in_splits[j] of them go to rank j; out_splits[j] arrive from rank j."""
    x = x.contiguous()
    out = x.new_empty((sum(out_splits), *x.shape[1:]))
    me = dist.get_rank(group)
    row_bytes = x[0].numel() * x.element_size() if x.dim() > 1 else x.element_size()
    A2A_BYTES[name] += sum(n for j, n in enumerate(in_splits) if j != me) * row_bytes
    A2A_CALLS[name] += 1
    dist.all_to_all_single(out, x, out_splits, in_splits, group=group)
    return out


class TokenAllToAll(torch.autograd.Function):
    """Dispatch or combine: all_to_all_single forward; the same with the splits swapped backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, out_splits: list[int], in_splits: list[int], group, name: str) -> torch.Tensor:
        ctx.splits, ctx.group, ctx.name = (out_splits, in_splits), group, name
        return _all_to_all(x, out_splits, in_splits, group, f"{name}(forward)")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out_splits, in_splits = ctx.splits
        return _all_to_all(grad, in_splits, out_splits, ctx.group, f"{ctx.name}(backward)"), None, None, None, None


class ExpertParallelExperts(RoutedExperts):
    """This rank's E/ep routed experts of one layer; the same call as RoutedExperts."""

    def __init__(self, experts: RoutedExperts, group) -> None:
        nn.Module.__init__(self)
        ep, rank = dist.get_world_size(group), dist.get_rank(group)
        n_experts = experts.gate_up.size(0)
        if n_experts % ep:
            raise ValueError(f"ep={ep} does not divide n_routed_experts={n_experts}")
        self.group, self.ep, self.n_local = group, ep, n_experts // ep
        self.dispatch = experts.dispatch
        local = slice(rank * self.n_local, (rank + 1) * self.n_local)
        self.gate_up = nn.Parameter(experts.gate_up.detach()[local].clone())
        self.down = nn.Parameter(experts.down.detach()[local].clone())

    def forward(self, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor,
                counts: torch.Tensor) -> torch.Tensor:
        """x [N, d], experts/weights [N, k], counts [E] this rank's assignments per expert -> [N, d]."""
        k = experts.size(1)
        order = experts.flatten().argsort(stable=True)  # by expert, so by owning rank
        token = order // k
        xs = x.index_select(0, token)  # [N k, d]
        send = counts.view(self.ep, self.n_local)  # [destination rank, its local expert]
        recv = torch.empty_like(send)  # [source rank, my local expert]
        dist.all_to_all_single(recv, send.contiguous(), group=self.group)
        send_splits, recv_splits = send.sum(1).tolist(), recv.sum(1).tolist()  # one host sync
        received = TokenAllToAll.apply(xs, recv_splits, send_splits, self.group, "dispatch")  # [R, d]
        # received rows come source by source, each source's expert by expert: regroup expert-major
        segment = torch.repeat_interleave(torch.arange(recv.numel(), device=x.device), recv.flatten())
        source, local_expert = segment // self.n_local, segment % self.n_local
        by_expert = (local_expert * self.ep + source).argsort(stable=True)
        ys = self._local(received.index_select(0, by_expert), recv.sum(0))
        ys = ys.index_select(0, by_expert.argsort())  # back to the order received
        back = TokenAllToAll.apply(ys, send_splits, recv_splits, self.group, "combine")  # [N k, d]
        back = back * weights.flatten()[order, None].to(back.dtype)
        return x.new_zeros(x.shape, dtype=back.dtype).index_add_(0, token, back)

    def _local(self, xs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """The local experts on rows sorted by local expert, combine weight 1 (applied after combine)."""
        ones = xs.new_ones(xs.size(0), 1)
        if xs.size(0) and self.dispatch == "grouped_mm" and (xs.device.type == "cpu" or xs.dtype == torch.bfloat16):
            return self._grouped(xs, ones, counts)
        return self._loop(xs, ones, counts)


@dataclass
class ExpertGroups:
    """ep_group: ranks holding different experts (tokens travel inside it); expert_dp_group:
    ranks holding the same experts; replica_group: every rank holding the replicated parameters."""

    ep_group: Any
    expert_dp_group: Any
    replica_group: Any


def expert_groups(ep: int) -> ExpertGroups:
    """dp x ep over the whole world, ep varying fastest (its ranks neighbours, as tp in the grid)."""
    from torch.distributed.device_mesh import init_device_mesh

    from dslib.env import device

    world = dist.get_world_size()
    if world % ep:
        raise ValueError(f"ep={ep} does not divide the world size {world}")
    mesh = init_device_mesh(device().type, (world // ep, ep), mesh_dim_names=("dp", "ep"))
    return ExpertGroups(mesh.get_group("ep"), mesh.get_group("dp"), dist.group.WORLD)


def parallelize_experts(model: nn.Module, group) -> nn.Module:
    """Replace every DeepSeekMoE's routed experts (main blocks and MTP) by this rank's shard.

    Shard plain experts only: a subclass (e.g. FP8's) would lose its GEMMs in the plain shard,
    so apply such changes after this call."""
    for module in model.modules():
        if isinstance(module, DeepSeekMoE) and not isinstance(module.experts, ExpertParallelExperts):
            if type(module.experts) is not RoutedExperts:
                raise TypeError(f"parallelize_experts shards plain RoutedExperts, not {type(module.experts).__name__}: "
                                "apply it before apply_fp8 or other expert changes")
            module.experts = ExpertParallelExperts(module.experts, group)
    return model


def _all_reduce_flat(tensors: list[torch.Tensor], group, scale: float = 1.0) -> None:
    """Sum `tensors` in place over `group` in one call (a flat buffer), times `scale`."""
    if not tensors:
        return
    flat = torch.cat([t.flatten() for t in tensors])
    if dist.get_world_size(group) > 1:
        dist.all_reduce(flat, group=group)
    flat *= scale
    for t, chunk in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(chunk.view_as(t))


@torch.no_grad()
def all_reduce_gradients(model: nn.Module, groups: ExpertGroups) -> None:
    """Gradients of the global mean loss: replicated ones summed over the replicas, expert ones
    over the expert-data-parallel group; both divided by the number of replicas."""
    replicas = dist.get_world_size(groups.replica_group)
    expert_params = {id(p) for m in model.modules() if isinstance(m, ExpertParallelExperts)
                     for p in m.parameters()}
    with_grad = [p for p in model.parameters() if p.grad is not None]
    expert = [p.grad for p in with_grad if id(p) in expert_params]
    replicated = [p.grad for p in with_grad if id(p) not in expert_params]
    _all_reduce_flat(replicated, groups.replica_group, 1.0 / replicas)
    _all_reduce_flat(expert, groups.expert_dp_group, 1.0 / replicas)


@torch.no_grad()
def all_reduce_router_loads(model: nn.Module, group) -> None:
    """Every router's load since its last bias update, summed over `group` (the global batch's)."""
    _all_reduce_flat([m.load_since_update for m in model.modules() if isinstance(m, Router)], group)


class ExpertParallelStepper(OptimizerStepper):
    """An optimizer step on an expert-parallel model: gradients synchronised first, router loads
    all-reduced after, so that train_step's bias update sees the global batch's loads."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, groups: ExpertGroups) -> None:
        super().__init__(optimizer)  # no clipping: the norm would need the sharded experts' part too
        self.model, self.groups = model, groups

    def step(self) -> tuple[torch.Tensor | None, bool]:
        all_reduce_gradients(self.model, self.groups)
        result = super().step()
        all_reduce_router_loads(self.model, self.groups.replica_group)
        return result


def dispatch_bytes_formula(tokens: int, top_k: int, hidden: int, element_size: int, local_assignments: int) -> int:
    """Bytes one rank sends in one direction of one MoE layer: (tokens x top-k - assignments that
    stay on this rank) x hidden x element size."""
    return (tokens * top_k - local_assignments) * hidden * element_size
