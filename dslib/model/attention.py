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

    Row c holds distance length-1-c: the order `rel_shift` expects. Computed in float64 and
    rounded once to ``dtype`` (default float32): float32 arithmetic is off by 2e-6 at 64
    positions and 4e-5 at 1000, and a float64 model needs float64 positions.
    """
    distances = torch.arange(length - 1, -1, -1, device=device, dtype=torch.float64)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=device, dtype=torch.float64) / dim))
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
    return shift_padded(F.pad(scores, (1, 0)))


def shift_padded(padded: torch.Tensor) -> torch.Tensor:
    """`rel_shift` of scores that already carry the zero column in front ([..., T, S+1]).

    Views only, no copy. RelativeAttention gets the zero column for free by giving the
    distance embeddings a zero row, so its matmul writes the padded layout directly.
    """
    *lead, T, S_plus_1 = padded.shape
    return padded.view(*lead, S_plus_1, T)[..., 1:, :].view(*lead, T, S_plus_1 - 1)


@functools.lru_cache(maxsize=16)
def causal_bias(T: int, S: int, device: torch.device) -> torch.Tensor:
    """Additive mask [T, S]: 0 where query i may see key j (j <= i + S - T), -inf after.

    Cached (built once per shape, read-only). Added in place, it passes gradients
    through unchanged, where a masked_fill would copy them in the backward pass.
    """
    hidden = torch.ones(T, S, dtype=torch.bool, device=device).triu(S - T + 1)
    return torch.zeros(T, S, device=device).masked_fill_(hidden, float("-inf"))


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
        B, Q = query_in.shape[:2]
        S = context.size(1)
        q = self._heads(self.q_proj(query_in))
        k, v = self._heads(self.k_proj(context)), self._heads(self.v_proj(context))
        r = self.r_proj(pos_emb).view(S, self.num_heads, self.head_dim).transpose(0, 1)
        scale = 1.0 / math.sqrt(self.head_dim)
        q_pos = q + self.pos_bias_v[:, None]
        if query_pos is None:
            # position term against a zero row + all S distances: the matmul writes the
            # zero-padded [B, H, Q, S+1] layout, and the shift is a view (rel_shift)
            r = F.pad(r, (0, 0, 1, 0))
            pos_scores = shift_padded(q_pos @ (r.transpose(1, 2) * scale))
            mask = causal_bias(Q, S, q.device)
        else:  # the same index map as rel_shift, for arbitrary query positions
            pos_scores = q_pos @ (r.transpose(1, 2) * scale)  # [B, H, Q, S] by distance
            keys = torch.arange(S, device=q.device)
            column = (S - 1 - query_pos[:, :, None] + keys).clamp(0, S - 1)
            pos_scores = pos_scores.gather(-1, column[:, None].expand_as(pos_scores))
            hidden = (keys > query_pos[:, :, None])[:, None]
            mask = torch.zeros(hidden.shape, device=q.device).masked_fill_(hidden, float("-inf"))
        # content term accumulated in place onto the position term (one batched matmul,
        # no copy of the [B, H, Q, S] scores), then causal mask, softmax, values
        scores = pos_scores.reshape(B * self.num_heads, Q, S).baddbmm_(
            # in-place ops are not autocast: match the dtype the scores got (bf16 under autocast)
            (q + self.pos_bias_u[:, None]).to(pos_scores.dtype).reshape(B * self.num_heads, Q, self.head_dim),
            k.reshape(B * self.num_heads, S, self.head_dim).transpose(1, 2),
            alpha=scale,
        ).view(B, self.num_heads, Q, S)
        probs = scores.add_(mask).softmax(dim=-1)
        if self.training and self.dropout > 0:
            probs = F.dropout(probs, self.dropout)
        out = probs @ v  # [B, H, Q, dh]
        # H * dh, not d: under tensor parallel this rank holds only H / tp of the heads
        return self.o_proj(out.transpose(1, 2).reshape(B, Q, self.num_heads * self.head_dim))
