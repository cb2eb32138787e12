"""The DeepSeek-V3 training budget: memory per GPU, FLOPs and MFU, MoE all-to-all (chapter 13).

What the V3 report (DeepSeek-AI, arXiv 2412.19437, sections 3.2-3.3) states, and this module takes:
  layout      2,048 H800 GPUs, 8 per node; 16-way pipeline parallel (DualPipe), 64-way expert
              parallel over 8 nodes, ZeRO-1 data parallel, no tensor parallel (sec. 3.2)
  DualPipe    two copies of the parameters, PP + 1 micro-batch chunks of activations per
              device (its Table 2); rank i holds stages i and PP-1-i
  precision   BF16 weights for compute (FP8 per-block casts made per GEMM); FP32 master weights and
              FP32 gradients for batch accumulation; AdamW moments in BF16 (sec. 3.3.3)
  activations inputs of Linear layers cached in FP8 (1x128 tiles, one FP32 scale each); the input
              of the attention output projection in E5M6 (12 bits); SwiGLU's input cached in FP8
              and its output recomputed; RMSNorm and the MLA up-projections recomputed (sec. 3.2.3)
  all-to-all  each token sent to at most 4 nodes, once per node over IB, then forwarded over
              NVLink; dispatch in FP8, combine in BF16; IB 50 GB/s, NVLink 160 GB/s (sec. 3.2.2)
Where the report is silent this module chooses, and says so in the function that chooses:
parameters are split evenly over the stages (V3's 61 layers + MTP do not divide by 16),
the gate's gradient recomputes the expert outputs (``keep_expert_outputs``), routing is uniform
over experts (the balanced load the bias balancing aims at).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from math import comb

from dslib.model.deepseek_config import DeepSeekConfig
from dslib.model.deepseek_flops import (attention_parameters, count_deepseek_parameters, deepseek_flops_per_token,
                                        ffn_parameters)

FP8_TILE = 1 + 4 / 128  # bytes per element of an FP8 tensor with one FP32 scale per 1x128 tile
E5M6 = 12 / 8
GPU_HOURS_TOTAL = 2.788e6  # H800 GPU-hours, pre-training + context extension + post-training (Table 1)
GPU_HOURS_PRETRAINING = 2.664e6
TRAIN_TOKENS = 14.8e12


@dataclass(frozen=True)
class Layout:
    """How the GPUs are split; defaults are V3's published layout (PP16 x EP64, ZeRO-1, no TP)."""

    world: int = 2048
    gpus_per_node: int = 8
    pp: int = 16
    ep: int = 64
    tp: int = 1
    zero_stage: int = 1
    param_copies: int = 2         # DualPipe keeps two; 1F1B, ZB-V, DualPipeV one
    in_flight: int | None = None  # micro-batch chunks alive per device; None: PP + 1 (DualPipe)
    micro_batch_tokens: int = 4096  # one sequence per micro-batch: the report gives no size
    weight_bytes: float = 2.0
    grad_bytes: float = 4.0
    master_bytes: float = 4.0
    moment_bytes: float = 2.0     # each of AdamW's two moments
    fp8_activations: bool = True
    keep_expert_outputs: bool = False

    def __post_init__(self) -> None:
        if self.world % (self.pp * self.tp) or self.world % (self.pp * self.ep):
            raise ValueError(f"world {self.world} does not divide into pp={self.pp} x tp={self.tp} "
                             f"or pp={self.pp} x ep={self.ep}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0-3, got {self.zero_stage}")

    @property
    def dense_dp(self) -> int:
        """Replicas of a non-expert parameter at one pipeline stage."""
        return self.world // (self.pp * self.tp)

    @property
    def expert_dp(self) -> int:
        """Replicas of one routed expert (V3: 2048 / (16 x 64) = 2)."""
        return self.world // (self.pp * self.ep)

    @property
    def chunks_in_flight(self) -> int:
        return self.pp + 1 if self.in_flight is None else self.in_flight


def split_parameters(config: DeepSeekConfig) -> dict[str, int]:
    """Routed-expert parameters (sharded by EP) and the rest (replicated), MTP module included:
    routed = (MoE layers + MTP depth) x n_routed x 3 d f."""
    counts = count_deepseek_parameters(config)
    moe_blocks = config.num_moe_layers + (config.mtp.depth if config.ffn == "moe" else 0)
    routed = moe_blocks * config.moe.n_routed_experts * 3 * config.hidden_size * config.moe.moe_intermediate_size
    return {"routed": routed, "other": counts["total"] + counts["mtp_total"] - routed}


def model_state_bytes(config: DeepSeekConfig, layout: Layout = Layout()) -> dict[str, float]:
    """Bytes per GPU of weights, gradients and optimizer states (master + two moments).

    A GPU holds ``param_copies`` stages of P/pp parameters each: ``other`` / tp and ``routed`` / ep
    of each. A sharded component (ZeRO: optimizer from stage 1, gradients 2, weights 3) is split
    over every replica of a parameter, and DualPipe's second copy is one more replica, so it costs
    P_stage x bytes / dp per GPU whatever the copies (an assumption: the report says only ZeRO-1);
    a replicated one costs copies x P_stage x bytes. ZeRO-3 adds one block's weights gathered
    (the average block: the stage's share x pp / blocks).
    """
    params = split_parameters(config)
    stage = {"other": params["other"] / layout.pp / layout.tp, "routed": params["routed"] / layout.pp / layout.ep}
    dp = {"other": layout.dense_dp, "routed": layout.expert_dp}
    components = {"weights": (layout.weight_bytes, 3), "gradients": (layout.grad_bytes, 2),
                  "optimizer": (layout.master_bytes + 2 * layout.moment_bytes, 1)}
    out = {}
    for name, (nbytes, sharded_from) in components.items():
        sharded = layout.zero_stage >= sharded_from
        out[name] = sum(nbytes * stage[k] * (1 / dp[k] if sharded else layout.param_copies) for k in stage)
    if layout.zero_stage == 3:  # the block being computed, gathered whole (its local TP/EP share)
        blocks = config.num_layers + config.mtp.depth
        out["gathered block"] = layout.weight_bytes * sum(stage.values()) * layout.pp / blocks
    return out


@dataclass(frozen=True)
class Tensor:
    """One activation a layer keeps for backward: elements per token and bytes per element."""

    name: str
    elements: int
    element_bytes: float


def layer_activations(config: DeepSeekConfig, moe: bool, layout: Layout = Layout()) -> list[Tensor]:
    """What one MLA block keeps per token for backward, under V3's recomputation (module doc).

    Recomputed, so not listed: both RMSNorm outputs, q / k_nope / v (the MLA up-projections),
    SwiGLU's output. ``keep_expert_outputs``: the report does not say how the gate's gradient
    (dL/dg_i = dy . e_i) gets the expert outputs; by default they are recomputed with the SwiGLU
    output. Without ``fp8_activations`` every cached Linear input is BF16.
    """
    a, d, m = config.attention, config.hidden_size, config.moe
    if a.kind != "mla":
        raise ValueError("the V3 budget models MLA attention; got attention.kind='mha'")
    fp8, e5m6 = (FP8_TILE, E5M6) if layout.fp8_activations else (2.0, 2.0)
    tensors = [Tensor("attention input (residual)", d, 2), Tensor("attention norm output (FP8 Linear input)", d, fp8)]
    if a.q_lora_rank:
        tensors.append(Tensor("query latent c_Q", a.q_lora_rank, 2))
    tensors += [Tensor("key-value latent c_KV", a.kv_lora_rank, 2), Tensor("rotary key", a.qk_rope_head_dim, 2),
                Tensor("attention output (W_O input, E5M6)", a.num_heads * a.v_head_dim, e5m6),
                Tensor("softmax log-sum-exp (FP32)", a.num_heads, 4),
                Tensor("FFN input (residual)", d, 2), Tensor("FFN norm output (FP8 Linear input)", d, fp8)]
    if not moe:
        return tensors + [Tensor("SwiGLU input (FP8)", 2 * config.intermediate_size, fp8)]
    experts = m.top_k + m.n_shared_experts
    tensors += [Tensor("router scores (FP32)", m.n_routed_experts, 4),
                Tensor("dispatched tokens (FP8, on the expert's GPU)", m.top_k * d, fp8),
                Tensor("SwiGLU inputs of the activated experts (FP8)", experts * 2 * m.moe_intermediate_size, fp8)]
    if layout.keep_expert_outputs:
        tensors.append(Tensor("routed expert outputs (BF16)", m.top_k * d, 2))
    return tensors


def activation_bytes_per_token(config: DeepSeekConfig, layout: Layout = Layout()) -> dict[str, float]:
    """Bytes per token kept by one dense block, one MoE block, and the whole model (MTP included:
    one block each + its 2d -> d projection's FP8 input); the embedding rows and logits left out."""
    dense = sum(t.elements * t.element_bytes for t in layer_activations(config, False, layout))
    moe = sum(t.elements * t.element_bytes for t in layer_activations(config, True, layout))
    mtp_block = moe if config.ffn == "moe" else dense
    fp8 = FP8_TILE if layout.fp8_activations else 2.0
    n_moe = config.num_moe_layers
    model = (config.num_layers - n_moe) * dense + n_moe * moe + config.mtp.depth * (mtp_block + 2 * config.hidden_size * fp8)
    return {"dense_layer": dense, "moe_layer": moe, "model": model}


def activation_memory_per_gpu(config: DeepSeekConfig, layout: Layout = Layout()) -> dict[str, float]:
    """One micro-batch chunk (one stage: the model's activations / pp, x tokens, / tp with sequence
    parallel) and the peak of ``chunks_in_flight`` of them on a device."""
    chunk = activation_bytes_per_token(config, layout)["model"] * layout.micro_batch_tokens / layout.pp / layout.tp
    return {"per_micro_batch": chunk, "in_flight": chunk * layout.chunks_in_flight}


def memory_per_gpu(config: DeepSeekConfig, layout: Layout = Layout()) -> dict[str, float]:
    """The memory stack of one GPU, bytes: weights, gradients, optimizer states, activations."""
    return {**model_state_bytes(config, layout), "activations": activation_memory_per_gpu(config, layout)["in_flight"]}


def layout_variants(base: Layout = Layout()) -> dict[str, Layout]:
    """The published layout and what one change does: ZeRO-2/3, TP, 1F1B, FP32 moments, BF16 activations."""
    return {"published (DualPipe, ZeRO-1)": base, "ZeRO-2": replace(base, zero_stage=2),
            "ZeRO-3": replace(base, zero_stage=3), "TP2 (+SP)": replace(base, tp=2), "TP4 (+SP)": replace(base, tp=4),
            "1F1B (1 copy, PP chunks)": replace(base, param_copies=1, in_flight=base.pp),
            "FP32 moments": replace(base, moment_bytes=4.0), "BF16 activations": replace(base, fp8_activations=False),
            "expert outputs kept": replace(base, keep_expert_outputs=True)}


# --- FLOPs and MFU ---------------------------------------------------------------------------

def bf16_flops_per_token(config: DeepSeekConfig, include_mtp: bool = True) -> float:
    """The FLOPs V3 keeps in BF16 (sec. 3.3.1: attention, output head, gating): attention's scores
    and values, 6 V d per head pass, 6 E d per router; every other GEMM runs in FP8."""
    flops = deepseek_flops_per_token(config, include_mtp)
    d, V, E = config.hidden_size, config.vocab_size, config.moe.n_routed_experts
    routers = config.num_moe_layers * (config.ffn == "moe")
    heads = 1.0
    if include_mtp and config.mtp.depth:
        T = config.seq_len
        share = sum((T - k) / T for k in range(1, min(config.mtp.depth, T - 1) + 1))
        heads += share
        routers += share * (config.ffn == "moe")
    attention = flops["attention"] + flops.get("mtp_attention", 0.0)
    return attention + 6.0 * (heads * V * d + routers * E * d)


def moe_layer_forward_flops(config: DeepSeekConfig) -> float:
    """Forward FLOPs of one MoE block per token: 2 x its activated weights + attention's
    2 T H (d_qk + d_v) (a third of deepseek_flops_per_token's per-layer terms)."""
    a = config.attention
    latent_norms = a.q_lora_rank + a.kv_lora_rank  # not matmul weights (deepseek_flops leaves them out too)
    weights = attention_parameters(config) - latent_norms + ffn_parameters(config, moe=True)[1]
    return 2.0 * weights + 2.0 * config.seq_len * a.num_heads * (a.qk_nope_head_dim + a.qk_rope_head_dim + a.v_head_dim)


def implied_mfu(flops_per_token: float, tokens: float, gpu_hours: float, peak_flops: float) -> float:
    """Model FLOPs utilisation the budget implies: tokens x FLOPs/token / (GPU-hours x 3600 x peak)."""
    if min(flops_per_token, tokens, gpu_hours, peak_flops) <= 0:
        raise ValueError("flops_per_token, tokens, gpu_hours and peak_flops must be positive")
    return tokens * flops_per_token / (gpu_hours * 3600.0 * peak_flops)


def blended_peak(fp8_flops: float, bf16_flops: float, fp8_peak: float, bf16_peak: float) -> float:
    """The peak of a mix: total FLOPs over the time each part takes at its own peak."""
    return (fp8_flops + bf16_flops) / (fp8_flops / fp8_peak + bf16_flops / bf16_peak)


# --- MoE all-to-all ----------------------------------------------------------------------------

def _touch(pool: int, owned: int, top_k: int) -> float:
    """P(a unit owning ``owned`` of ``pool`` equally likely experts gets >= 1 of ``top_k`` picks)."""
    return 1.0 - comb(pool - owned, top_k) / comb(pool, top_k)


def dispatch_copies(n_experts: int, top_k: int, n_nodes: int, gpus_per_node: int,
                    max_nodes: int | None = None, per_node: bool = True) -> dict[str, float]:
    """Copies of one token sent over IB and over NVLink per MoE layer, uniform routing: expected,
    and the most IB copies (``ib_worst``). Experts spread evenly over n_nodes x gpus_per_node GPUs.

    per_node (V3): one IB copy per remote node touched, then one NVLink copy per GPU touched
    there other than the receiving one (and per GPU of the own node but the sender);
    ``max_nodes`` M: the router first picks M of the nodes (uniform), then top_k of their experts.
    Not per_node (a plain all_to_all_single): one copy per expert on another GPU, no node limit.
    """
    gpus = n_nodes * gpus_per_node
    if n_experts % gpus or not 0 < top_k <= n_experts:
        raise ValueError(f"{n_experts} experts do not spread over {gpus} GPUs, or top_k={top_k} is out of range")
    per_gpu, per_node_experts = n_experts // gpus, n_experts // n_nodes
    if not per_node:
        if max_nodes is not None:
            raise ValueError("max_nodes needs per_node dispatch (V3's node-limited routing)")
        remote = top_k * (n_nodes - 1) / n_nodes
        return {"ib": remote, "nvlink": top_k * (gpus_per_node - 1) / gpus,
                "ib_worst": float(min(top_k, (n_nodes - 1) * per_node_experts))}
    chosen = n_nodes if max_nodes is None else max_nodes
    if not 0 < chosen <= n_nodes:
        raise ValueError(f"max_nodes must be in 1..{n_nodes}, got {max_nodes}")
    pool = chosen * per_node_experts
    in_pool = chosen / n_nodes
    ib = (n_nodes - 1) * in_pool * _touch(pool, per_node_experts, top_k)
    gpus_touched = gpus * in_pool * _touch(pool, per_gpu, top_k)
    nvlink = gpus_touched * (gpus_per_node - 1) / gpus_per_node  # the entry GPU of a node needs no forward
    return {"ib": ib, "nvlink": nvlink, "ib_worst": float(min(chosen, top_k, n_nodes - 1))}


def all_to_all_bytes(copies: dict[str, float], hidden: int, dispatch_bytes: float = FP8_TILE,
                     combine_bytes: float = 2.0) -> dict[str, float]:
    """Bytes one token sends per MoE layer on each link: every copy goes out in dispatch (FP8 +
    tile scales) and its partial result comes back in combine (BF16)."""
    per_copy = hidden * (dispatch_bytes + combine_bytes)
    return {link: copies[link] * per_copy for link in ("ib", "nvlink")} | \
        {f"{link}_dispatch": copies[link] * hidden * dispatch_bytes for link in ("ib", "nvlink")}
