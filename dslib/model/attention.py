"""Relative position attention as in Transformer-XL (Dai et al., 2019, section 3.3).

The article calls `torch.nn.functional.relative_logits_1d`; no such function exists
in PyTorch. Relative attention needs scores indexed by (query, key), while the cheap
matmul against the relative embeddings gives scores indexed by (query, distance).
`rel_shift` converts one into the other with a pad and two reshapes (no gather).

Score of query i against key j (keys = memory + segment, distance = i + M - j):
    (q_i + u) . k_j   +   (q_i + v) . W_r R_{i+M-j}
     content term         position term (R: sinusoids, u/v: learned per-head biases)
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_embedding(length: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """Sinusoidal embeddings R for distances length-1, ..., 1, 0 (descending), [length, dim].

    Row c holds distance length-1-c: the order `rel_shift` expects.
    """
    distances = torch.arange(length - 1, -1, -1.0, device=device)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2.0, device=device) / dim))
    angles = distances[:, None] * inv_freq[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1).to(dtype or torch.float32)


def rel_shift(scores: torch.Tensor) -> torch.Tensor:
    """Turn query-by-distance scores into query-by-key scores (Transformer-XL's shift).

    Input  x[..., i, c]: score of query i (0 <= i < T) at distance S-1-c, where the
           keys are M memory positions followed by the T segment positions (S = M+T)
           and the distances are ordered as `sinusoidal_embedding` orders them.
    Output y[..., i, j]: score of query i against key j, i.e. x[..., i, (T-1-i) + j]
           for every key j <= i + M. Entries with j > i + M (future keys) hold other
           values and must be masked, which the causal mask does anyway.

    How: prepend a zero column ([T, S+1]), read the same memory as [S+1, T], drop the
    first row and read it back as [T, S]. Row i ends up shifted left by T-1-i.
    """
    *lead, T, S = scores.shape
    padded = F.pad(scores, (1, 0))  # [..., T, S+1]
    padded = padded.view(*lead, S + 1, T)
    return padded[..., 1:, :].reshape(*lead, T, S)


@functools.lru_cache(maxsize=16)
def future_mask(T: int, S: int, device: torch.device) -> torch.Tensor:
    """Bool [T, S], True where key j lies in the future of query i (j > i + S - T).

    Cached: built once per shape instead of once per layer and step (read-only).
    """
    return torch.ones(T, S, dtype=torch.bool, device=device).triu(S - T + 1)


class RelativeAttention(nn.Module):
    """Multi-head relative attention. q/k/v/o are separate Linears (tensor parallel
    splits q/k/v column-wise and o row-wise by heads; r_proj, u, v split by heads too)."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.r_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.dropout = dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, d] -> [B, H, L, dh]
        return x.view(x.size(0), x.size(1), self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        query_in: torch.Tensor,
        context: torch.Tensor,
        pos_emb: torch.Tensor,
        query_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query_in [B, Q, d], context [B, S, d] (memory + segment), pos_emb [S, d].

        query_pos None: the queries are the last Q positions of the context (training).
        query_pos [B, Q]: context positions of a subset of queries (gated inference).
        """
        B, Q, d = query_in.shape
        S = context.size(1)
        q = self._heads(self.q_proj(query_in))
        k, v = self._heads(self.k_proj(context)), self._heads(self.v_proj(context))
        r = self.r_proj(pos_emb).view(S, self.num_heads, self.head_dim).transpose(0, 1)
        scale = 1.0 / math.sqrt(self.head_dim)
        # position term, one matmul against all S distances: [B, H, Q, S] by distance
        pos_scores = (q + self.pos_bias_v[:, None]) @ (r.transpose(1, 2) * scale)
        if query_pos is None:
            pos_scores = rel_shift(pos_scores)
            hidden = future_mask(Q, S, q.device)
        else:  # the same index map as rel_shift, for arbitrary query positions
            keys = torch.arange(S, device=q.device)
            column = (S - 1 - query_pos[:, :, None] + keys).clamp(0, S - 1)
            pos_scores = pos_scores.gather(-1, column[:, None].expand_as(pos_scores))
            hidden = (keys > query_pos[:, :, None])[:, None]
        # content term added onto the position term in one batched matmul (no copy of
        # the [B, H, Q, S] scores), then causal mask, softmax and the value product
        scores = torch.baddbmm(
            pos_scores.reshape(B * self.num_heads, Q, S),
            (q + self.pos_bias_u[:, None]).reshape(B * self.num_heads, Q, self.head_dim),
            k.reshape(B * self.num_heads, S, self.head_dim).transpose(1, 2),
            alpha=scale,
        ).view(B, self.num_heads, Q, S)
        probs = scores.masked_fill_(hidden, float("-inf")).softmax(dim=-1)
        probs = F.dropout(probs, self.dropout, self.training)
        out = probs @ v  # [B, H, Q, dh]
        return self.o_proj(out.transpose(1, 2).reshape(B, Q, d))
