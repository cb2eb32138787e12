"""Multi-head latent attention (DeepSeek-V2, arXiv 2405.04434, section 2.1) and, for comparison,
standard multi-head / grouped-query attention, both with rotary positions and a KV cache.

MLA, per token x [d] (H heads; nope = non-rotary, rope = rotary dims):
  query   c_q = RMSNorm(W_DQ x) [q_lora_rank];  q = W_UQ c_q -> per head [qk_nope | qk_rope]
  latent  c_kv = RMSNorm(W_DKV x) [kv_lora_rank];  k_rope = RoPE(W_KR x) [qk_rope], ONE for all heads
  keys    k_h = [W_UK,h c_kv | k_rope];  values v_h = W_UV,h c_kv [v_head]
  out     W_O [softmax(q_h . k_h / sqrt(qk_nope + qk_rope)) v_h for h in heads]
The cache holds only [c_kv | k_rope] per token: kv_lora_rank + qk_rope_head_dim elements per
layer (V3: 512 + 64 = 576), against 2 x heads x head_dim for MHA (V3's width: 2 x 128 x 128).

Two ways to attend to a cached latent, equal to float tolerance (`absorb`):
  naive     up-project every cached latent into keys and values each step (W_UK, W_UV times
            S cached tokens), then ordinary attention: the cost grows with S x heads x rank.
  absorbed  q_h . W_UK,h c_kv = (W_UK,h^T q_h) . c_kv: W_UK is folded into the query, so scores
            are taken against the latent directly; likewise the probabilities average the
            latents and W_UV,h is applied once to that average, on the way into W_O. No key or
            value is ever materialised, and one matmul reads the cache for all heads at once.
Training (no cache) uses the naive path: there the up-projection is done once per token anyway.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dslib.model.deepseek_config import AttentionConfig


class KVCache:
    """One layer's cache: a [B, max_len, width] buffer filled along the sequence.

    MLA stores [latent | rotary key] per token (width kv_lora_rank + qk_rope_head_dim); MHA/GQA
    stores [keys | values] (width 2 x kv_heads x head_dim). `truncate` rolls back rejected
    speculative tokens.
    """

    def __init__(self, batch_size: int, max_len: int, width: int, dtype: torch.dtype, device: torch.device):
        self.buffer = torch.zeros(batch_size, max_len, width, dtype=dtype, device=device)
        self.length = 0

    def append(self, entries: torch.Tensor) -> torch.Tensor:
        """Write entries [B, T, width] after the cached ones; returns the filled part [B, S, width]."""
        end = self.length + entries.size(1)
        if end > self.buffer.size(1):
            raise ValueError(f"KV cache full: {end} tokens > max_len={self.buffer.size(1)}")
        self.buffer[:, self.length:end] = entries
        self.length = end
        return self.buffer[:, :end]

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)

    def bytes_per_token(self) -> int:
        """Bytes this layer keeps per cached token (the buffer's width times the element size)."""
        return self.buffer.size(-1) * self.buffer.element_size()


def apply_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate x [..., T, dim] at `positions` [T]: pair (i, i + dim/2) turns by pos * theta^(-2i/dim)."""
    half = x.size(-1) // 2
    freqs = theta ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32)[:, None] * freqs  # [T, dim/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def visible_keys(T: int, S: int, device: torch.device) -> torch.Tensor | None:
    """[T, S] True where query t (at absolute position S - T + t) may see key s; None when all may."""
    if T == 1:
        return None
    return torch.arange(S, device=device)[None, :] <= torch.arange(S - T, S, device=device)[:, None]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, gqa: bool = False) -> torch.Tensor:
    """Causal SDPA of q [B, H, T, e] over k [B, Hk, S, e], v [B, Hk, S, ev] -> [B, H, T, ev]."""
    T, S = q.size(-2), k.size(-2)
    if T == S:
        return F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, scale=scale, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible_keys(T, S, q.device), scale=scale,
                                          enable_gqa=gqa)


class MultiHeadLatentAttention(nn.Module):
    def __init__(self, hidden_size: int, config: AttentionConfig, eps: float = 1e-6):
        super().__init__()
        self.config = config
        H, r = config.num_heads, config.kv_lora_rank
        self.nope, self.rope, self.v_dim = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
        q_width = H * (self.nope + self.rope)
        if config.q_lora_rank:  # low-rank query: down, normalise, up
            self.q_down = nn.Linear(hidden_size, config.q_lora_rank, bias=False)
            self.q_norm = nn.RMSNorm(config.q_lora_rank, eps=eps)
            self.q_up = nn.Linear(config.q_lora_rank, q_width, bias=False)
        else:
            self.q_proj = nn.Linear(hidden_size, q_width, bias=False)
        self.kv_down = nn.Linear(hidden_size, r + self.rope, bias=False)  # [W_DKV; W_KR]: one matmul
        self.kv_norm = nn.RMSNorm(r, eps=eps)
        self.kv_up = nn.Linear(r, H * (self.nope + self.v_dim), bias=False)  # [W_UK,h; W_UV,h] per head
        self.o_proj = nn.Linear(H * self.v_dim, hidden_size, bias=False)
        self.scale = (self.nope + self.rope) ** -0.5
        self.absorb = False  # attend to the latent directly (see the module docstring)

    @property
    def cache_width(self) -> int:
        return self.config.kv_lora_rank + self.rope

    def queries(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, d] -> q_nope [B, H, T, nope], q_rope [B, H, T, rope] (rotated)."""
        B, T, _ = x.shape
        q = self.q_up(self.q_norm(self.q_down(x))) if self.config.q_lora_rank else self.q_proj(x)
        q_nope, q_rope = q.view(B, T, self.config.num_heads, -1).transpose(1, 2).split([self.nope, self.rope], -1)
        return q_nope, apply_rope(q_rope, positions, self.config.rope_theta)

    def compress(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [B, T, d] -> what the cache keeps: [RMSNorm(c_kv) | RoPE(k_rope)] [B, T, r + rope]."""
        latent, k_rope = self.kv_down(x).split([self.config.kv_lora_rank, self.rope], -1)
        return torch.cat([self.kv_norm(latent), apply_rope(k_rope, positions, self.config.rope_theta)], -1)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """x [B, T, d] at `positions` [T] (after the cached tokens) -> [B, T, d]."""
        q_nope, q_rope = self.queries(x, positions)
        kv = self.compress(x, positions)
        if cache is not None:
            kv = cache.append(kv)  # [B, S, r + rope]
        out = self._absorbed(q_nope, q_rope, kv) if self.absorb else self._naive(q_nope, q_rope, kv)
        return self.o_proj(out.transpose(1, 2).flatten(2))  # [B, T, H * v_dim] -> [B, T, d]

    def _naive(self, q_nope, q_rope, kv) -> torch.Tensor:
        B, H, S = kv.size(0), self.config.num_heads, kv.size(1)
        latent, k_rope = kv.split([self.config.kv_lora_rank, self.rope], -1)
        k_nope, v = self.kv_up(latent).view(B, S, H, -1).transpose(1, 2).split([self.nope, self.v_dim], -1)
        q = torch.cat([q_nope, q_rope], -1)  # [B, H, T, nope + rope]
        k = torch.cat([k_nope, k_rope[:, None].expand(B, H, S, self.rope)], -1)  # [B, H, S, nope + rope]
        return attend(q, k, v, self.scale)  # [B, H, T, v_dim]

    def _absorbed(self, q_nope, q_rope, kv) -> torch.Tensor:
        B, H, T, _ = q_nope.shape
        r = self.config.kv_lora_rank
        w_uk, w_uv = self.kv_up.weight.view(H, self.nope + self.v_dim, r).split([self.nope, self.v_dim], 1)
        q_latent = q_nope @ w_uk  # W_UK folded into the query: [B, H, T, nope] @ [H, nope, r]
        q = torch.cat([q_latent, q_rope], -1).flatten(1, 2) * self.scale  # [B, H*T, r + rope]: heads as rows
        scores = (q @ kv.transpose(1, 2)).view(B, H, T, -1)  # one matmul over the cache: [B, H, T, S]
        mask = visible_keys(T, kv.size(1), kv.device)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = scores.float().softmax(-1).to(kv.dtype)
        mixed = (probs.flatten(1, 2) @ kv[..., :r]).view(B, H, T, r)  # averaged latents
        return mixed @ w_uv.transpose(1, 2)  # W_UV applied once: [B, H, T, r] @ [H, r, v_dim]


class RotaryAttention(nn.Module):
    """Standard multi-head attention with RoPE; num_kv_heads < num_heads makes it GQA."""

    def __init__(self, hidden_size: int, config: AttentionConfig):
        super().__init__()
        self.config = config
        H, Hk, hd = config.num_heads, config.kv_heads, config.head_dim
        self.q_proj = nn.Linear(hidden_size, H * hd, bias=False)
        self.k_proj = nn.Linear(hidden_size, Hk * hd, bias=False)
        self.v_proj = nn.Linear(hidden_size, Hk * hd, bias=False)
        self.o_proj = nn.Linear(H * hd, hidden_size, bias=False)

    @property
    def cache_width(self) -> int:
        return 2 * self.config.kv_heads * self.config.head_dim

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        H, Hk, theta = self.config.num_heads, self.config.kv_heads, self.config.rope_theta
        q = apply_rope(self.q_proj(x).view(B, T, H, -1).transpose(1, 2), positions, theta)  # [B, H, T, hd]
        k = apply_rope(self.k_proj(x).view(B, T, Hk, -1).transpose(1, 2), positions, theta)  # [B, Hk, T, hd]
        kv = torch.cat([k.transpose(1, 2).flatten(2), self.v_proj(x)], -1)  # [B, T, 2 * Hk * hd]
        if cache is not None:
            kv = cache.append(kv)
        S = kv.size(1)
        k, v = (t.view(B, S, Hk, -1).transpose(1, 2) for t in kv.chunk(2, -1))  # [B, Hk, S, hd]
        out = attend(q, k, v, self.config.head_dim ** -0.5, gqa=Hk < H)
        return self.o_proj(out.transpose(1, 2).flatten(2))
