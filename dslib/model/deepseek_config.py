"""Configuration of the DeepSeek-style model (chapter 12): pydantic models and the loader.

One config describes both sides of the chapter's head-to-head: the DeepSeek-style model
(attention.kind=mla, ffn=moe, mtp.depth>=1) and the dense GPT baseline (attention.kind=mha,
ffn=dense, mtp.depth=0). Sections: `attention` (MLA or MHA/GQA), `moe` (DeepSeekMoE and its
router), `mtp` (multi-token prediction). A bad value is a ValidationError naming the field
(`moe.top_k`, `attention.kv_lora_rank`, ...), raised before any tensor exists.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dslib.configs import config_path, deep_merge
from dslib.model.config import CONFIG_DIR


def _field_error(field: str, message: str) -> ValueError:
    return ValueError(f"{field}: {message}")


class AttentionConfig(BaseModel):
    """MLA (DeepSeek-V2 section 2.1) or standard multi-head / grouped-query attention, with RoPE."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["mla", "mha"] = "mla"
    num_heads: int = Field(gt=0)
    # MLA: the query goes through a q_lora_rank bottleneck (0: a full-rank query projection,
    # as in DeepSeek-V2-Lite); keys and values share one kv_lora_rank latent, the only thing
    # cached besides one rotary key of qk_rope_head_dim shared by all heads.
    q_lora_rank: int = Field(0, ge=0)
    kv_lora_rank: int = Field(64, gt=0)
    qk_nope_head_dim: int = Field(16, gt=0)
    qk_rope_head_dim: int = Field(8, gt=0)
    v_head_dim: int = Field(16, gt=0)
    # MHA/GQA: head_dim per head, num_kv_heads key/value heads (None: one per query head)
    head_dim: int = Field(16, gt=0)
    num_kv_heads: int | None = Field(None, gt=0)
    rope_theta: float = Field(10000.0, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> "AttentionConfig":
        if self.qk_rope_head_dim % 2:
            raise _field_error("qk_rope_head_dim", f"{self.qk_rope_head_dim} must be even (rotary pairs)")
        if self.head_dim % 2:
            raise _field_error("head_dim", f"{self.head_dim} must be even (rotary pairs)")
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise _field_error("num_kv_heads", f"{self.num_kv_heads} does not divide num_heads={self.num_heads}")
        return self

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads


class MoEConfig(BaseModel):
    """DeepSeekMoE: shared experts + fine-grained routed SwiGLU experts, and the router.

    Router variants are combinations of the knobs:
      no balancing       score_func any, aux_loss_alpha = seq_aux_loss_alpha = bias_update_speed = 0
      auxiliary loss     score_func softmax, aux_loss_alpha > 0 (DeepSeekMoE / GShard style)
      aux-loss-free      score_func sigmoid, bias_update_speed (gamma) > 0 (arXiv 2408.15664)
      DeepSeek-V3        sigmoid, gamma 0.001, seq_aux_loss_alpha 0.0001, n_group 8 / topk_group 4
    """

    model_config = ConfigDict(extra="forbid")

    n_routed_experts: int = Field(8, gt=0)
    n_shared_experts: int = Field(1, ge=0)
    top_k: int = Field(2, gt=0)
    moe_intermediate_size: int = Field(64, gt=0, description="hidden width of ONE expert")
    score_func: Literal["softmax", "sigmoid"] = "sigmoid"
    norm_topk_prob: bool = True  # divide the selected affinities by their sum (V3)
    routed_scaling_factor: float = Field(1.0, gt=0.0)
    # group-limited routing: choose topk_group of n_group expert groups, then top_k inside them
    n_group: int = Field(1, gt=0)
    topk_group: int = Field(1, gt=0)
    aux_loss_alpha: float = Field(0.0, ge=0.0, description="batch-wise expert balance loss weight")
    seq_aux_loss_alpha: float = Field(0.0, ge=0.0, description="sequence-wise balance loss weight (V3)")
    bias_update_speed: float = Field(0.0, ge=0.0, description="gamma of auxiliary-loss-free balancing")
    # dispatch is dropless; the capacity factor only measures what a capacity limit would drop
    capacity_factor: float = Field(1.25, gt=0.0)
    # how routed experts are computed on the tokens sorted by expert (benchmarks/bench_moe.py)
    dispatch: Literal["grouped_mm", "loop"] = "grouped_mm"

    @model_validator(mode="after")
    def _check(self) -> "MoEConfig":
        if self.top_k > self.n_routed_experts:
            raise _field_error("top_k", f"{self.top_k} > n_routed_experts={self.n_routed_experts}")
        if self.n_routed_experts % self.n_group:
            raise _field_error("n_group", f"{self.n_group} does not divide n_routed_experts={self.n_routed_experts}")
        if self.topk_group > self.n_group:
            raise _field_error("topk_group", f"{self.topk_group} > n_group={self.n_group}")
        if self.topk_group * (self.n_routed_experts // self.n_group) < self.top_k:
            raise _field_error("topk_group", f"{self.topk_group} groups of {self.n_routed_experts // self.n_group} "
                               f"experts hold fewer than top_k={self.top_k}")
        return self


class MTPConfig(BaseModel):
    """Multi-token prediction (DeepSeek-V3 section 2.2): `depth` sequential modules, loss weight lambda."""

    model_config = ConfigDict(extra="forbid")

    depth: int = Field(1, ge=0)
    loss_weight: float = Field(0.3, ge=0.0)


class DeepSeekConfig(BaseModel):
    """A decoder-only DeepSeek-V3-style model, or (mha + dense, no MTP) the dense GPT baseline."""

    model_config = ConfigDict(extra="forbid")

    name: str = "custom"
    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    seq_len: int = Field(gt=0, description="tokens per training sequence (and the RoPE table)")
    intermediate_size: int = Field(gt=0, description="hidden width of the dense SwiGLU layers")
    ffn: Literal["moe", "dense"] = "moe"
    first_k_dense: int = Field(1, ge=0, description="the first layers keep a dense SwiGLU (V3: 3)")
    rms_norm_eps: float = Field(1e-6, gt=0.0)
    tie_embeddings: bool = False
    init_std: float = Field(0.02, gt=0.0)
    attention: AttentionConfig
    moe: MoEConfig = MoEConfig()
    mtp: MTPConfig = MTPConfig()

    @model_validator(mode="after")
    def _check(self) -> "DeepSeekConfig":
        if self.first_k_dense > self.num_layers:
            raise _field_error("first_k_dense", f"{self.first_k_dense} > num_layers={self.num_layers}")
        return self

    def is_moe_layer(self, layer: int) -> bool:
        return self.ffn == "moe" and layer >= self.first_k_dense

    @property
    def num_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.num_layers))


def load_deepseek_config(name_or_path: str | Path, **overrides: Any) -> DeepSeekConfig:
    """Load configs/model/<name>.yaml (e.g. deepseek_tiny), apply overrides, validate.

    Sections merge key by key: `load_deepseek_config("deepseek_tiny", moe={"top_k": 1})`.
    """
    path = config_path(name_or_path, CONFIG_DIR, ".yaml", "model")
    raw = yaml.safe_load(path.read_text()) or {}
    raw.setdefault("name", path.stem)
    return DeepSeekConfig(**deep_merge(raw, overrides))
