"""A trainable dynamic gate: decide per sequence (or token) whether a block runs.

The article's `DynamicGate` returns `argmax` of a small MLP: argmax has no gradient,
so nothing trains the gate as written. Here the decision is a hard 0/1 in the
forward pass but carries the gradient of a relaxed sample (straight-through
Gumbel-softmax with two classes, written as Gumbel-sigmoid: the difference of two
Gumbel variables is a logistic variable). A compute penalty on the expected keep
rate pushes towards skipping; the LM loss pushes back where the block matters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dslib.model.config import GateConfig


def straight_through_keep(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sample keep decisions: forward value exactly 0.0/1.0, gradient of the soft sample."""
    u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
    logistic_noise = u.log() - (-u).log1p()
    soft = torch.sigmoid((logits + logistic_noise) / temperature)
    hard = (soft > 0.5).to(soft.dtype)
    return hard + soft - soft.detach()


class DynamicGate(nn.Module):
    """Keep logit from the block's input: [B] per sequence or [B, T] per token.
    Positive logit = run the block.

    Both are causal. A token's decision reads that token's input only. A sequence's
    decision is made before the segment runs, from what is known at its first position:
    the mean of the layer's memory (its inputs from earlier segments) and of the
    segment's first token. The article's gate averages the whole segment, so an early
    position's output would depend on later tokens and could not be decoded token by token.
    """

    def __init__(self, hidden_size: int, config: GateConfig):
        super().__init__()
        self.granularity, self.temperature = config.granularity, config.temperature
        self.init_keep_logit = config.init_keep_logit
        self.norm = nn.LayerNorm(hidden_size)
        self.fc_in = nn.Linear(hidden_size, config.hidden_size)
        self.fc_out = nn.Linear(config.hidden_size, 1)
        self.reset_keep_bias()

    def reset_keep_bias(self) -> None:
        """Start out keeping: the gate has to learn what to skip."""
        nn.init.constant_(self.fc_out.bias, self.init_keep_logit)

    def forward(self, x: torch.Tensor, mem: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, d] the block's input, mem [B, M, d] its memory (M may be 0)."""
        if self.granularity == "sequence":
            known = x[:, :1] if mem is None else torch.cat([mem, x[:, :1]], dim=1)
            x = known.mean(dim=1)
        return self.fc_out(F.gelu(self.fc_in(self.norm(x)))).squeeze(-1)

    def decide(self, logits: torch.Tensor) -> torch.Tensor:
        """0/1 keep decisions: sampled with straight-through gradient in training,
        deterministic (logit > 0) in eval."""
        if self.training:
            return straight_through_keep(logits, self.temperature)
        return (logits > 0).to(logits.dtype)
