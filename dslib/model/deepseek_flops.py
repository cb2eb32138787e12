"""Parameter and FLOP counts of DeepSeekModel(config), as plain functions of its config.

Conventions, checked against the papers' own totals (tests/test_deepseek_model.py):
  total      every trainable parameter of the main model (the routers' balancing biases
             are buffers, not counted); the MTP modules apart (`mtp`)
  activated  what one token multiplies with: all attention and dense weights, the shared
             experts, top_k routed experts and the router of each MoE layer, the norms and the
             output head; not the input embedding (a row lookup). This convention reproduces
             DeepSeek-V2's 21B (20.9B), V2-Lite's 2.4B (2.45B) and V3's 37B (36.6B).
DeepSeek-V3 (configs/model/deepseek_v3.yaml): total 671.0B, activated 36.6B; its MTP module
adds 11.6B of its own (it shares embedding and head); the published 685B counts the MTP
module as stored in the checkpoint, with its own copies of embedding and head (13.5B).
"""
from __future__ import annotations

from dslib.model.deepseek_config import DeepSeekConfig


def attention_parameters(config: DeepSeekConfig) -> int:
    """One attention layer's weights (MLA: with its two latent RMSNorms)."""
    a, d = config.attention, config.hidden_size
    H = a.num_heads
    if a.kind == "mha":
        return 2 * d * H * a.head_dim + 2 * d * a.kv_heads * a.head_dim
    q_width = H * (a.qk_nope_head_dim + a.qk_rope_head_dim)
    query = d * a.q_lora_rank + a.q_lora_rank + a.q_lora_rank * q_width if a.q_lora_rank else d * q_width
    kv = d * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank + \
        a.kv_lora_rank * H * (a.qk_nope_head_dim + a.v_head_dim)
    return query + kv + H * a.v_head_dim * d


def ffn_parameters(config: DeepSeekConfig, moe: bool) -> tuple[int, int]:
    """(total, activated) of one FFN: SwiGLU = 3 d ff; MoE adds the router's E d."""
    d, m = config.hidden_size, config.moe
    if not moe:
        return 3 * d * config.intermediate_size, 3 * d * config.intermediate_size
    expert = 3 * d * m.moe_intermediate_size
    shared = m.n_shared_experts * expert + m.n_routed_experts * d
    return shared + m.n_routed_experts * expert, shared + m.top_k * expert


def _block(config: DeepSeekConfig, moe: bool) -> tuple[int, int]:
    attn, norms = attention_parameters(config), 2 * config.hidden_size
    total, activated = ffn_parameters(config, moe)
    return attn + norms + total, attn + norms + activated


def count_deepseek_parameters(config: DeepSeekConfig) -> dict[str, int]:
    """total / activated of the main model, and mtp_total / mtp_activated of the MTP modules
    (2 RMSNorms, the 2d -> d projection, one block, the final RMSNorm each; embedding and head
    shared, so not counted again). See the module docstring for the conventions."""
    d, V = config.hidden_size, config.vocab_size
    blocks = [_block(config, config.is_moe_layer(i)) for i in range(config.num_layers)]
    head = 0 if config.tie_embeddings else V * d
    total = sum(t for t, _ in blocks) + V * d + head + d
    activated = sum(a for _, a in blocks) + V * d + d  # the head (tied or not), no embedding lookup
    mtp_total, mtp_activated = _block(config, config.ffn == "moe")
    extra = 2 * d + 2 * d * d + d
    D = config.mtp.depth
    return {"total": total, "activated": activated, "mtp_total": D * (mtp_total + extra),
            "mtp_activated": D * (mtp_activated + extra), "embedding": V * d}


def norm_parameters(config: DeepSeekConfig) -> int:
    """One block's RMSNorm weights: two per block, plus MLA's query and latent norms."""
    a = config.attention
    return 2 * config.hidden_size + (a.q_lora_rank + a.kv_lora_rank if a.kind == "mla" else 0)


def deepseek_flops_per_token(config: DeepSeekConfig, include_mtp: bool = True) -> dict[str, float]:
    """Training FLOPs per token (forward + backward = 3 x forward), by part.

    Named formula: Kaplan/PaLM's 6N + attention (Chowdhery et al. 2022, appendix B), with N the
    activated matmul weights (`activated` less the norms) and MLA's own head widths:
      dense      = 6 * N                            main model, head included
      attention  = 6 * L * T * H * (d_qk + d_v)     scores over d_qk = qk_nope + qk_rope (MHA:
                                                    head_dim), values over d_v; T = seq_len
      mtp_dense, mtp_attention                      the same for MTP depth k, which runs on
                                                    T - k positions (its factor (T - k) / T) and
                                                    runs the shared head once more
    Scores are counted over the full T x T square (the masked half included), the convention
    of dslib.model.flops; MHA with H x head_dim = d gives the familiar 12 * L * T * d. The MLA
    up-projections count as computed in training (the naive path); norms, softmax and routing
    arithmetic are not counted (torch's FlopCounterMode agrees: tests/test_deepseek_model.py).
    """
    a, d, T = config.attention, config.hidden_size, config.seq_len
    counts = count_deepseek_parameters(config)
    norms = norm_parameters(config)
    qk, v = ((a.head_dim, a.head_dim) if a.kind == "mha"
             else (a.qk_nope_head_dim + a.qk_rope_head_dim, a.v_head_dim))
    per_layer_attention = 6.0 * T * a.num_heads * (qk + v)
    flops = {"dense": 6.0 * (counts["activated"] - config.num_layers * norms - d),
             "attention": config.num_layers * per_layer_attention}
    D = config.mtp.depth if include_mtp else 0
    if D:  # counts["mtp_activated"] holds all config.mtp.depth modules
        module = counts["mtp_activated"] / config.mtp.depth - norms - 3 * d + config.vocab_size * d
        share = sum((T - k) / T for k in range(1, min(D, T - 1) + 1))
        flops["mtp_dense"] = 6.0 * module * share
        flops["mtp_attention"] = per_layer_attention * sum(((T - k) / T) ** 2 for k in range(1, min(D, T - 1) + 1))
    return flops


def dense_equivalent(config: DeepSeekConfig, multiple_of: int = 1) -> DeepSeekConfig:
    """The dense GPT baseline of the head-to-head: MHA with head_dim = hidden / heads, SwiGLU in
    every layer, no MTP, and intermediate_size chosen so its activated parameters equal the main
    model's: to within 3 * hidden * layers * multiple_of / 2 (intermediate_size is rounded to a
    multiple of `multiple_of`; CPU matmuls run slower on odd widths, so timings want e.g. 64)."""
    d, L = config.hidden_size, config.num_layers
    heads = config.attention.num_heads
    if d % heads:
        raise ValueError(f"attention.num_heads={heads} does not divide hidden_size={d}: no MHA baseline")
    attention = config.attention.model_copy(update={"kind": "mha", "head_dim": d // heads, "num_kv_heads": None})
    base = config.model_copy(update={"attention": attention, "ffn": "dense", "first_k_dense": 0,
                                     "intermediate_size": 1, "mtp": config.mtp.model_copy(update={"depth": 0}),
                                     "name": f"{config.name}_dense"})
    missing = count_deepseek_parameters(config)["activated"] - count_deepseek_parameters(base)["activated"]
    intermediate = multiple_of * round((1 + missing / (3 * d * L)) / multiple_of)
    if intermediate < 1:
        raise ValueError(f"{config.name}: MHA alone has more activated parameters than the model")
    return DeepSeekConfig(**base.model_copy(update={"intermediate_size": intermediate}).model_dump())
