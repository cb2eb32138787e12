"""Multi-token prediction (DeepSeek-V3, arXiv 2412.19437, section 2.2).

D modules in sequence; module k at position i predicts token t_{i+k+1}:
  h'_i = W_k [RMSNorm(h^{k-1}_i) ; RMSNorm(Emb(t_{i+k}))]      (2d -> d)
  h^k  = Block_k(h'_{0..T-k-1})                               (one transformer block, causal)
  p^k  = Head(RMSNorm_k(h^k))                                 (the main model's head, shared)
h^0 is the main model's last hidden state (before its final norm); Emb and Head are the main
model's. With inputs t_0..t_{T-1} and targets t_1..t_T, depth k uses positions 0..T-k-1, takes
the embeddings of targets[:, k-1:T-1] (= t_k..t_{T-1}) and is scored against targets[:, k:]
(= t_{k+1}..t_T). Its loss enters training as lambda / D * sum_k CE_k. At inference the
modules are dropped, or depth 1 drafts a token for self-speculative decoding (decode.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from dslib.model.mla import KVCache


class MTPModule(nn.Module):
    def __init__(self, hidden_size: int, block: nn.Module, eps: float = 1e-6):
        super().__init__()
        self.hidden_norm = nn.RMSNorm(hidden_size, eps=eps)
        self.embed_norm = nn.RMSNorm(hidden_size, eps=eps)
        self.proj = nn.Linear(2 * hidden_size, hidden_size, bias=False)
        self.block = block  # a block of the main model's kind (MLA + MoE for V3)
        self.norm = nn.RMSNorm(hidden_size, eps=eps)  # before the shared head

    def forward(self, hidden: torch.Tensor, next_embed: torch.Tensor, positions: torch.Tensor,
                cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """hidden, next_embed [B, T, d] -> (h^k [B, T, d], balance loss, expert load or None)."""
        h = self.proj(torch.cat([self.hidden_norm(hidden), self.embed_norm(next_embed)], -1))
        return self.block(h, positions, cache)


@dataclass
class MTPDepth:
    logits: torch.Tensor  # [B, T - k, vocab]: position i predicts t_{i+k+1}
    targets: torch.Tensor  # [B, T - k]: targets[:, k:]
    aux_loss: torch.Tensor  # the block's weighted balance loss
    load: torch.Tensor | None  # the block's expert load, None for a dense block


def mtp_forward(modules: nn.ModuleList, hidden: torch.Tensor, targets: torch.Tensor,
                embed: nn.Module, head: Callable[[torch.Tensor], torch.Tensor]) -> list[MTPDepth]:
    """Run the D modules on the main model's hidden [B, T, d] during training; depths that
    would have no position left (k >= T) are skipped."""
    T = targets.size(1)
    positions = torch.arange(T, device=targets.device)
    depths = []
    for k, module in enumerate(modules, start=1):
        if k >= T:
            break
        hidden, aux, load = module(hidden[:, :T - k], embed(targets[:, k - 1:T - 1]), positions[:T - k])
        depths.append(MTPDepth(head(module.norm(hidden)), targets[:, k:], aux, load))
    return depths
