"""Decoder-only Transformer-XL language model (Dai et al., 2019), pre-norm.

Segment-level recurrence: each layer attends over [memory ; segment], where the
memory holds that layer's *inputs* from previous segments (detached, at most
`memory_length` positions). Positions are relative (see attention.py), so cached
states stay valid as the window slides.

Structure for later chapters: `embed` -> `blocks[i]` -> `norm` + `head` (tied to
`embed`); each block's linears are separate modules (attn.q_proj/k_proj/v_proj/
o_proj/r_proj, mlp.fc_in/fc_out) so tensor parallel can split them by heads/columns.

Gated blocks (config.gate.enabled) and what happens to skipped rows:
  training: the block runs on every row; out = keep * block(x) + (1 - keep) * x with
            a hard 0/1 keep that carries a straight-through gradient (gate.py);
  eval:     rows (sequences, or tokens) with keep = 0 are not computed: the kept rows
            are index-selected, run, and scattered back; skipped rows pass x through.
            Token granularity still projects keys/values of every position (later
            kept tokens attend to skipped ones, as in training); queries, attention,
            o_proj and the MLP run for kept tokens only.
  memory:   a layer caches its input, whether it ran or not. For a skipped row, the
            next layer's input equals this layer's input, so both cache the same
            states: nothing is invented for positions the layer never computed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dslib.model.attention import RelativeAttention, sinusoidal_embedding
from dslib.model.config import ModelConfig
from dslib.model.gate import DynamicGate


@dataclass
class ModelOutput:
    logits: torch.Tensor  # [B, T, vocab]
    loss: torch.Tensor | None  # mean cross-entropy, None without targets
    mems: list[torch.Tensor]  # per layer [B, <=memory_length, d], detached
    aux_loss: torch.Tensor  # gate compute penalty (0-dim; 0.0 without gate)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # 0-dim, detached


class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.fc_in = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.fc_out = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(x)))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.hidden_size
        self.ln_1 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.attn = RelativeAttention(d, config.num_attention_heads, config.dropout)
        self.ln_2 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.mlp = MLP(d, config.intermediate_size)
        self.drop = nn.Dropout(config.dropout)
        self.gate = DynamicGate(d, config.gate) if config.gate.enabled else None
        # eval only: False computes every row and masks (the training arithmetic)
        self.skip_compute = True

    def compute(self, x, mem, pos_emb, query_pos=None) -> torch.Tensor:
        """Block output. x [B, T, d], mem [B, M, d]; query_pos [B, Q] (segment
        positions) restricts the output to those tokens: [B, Q, d]."""
        M = mem.size(1)
        context = self.ln_1(torch.cat([mem, x], dim=1))
        queries, x_q = context[:, M:], x
        if query_pos is not None:
            index = query_pos[..., None].expand(-1, -1, x.size(-1))
            queries, x_q = queries.gather(1, index), x.gather(1, index)
            query_pos = query_pos + M
        h = x_q + self.drop(self.attn(queries, context, pos_emb, query_pos))
        return h + self.drop(self.mlp(self.ln_2(h)))

    def forward(self, x, mem, pos_emb):
        """Returns (output, expected keep rate or None, skipped fraction or None)."""
        if self.gate is None:
            return self.compute(x, mem, pos_emb), None, None
        logits = self.gate(x, mem)
        keep = self.gate.decide(logits)
        expected_keep, skipped = torch.sigmoid(logits).mean(), 1 - keep.detach().mean()
        if self.training or not self.skip_compute:
            k = keep[:, None, None] if keep.dim() == 1 else keep[..., None]
            return self.compute(x, mem, pos_emb) * k + x * (1 - k), expected_keep, skipped
        return self._compute_kept(x, mem, pos_emb, keep.bool()), expected_keep, skipped

    def _compute_kept(self, x, mem, pos_emb, keep) -> torch.Tensor:
        if bool(keep.all()):
            return self.compute(x, mem, pos_emb)
        out = x.clone()
        if keep.dim() == 1:  # per sequence: run the kept rows only
            rows = keep.nonzero().squeeze(1)
            if rows.numel():
                out[rows] = self.compute(x[rows], mem[rows], pos_emb)
            return out
        counts = keep.sum(dim=1)
        width = int(counts.max())
        if width == 0:
            return out
        # kept positions first (in order); shorter rows pad with skipped positions,
        # whose outputs are computed and dropped
        pos = torch.sort(keep.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :width]
        y = self.compute(x, mem, pos_emb, pos)
        valid = torch.arange(width, device=x.device) < counts[:, None]
        rows = torch.arange(x.size(0), device=x.device)[:, None].expand_as(pos)
        out[rows[valid], pos[valid]] = y[valid]
        return out


class TransformerXL(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        # may be changed after training (evaluate with a longer or shorter memory)
        self.memory_length = config.memory_length
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.head.weight = self.embed.weight  # weight tying
        self.apply(self.init_weights)
        for block in self.blocks:
            self.init_residual(block, config.num_layers)

    @staticmethod
    def init_residual(block: Block, num_layers: int) -> None:
        """Residual-branch outputs start smaller (GPT-2's 1/sqrt(2 * layers)); the gate starts keeping."""
        residual_std = 0.02 / (2 * num_layers) ** 0.5
        nn.init.normal_(block.attn.o_proj.weight, std=residual_std)
        nn.init.normal_(block.mlp.fc_out.weight, std=residual_std)
        if block.gate is not None:
            block.gate.reset_keep_bias()

    @staticmethod
    def init_weights(module: nn.Module) -> None:
        """GPT-2 initialisation of one module (normal 0.02, zero biases): also for stages and baselines."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def init_mems(self, batch_size: int) -> list[torch.Tensor]:
        """Empty memories (length 0) for a fresh stream of batch_size sequences."""
        w = self.embed.weight
        return [w.new_zeros(batch_size, 0, w.size(1)) for _ in self.blocks]

    def set_skip_compute(self, enabled: bool) -> None:
        """Eval-time gating: True skips rejected rows, False computes and masks them."""
        for block in self.blocks:
            block.skip_compute = enabled

    def _update_mem(self, mem: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.memory_length == 0:
            return x[:, :0].detach()
        return torch.cat([mem, x], dim=1)[:, -self.memory_length:].detach()

    def forward(
        self,
        idx: torch.Tensor,
        mems: list[torch.Tensor] | None = None,
        targets: torch.Tensor | None = None,
    ) -> ModelOutput:
        """idx, targets: LongTensor [B, T]; mems: the previous call's `out.mems`.

        The trainer minimises `out.loss + out.aux_loss`.
        """
        if mems is None or self.memory_length == 0:
            mems = self.init_mems(idx.size(0))
        x = self.drop(self.embed(idx))
        S = mems[0].size(1) + idx.size(1)
        pos_emb = sinusoidal_embedding(S, x.size(-1), device=x.device, dtype=x.dtype)
        new_mems, expected_keep, skipped = [], [], []
        for block, mem in zip(self.blocks, mems):
            new_mems.append(self._update_mem(mem, x))
            x, keep_rate, skip_fraction = block(x, mem, pos_emb)
            if keep_rate is not None:
                expected_keep.append(keep_rate)
                skipped.append(skip_fraction)
        logits = self.head(self.norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        aux_loss, stats = x.new_zeros(()), {}
        if expected_keep:
            aux_loss = self.config.gate.penalty * torch.stack(expected_keep).mean()
            stats = {
                "gate_skip_fraction": torch.stack(skipped).mean(),
                "gate_expected_keep": torch.stack(expected_keep).mean().detach(),
            }
            stats.update({f"gate_skip_layer{i}": s for i, s in enumerate(skipped)})
        return ModelOutput(logits, loss, new_mems, aux_loss, stats)
