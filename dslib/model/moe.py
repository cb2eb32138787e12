"""DeepSeekMoE feed-forward (arXiv 2401.06066; DeepSeek-V3, arXiv 2412.19437, section 2.1.2).

  MoE(x) = sum_shared FFN_s(x) + routed_scaling_factor * sum_{i in top-k} g_i FFN_i(x)   (+ x in the block)

Shared experts see every token; each token also goes to k of the E fine-grained routed
experts (narrow SwiGLUs). The router:
  affinity   s_i = softmax(x . e_i) or sigmoid(x . e_i) (V3)
  selection  top-k of s_i + b_i (b: the balancing bias, 0 unless bias_update_speed > 0),
             optionally among the topk_group best of n_group expert groups only (V3: a
             group scores the sum of its two best experts)
  combine    g_i = s_i over the selected (no bias), divided by their sum if norm_topk_prob
Balancing:
  aux-loss-free (arXiv 2408.15664)  after each optimizer step  b_i += gamma * sign(mean load - load_i),
      load counted over the training forwards since the last update; the bias only steers
      selection, so it never enters a gradient or a combine weight
  batch-wise balance loss           alpha * sum_i f_i P_i over the batch (DeepSeekMoE, GShard-like)
  sequence-wise balance loss (V3)   the same per sequence, averaged: f_i = E/(k T) * (tokens of
      the sequence sending to i), P_i = mean_t s_i / sum_j s_j
Dispatch is dropless: the token-expert assignments are sorted by expert, the tokens gathered
in that order, every expert runs on its contiguous slice (one grouped matmul per weight, or
one matmul per expert), and the weighted outputs are added back per token. `load_stats`
reports what a capacity factor would have dropped, without dropping it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dslib.model.deepseek_config import MoEConfig


class SwiGLU(nn.Module):
    """down(silu(x W_gate) * (x W_up)): the dense FFN, the shared experts and each routed expert.
    W_gate and W_up are one [d, 2 ff] matmul (a wider matmul runs faster on a CPU)."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_up = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


@dataclass
class Routing:
    experts: torch.Tensor  # [N, k] chosen expert ids
    weights: torch.Tensor  # [N, k] combine weights (scaled, from the unbiased affinities)
    scores: torch.Tensor  # [N, E] affinities, for the balance losses


class Router(nn.Module):
    def __init__(self, hidden_size: int, config: MoEConfig):
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, hidden_size))
        # buffers, not parameters: no gradient and no optimizer touch them; the bias is saved
        # with the model, the load counter only lives between two bias updates
        self.register_buffer("bias", torch.zeros(config.n_routed_experts))
        self.register_buffer("load_since_update", torch.zeros(config.n_routed_experts), persistent=False)

    def forward(self, x: torch.Tensor) -> Routing:
        """x [N, d] -> the routing of N tokens."""
        cfg = self.config
        logits = F.linear(x, self.weight).float()  # [N, E]
        scores = logits.softmax(-1) if cfg.score_func == "softmax" else logits.sigmoid()
        choice = scores.detach() + self.bias  # the bias steers selection only
        if cfg.n_group > 1:
            grouped = choice.view(x.size(0), cfg.n_group, -1)  # [N, G, E/G]
            group_score = grouped.topk(min(2, grouped.size(-1)), dim=-1).values.sum(-1)  # [N, G]
            kept = group_score.topk(cfg.topk_group, dim=-1).indices
            allowed = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, kept, True)
            choice = grouped.masked_fill(~allowed[..., None], float("-inf")).flatten(1)
        experts = choice.topk(cfg.top_k, dim=-1).indices  # [N, k]
        weights = scores.gather(1, experts)
        if cfg.norm_topk_prob:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return Routing(experts, (weights * cfg.routed_scaling_factor).to(x.dtype), scores)

    @torch.no_grad()
    def update_bias(self) -> None:
        """b += gamma * sign(mean load - load) over the loads since the last call; then reset them."""
        load = self.load_since_update
        if self.config.bias_update_speed > 0 and load.sum() > 0:
            self.bias += self.config.bias_update_speed * torch.sign(load.mean() - load)
        load.zero_()


def balance_loss(scores: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """sum_i f_i P_i per group of tokens, averaged over groups (DeepSeek-V3 eqs. 17-20).

    scores [G, T, E] affinities, experts [G, T, k] selections. f_i = E / (k T) * (tokens picking i),
    P_i = mean_t s'_i with s' = s / sum_j s_j. 1.0 when perfectly balanced, E / k at the worst.
    """
    G, T, E = scores.shape
    k = experts.size(-1)
    counts = torch.zeros(G, E, device=scores.device).scatter_add_(
        1, experts.flatten(1), torch.ones(G, T * k, device=scores.device))
    f = counts * E / (k * T)
    p = (scores / scores.sum(-1, keepdim=True)).mean(1)
    return (f * p).sum(-1).mean()


class RoutedExperts(nn.Module):
    """E SwiGLU experts with stacked weights (so one grouped matmul can serve all of them)."""

    def __init__(self, n_experts: int, hidden_size: int, intermediate_size: int, dispatch: str):
        super().__init__()
        self.dispatch = dispatch  # "grouped_mm" | "loop"
        self.gate_up = nn.Parameter(torch.empty(n_experts, hidden_size, 2 * intermediate_size))
        self.down = nn.Parameter(torch.empty(n_experts, intermediate_size, hidden_size))

    def forward(self, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor,
                counts: torch.Tensor) -> torch.Tensor:
        """x [N, d], experts/weights [N, k], counts [E] assignments per expert
        -> sum_j weights[:, j] * FFN_experts[:, j](x) [N, d]."""
        k = experts.size(1)
        order = experts.flatten().argsort(stable=True)  # assignments sorted by expert
        token = order // k  # the token of each sorted assignment
        xs = x.index_select(0, token)  # [N*k, d], expert by expert
        gates = weights.flatten()[order, None]  # [N*k, 1]
        # torch's grouped matmul runs any float dtype on CPU, bf16 only on CUDA (its docs)
        if self.dispatch == "grouped_mm" and (xs.device.type == "cpu" or xs.dtype == torch.bfloat16):
            ys = self._grouped(xs, gates, counts)
        else:
            ys = self._loop(xs, gates, counts)
        return x.new_zeros(x.shape, dtype=ys.dtype).index_add_(0, token, ys)  # autocast: ys may be bf16

    @staticmethod
    def _activation(gate_up: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """silu(gate) * up, scaled by the combine weight here: the narrow side of the expert."""
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up * gates.to(up.dtype)

    def _grouped(self, xs: torch.Tensor, gates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        offsets = counts.cumsum(0).to(torch.int32)  # end of each expert's slice
        h = F.grouped_mm(xs, self.gate_up.to(xs.dtype), offs=offsets)  # [N*k, 2 ff]
        return F.grouped_mm(self._activation(h, gates), self.down.to(xs.dtype), offs=offsets)

    def _loop(self, xs: torch.Tensor, gates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        sizes = counts.tolist()  # one host sync for the slice sizes
        # unbind, not gate_up[e]: its backward stacks once instead of E full-size zero gradients
        outs = [self._activation(chunk @ w_gate_up, g) @ w_down for chunk, g, w_gate_up, w_down
                in zip(xs.split(sizes), gates.split(sizes), self.gate_up.unbind(0), self.down.unbind(0))]
        return torch.cat(outs)


class DeepSeekMoE(nn.Module):
    def __init__(self, hidden_size: int, config: MoEConfig):
        super().__init__()
        self.config = config
        self.router = Router(hidden_size, config)
        self.experts = RoutedExperts(config.n_routed_experts, hidden_size, config.moe_intermediate_size,
                                     config.dispatch)
        shared = config.n_shared_experts * config.moe_intermediate_size
        self.shared = SwiGLU(hidden_size, shared) if shared else None  # all shared experts as one

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, d] -> (output [B, T, d], weighted balance loss (0-dim), load per expert [E])."""
        B, T, d = x.shape
        cfg = self.config
        flat = x.reshape(B * T, d)
        routing = self.router(flat)
        load = torch.bincount(routing.experts.flatten(), minlength=cfg.n_routed_experts)  # [E]
        if self.training:
            self.router.load_since_update += load
        y = self.experts(flat, routing.experts, routing.weights, load)
        if self.shared is not None:
            y = y + self.shared(flat)
        aux = x.new_zeros((), dtype=torch.float32)
        if cfg.aux_loss_alpha > 0:
            aux = aux + cfg.aux_loss_alpha * balance_loss(routing.scores[None], routing.experts[None])
        if cfg.seq_aux_loss_alpha > 0:
            aux = aux + cfg.seq_aux_loss_alpha * balance_loss(
                routing.scores.view(B, T, -1), routing.experts.view(B, T, -1))
        return y.view(B, T, d), aux, load


def update_router_biases(module: nn.Module) -> None:
    """The aux-loss-free bias update of every router in ``module`` (a model or a pipeline stage);
    call it after every optimizer step."""
    for router in module.modules():
        if isinstance(router, Router):
            router.update_bias()


def maxvio(load: torch.Tensor) -> torch.Tensor:
    """MaxVio of one layer's assignments per expert [E]: max_i load_i / mean load - 1 (arXiv
    2408.15664); 0 when perfectly balanced, E - 1 when one expert takes everything."""
    load = load.detach().float()
    return load.max() / load.mean().clamp(min=1e-9) - 1


def load_stats(load: torch.Tensor, capacity_factor: float) -> dict[str, torch.Tensor]:
    """Of one layer's assignments per expert `load` [E]: MaxVio = max_i load_i / mean load - 1
    (arXiv 2408.15664), the share per expert, and the share a capacity of
    ceil(capacity_factor * assignments / E) per expert would have dropped (none is dropped here)."""
    load = load.detach().float()
    total = load.sum().clamp(min=1.0)
    capacity = torch.ceil(capacity_factor * total / load.numel())  # on the device: no host sync
    return {"maxvio": maxvio(load), "share": load / total,
            "dropped_at_capacity": (load - capacity).clamp(min=0).sum() / total}
