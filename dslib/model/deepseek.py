"""A DeepSeek-V3-style language model at toy scale (chapter 12), and the dense GPT baseline.

  idx -> Embedding -> L x DeepSeekBlock -> RMSNorm -> Head -> logits        (+ MTP modules in training)
  DeepSeekBlock: x + Attn(RMSNorm(x)); then x + FFN(RMSNorm(x)), pre-norm
  Attn:  MLA (mla.py) or, for the baseline, MHA/GQA with RoPE
  FFN:   a dense SwiGLU in the first `first_k_dense` layers (V3: 3), DeepSeekMoE (moe.py) after
The baseline is the same class with attention.kind=mha, ffn=dense, mtp.depth=0
(`dense_equivalent` in deepseek_flops.py sizes it to the same activated parameters).

Interface of the single-process trainer: `model(idx, mems=None, targets=None) -> ModelOutput`
with `aux_loss` = the MoE balance losses (already weighted by their alphas) + lambda * the MTP
loss, `stats` 0-dim detached tensors (per-layer expert load shares and MaxVio, the share a
capacity limit would drop, the MTP losses), and `mems` [] (no recurrence: `mems` is ignored).

Auxiliary-loss-free balancing needs one call per optimizer step, after the update:
    model.update_router_biases()
The book's one training step (dslib.train.step.train_step) makes it. It moves each router's
bias by gamma * sign(mean load - load) over the loads counted in the training forwards since
the previous call (nothing happens while bias_update_speed is 0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dslib.model.deepseek_config import DeepSeekConfig
from dslib.model.mla import KVCache, MultiHeadLatentAttention, RotaryAttention
from dslib.model.moe import DeepSeekMoE, RoutedExperts, Router, SwiGLU, load_stats, update_router_biases
from dslib.model.mtp import MTPModule, mtp_forward
from dslib.model.transformer_xl import ModelOutput


class DeepSeekBlock(nn.Module):
    def __init__(self, config: DeepSeekConfig, moe: bool):
        super().__init__()
        d, eps = config.hidden_size, config.rms_norm_eps
        self.attn_norm = nn.RMSNorm(d, eps=eps)
        self.attn = (MultiHeadLatentAttention(d, config.attention, eps) if config.attention.kind == "mla"
                     else RotaryAttention(d, config.attention))
        self.ffn_norm = nn.RMSNorm(d, eps=eps)
        self.ffn = DeepSeekMoE(d, config.moe) if moe else SwiGLU(d, config.intermediate_size)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x [B, T, d] -> (x [B, T, d], weighted balance loss, expert load [E] or None if dense)."""
        x = x + self.attn(self.attn_norm(x), positions, cache)
        if isinstance(self.ffn, DeepSeekMoE):
            y, aux, load = self.ffn(self.ffn_norm(x))
            return x + y, aux, load
        return x + self.ffn(self.ffn_norm(x)), x.new_zeros((), dtype=torch.float32), None


class DeepSeekModel(nn.Module):
    def __init__(self, config: DeepSeekConfig):
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.embed = nn.Embedding(config.vocab_size, d)
        self.blocks = nn.ModuleList(DeepSeekBlock(config, config.is_moe_layer(i)) for i in range(config.num_layers))
        self.norm = nn.RMSNorm(d, eps=config.rms_norm_eps)
        self.head = nn.Linear(d, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
        # V3's MTP block is of the kind of the main model's last layers (MoE when ffn=moe)
        self.mtp = nn.ModuleList(
            MTPModule(d, DeepSeekBlock(config, moe=config.ffn == "moe"), config.rms_norm_eps)
            for _ in range(config.mtp.depth))
        self._init_weights()

    def _init_weights(self) -> None:
        std = self.config.init_std
        residual_std = std / (2 * self.config.num_layers) ** 0.5  # GPT-2: residual outputs start small
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, (Router, RoutedExperts)):
                for p in module.parameters(recurse=False):
                    nn.init.normal_(p, std=std)
        for name, p in self.named_parameters():
            if name.endswith(("attn.o_proj.weight", "ffn.down.weight", "ffn.experts.down", "shared.down.weight")):
                nn.init.normal_(p, std=residual_std)

    # ---- the main model -----------------------------------------------------------------
    def trunk(self, idx: torch.Tensor, caches: list[KVCache] | None = None
              ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor | None]]:
        """idx [B, T] (after the cached tokens, if any) -> (last hidden state before the final
        norm [B, T, d], per-layer balance losses, per-layer expert loads)."""
        start = caches[0].length if caches else 0
        positions = torch.arange(start, start + idx.size(1), device=idx.device)
        x, aux, loads = self.embed(idx), [], []
        for i, block in enumerate(self.blocks):
            x, block_aux, load = block(x, positions, caches[i] if caches else None)
            aux.append(block_aux)
            loads.append(load)
        return x, aux, loads

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(hidden))

    def forward(self, idx: torch.Tensor, mems: list[torch.Tensor] | None = None,
                targets: torch.Tensor | None = None) -> ModelOutput:
        """idx, targets: LongTensor [B, T]. The trainer minimises `out.loss + out.aux_loss`."""
        hidden, aux, loads = self.trunk(idx)
        logits = self.logits(hidden)
        loss, depths = None, []
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
            depths = mtp_forward(self.mtp, hidden, targets, self.embed, self.head)
        aux_loss = torch.stack(aux + [d.aux_loss for d in depths]).sum()  # balance losses, weighted
        stats = self._moe_stats(loads, [d.load for d in depths])
        if self.config.ffn == "moe":
            stats["moe_aux_loss"] = aux_loss.detach()
        if depths:
            mtp_losses = [F.cross_entropy(d.logits.flatten(0, 1), d.targets.flatten()) for d in depths]
            mtp_loss = torch.stack(mtp_losses).mean()
            aux_loss = aux_loss + self.config.mtp.loss_weight * mtp_loss
            stats["mtp_loss"] = mtp_loss.detach()
            stats.update({f"mtp_loss_depth{k}": l.detach() for k, l in enumerate(mtp_losses, start=1)})
        return ModelOutput(logits, loss, [], aux_loss, stats)

    def _moe_stats(self, loads: list, mtp_loads: list) -> dict[str, torch.Tensor]:
        """MaxVio and load shares per MoE layer (`layer{i}`, `mtp{k}`); MaxVio and dropped share
        averaged over the main model's MoE layers."""
        stats, main = {}, []
        labelled = [(f"layer{i}", l) for i, l in enumerate(loads)] + \
                   [(f"mtp{k}", l) for k, l in enumerate(mtp_loads, start=1)]
        for label, load in labelled:
            if load is None:
                continue
            layer = load_stats(load, self.config.moe.capacity_factor)
            stats[f"moe_maxvio_{label}"] = layer["maxvio"]
            stats.update({f"moe_load_{label}_e{e}": s for e, s in enumerate(layer["share"])})
            if label.startswith("layer"):
                main.append(layer)
        if main:
            stats["moe_maxvio"] = torch.stack([m["maxvio"] for m in main]).mean()
            stats["moe_dropped_at_capacity"] = torch.stack([m["dropped_at_capacity"] for m in main]).mean()
        return stats

    # ---- balancing and inference ---------------------------------------------------------
    def update_router_biases(self) -> None:
        """Call after every optimizer step: the aux-loss-free bias update of every router."""
        update_router_biases(self)

    def set_absorb(self, enabled: bool) -> None:
        """MLA inference path: True attends to the cached latent directly (absorbed)."""
        for module in self.modules():
            if isinstance(module, MultiHeadLatentAttention):
                module.absorb = enabled

    def new_cache(self, batch_size: int, max_len: int) -> list[KVCache]:
        """Empty caches for the main blocks, then one per MTP module."""
        w = self.embed.weight
        blocks = list(self.blocks) + [m.block for m in self.mtp]
        return [KVCache(batch_size, max_len, b.attn.cache_width, w.dtype, w.device) for b in blocks]
