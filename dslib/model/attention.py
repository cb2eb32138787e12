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
from dataclasses import dataclass

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
def causal_bias(T: int, S: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive mask [T, S]: 0 where query i may see key j (j <= i + S - T), -inf after.

    Cached (built once per shape, read-only). As the content matmul's input (baddbmm) it
    costs no pass of its own and passes gradients through unchanged.
    """
    hidden = torch.ones(T, S, dtype=torch.bool, device=device).triu(S - T + 1)
    return torch.zeros(T, S, device=device, dtype=dtype).masked_fill_(hidden, float("-inf"))


# Queries per causal block (RelativeAttention.forward): 2 blocks at the small config's 256
# tokens measured fastest on a 2-core CPU; smaller blocks make the matmuls too small.
QUERY_BLOCK = 128


class RelativeAttention(nn.Module):
    """Multi-head relative attention. q/k/v/o are separate Linears (tensor parallel
    splits q/k/v column-wise and o row-wise by heads; r_proj, u, v split by heads too).

    Scores are laid out heads first, [H, B, Q, S]: the position term of a head is then one
    tall matmul over all B*Q queries against its S distances (near the machine's matmul peak,
    and its backward needs no sum over the batch) instead of B small ones.
    """

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

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, H*dh] -> [H, B, L, dh] (a copy)
        B, L = x.shape[:2]
        return x.view(B, L, self.num_heads, self.head_dim).permute(2, 0, 1, 3).contiguous()

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
        S, H, dh = context.size(1), self.num_heads, self.head_dim
        q, k, v, r = self._project(query_in, context, pos_emb)
        if query_pos is not None:
            blocks = [self._attend_at(q, k, v, r, query_pos)]
        else:
            # Causal blocks: query block [i0, i1) sees only the first M + i1 keys, and its
            # queries are the last positions of that shorter context, so each block is the
            # same problem on a prefix of k, v and the last M + i1 distances of r. Two blocks
            # skip a quarter of the score matrix (its masked corner) at M = 0.
            M, n_blocks = S - Q, max(1, round(Q / QUERY_BLOCK))
            bounds = [Q * b // n_blocks for b in range(n_blocks + 1)]
            blocks = [self._attend_last(q[:, :, i0:i1], k[:, :, :M + i1], v[:, :, :M + i1], r[..., S - M - i1:])
                      for i0, i1 in zip(bounds, bounds[1:])]
        # [H, B, Q_b, dh] blocks -> [B, Q, H*dh]; H * dh, not d: under tensor parallel this
        # rank holds only H / tp of the heads
        out = torch.cat([o.permute(1, 2, 0, 3) for o in blocks], dim=1)
        return self.o_proj(out.reshape(B, Q, H * dh))

    def _project(self, query_in: torch.Tensor, context: torch.Tensor, pos_emb: torch.Tensor):
        """q [H, B, Q, dh]; k, v [H, B, S, dh]; r [H, dh, S] (distances S-1..0, scaled by 1/sqrt(dh))."""
        S, H, dh = context.size(1), self.num_heads, self.head_dim
        q = self._heads(self.q_proj(query_in))
        k, v = self._heads(self.k_proj(context)), self._heads(self.v_proj(context))
        r = self.r_proj(pos_emb).view(S, H, dh).permute(1, 2, 0) / math.sqrt(dh)
        return q, k, v, r

    def scores(self, query_in: torch.Tensor, context: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        """The pre-softmax scores forward() uses, [H, B, Q, S], future keys at -inf.

        The same code path as training (rel_shift view, content term on the causal mask),
        as one query block: for inspection (`score_terms` splits it into its four terms).
        """
        q, k, _, r = self._project(query_in, context, pos_emb)
        H, B, Q, _ = q.shape
        S = k.size(2)
        scores = self._scores(q, k, self._position_scores_last(q, r), causal_bias(Q, S, q.device, q.dtype))
        return scores.view(H, B, Q, S)

    def _position_scores_last(self, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """(q + v) . r shifted to (query, key), queries the last Q of S positions: [H*B, Q, S]."""
        H, B, Q, dh = q.shape
        S = r.size(-1)
        # a zero column in front of the S distances: the matmul writes the padded
        # [H, B*Q, S+1] layout and the relative shift is a view (shift_padded)
        q_pos = (q + self.pos_bias_v[:, None, None]).reshape(H, B * Q, dh)
        return shift_padded(torch.bmm(q_pos, F.pad(r, (1, 0))).view(H * B, Q, S + 1))

    def _attend_last(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Queries q [H, B, Q, dh] that are the last Q of the S keys k, v [H, B, S, dh]."""
        Q, S = q.size(2), k.size(2)
        return self._weigh(q, k, v, self._position_scores_last(q, r), causal_bias(Q, S, q.device, q.dtype))

    def _attend_at(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r: torch.Tensor,
                   query_pos: torch.Tensor) -> torch.Tensor:
        """Queries at context positions query_pos [B, Q]: the same index map as rel_shift."""
        H, B, Q, dh = q.shape
        S = k.size(2)
        by_distance = torch.bmm((q + self.pos_bias_v[:, None, None]).reshape(H, B * Q, dh), r).view(H, B, Q, S)
        keys = torch.arange(S, device=q.device)
        column = (S - 1 - query_pos[:, :, None] + keys).clamp(0, S - 1)  # [B, Q, S]
        pos_scores = by_distance.gather(-1, column.expand(H, -1, -1, -1)).view(H * B, Q, S)
        hidden = (keys > query_pos[:, :, None]).expand(H, -1, -1, -1).reshape(H * B, Q, S)
        mask = torch.zeros(hidden.shape, device=q.device, dtype=q.dtype).masked_fill_(hidden, float("-inf"))
        return self._weigh(q, k, v, pos_scores, mask)

    def _weigh(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos_scores: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
        """Softmax of content + position scores, applied to the values: [H, B, Q, dh]."""
        H, B, Q, dh = q.shape
        S = k.size(2)
        probs = self._scores(q, k, pos_scores, mask).softmax(dim=-1)
        if self.training and self.dropout > 0:
            probs = F.dropout(probs, self.dropout)
        return torch.bmm(probs, v.reshape(H * B, S, dh)).view(H, B, Q, dh)

    def _scores(self, q: torch.Tensor, k: torch.Tensor, pos_scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(q + u) . k / sqrt(dh) + position scores + mask: [H*B, Q, S]."""
        H, B, Q, dh = q.shape
        S = k.size(2)
        # the content term written on top of the mask (baddbmm's input: no pass of its own),
        # then the position term added in place from its view: no copy of either [H*B, Q, S]
        scores = torch.baddbmm(mask, (q + self.pos_bias_u[:, None, None]).reshape(H * B, Q, dh),
                               k.reshape(H * B, S, dh).transpose(1, 2), alpha=1.0 / math.sqrt(dh))
        return scores.add_(pos_scores)



@dataclass
class ScoreTerms:
    """Transformer-XL's relative score split into its four terms (Dai et al. 2019, section 3.3),
    each [H, B, Q, S] and scaled by 1/sqrt(dh) as the model scales them; 0 at future keys.

    (a) content       q_i . k_j           what query i asks of key j's content
    (b) position      q_i . W_r R_{i+M-j}  how query i weighs the distance to j
    (c) content bias  u . k_j             a key's content, whoever asks (global)
    (d) position bias v . W_r R_{i+M-j}    a distance, whoever asks (global)
    """

    content: torch.Tensor
    position: torch.Tensor
    content_bias: torch.Tensor
    position_bias: torch.Tensor
    visible: torch.Tensor  # [Q, S] bool: key j at or before query i

    def named(self) -> dict[str, torch.Tensor]:
        return {"content (a)": self.content, "position (b)": self.position,
                "content bias (c)": self.content_bias, "position bias (d)": self.position_bias}

    def total(self) -> torch.Tensor:
        """a + b + c + d at visible pairs, -inf at future keys: what the softmax should see."""
        summed = self.content + self.position + self.content_bias + self.position_bias
        return summed.masked_fill(~self.visible, float("-inf"))


def score_terms(attn: RelativeAttention, query_in: torch.Tensor, context: torch.Tensor,
                pos_emb: torch.Tensor) -> ScoreTerms:
    """The four terms of ``attn``'s score for queries that are the last Q of the S context positions.

    Computed by distance with an explicit index (no rel_shift), so that the sum checks the
    model's shifted score (`RelativeAttention.scores`). Memory: an [H, Q, S, dh] gather, for
    inspecting small models.
    """
    q, k, _, r = attn._project(query_in, context, pos_emb)  # r [H, dh, S], column c = distance S-1-c
    Q, S, dh = q.size(2), k.size(2), q.size(3)
    queries = torch.arange(Q, device=q.device)[:, None] + (S - Q)  # context position of query i
    distance = queries - torch.arange(S, device=q.device)[None, :]  # [Q, S]
    visible = distance >= 0
    column = (S - 1 - distance).clamp(0, S - 1)
    r_ij = r.permute(0, 2, 1)[:, column]  # [H, Q, S, dh]: W_r R_{i+M-j} / sqrt(dh)
    zero = ~visible
    scale = 1.0 / math.sqrt(dh)
    content = torch.einsum("hbqd,hbsd->hbqs", q, k) * scale
    content_bias = torch.einsum("hd,hbsd->hbs", attn.pos_bias_u, k)[:, :, None, :].expand_as(content) * scale
    position = torch.einsum("hbqd,hqsd->hbqs", q, r_ij)
    position_bias = torch.einsum("hd,hqsd->hqs", attn.pos_bias_v, r_ij)[:, None].expand_as(content)
    return ScoreTerms(*(t.masked_fill(zero, 0.0) for t in (content, position, content_bias, position_bias)),
                      visible=visible)


def attend_with_scores(attn: RelativeAttention, scores: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """``attn``'s output [B, Q, d] from given pre-softmax scores [H, B, Q, S] (eval: no dropout)."""
    H, B, Q, S = scores.shape
    v = attn._heads(attn.v_proj(context))  # [H, B, S, dh]
    out = scores.softmax(dim=-1) @ v  # [H, B, Q, dh]
    return attn.o_proj(out.permute(1, 2, 0, 3).reshape(B, Q, H * attn.head_dim))
