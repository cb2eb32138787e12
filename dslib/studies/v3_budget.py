"""Chapter 13's V3 budget: the tables, the memory-stack figure and the GPU-hours evidence.

The numbers come from dslib.plan.deepseek_budget (formulas and assumptions there); this module
only lays them out for the notebook and writes the claim's evidence rows.
"""
from __future__ import annotations

from typing import Any

from dslib.model.deepseek_config import DeepSeekConfig
from dslib.model.deepseek_flops import deepseek_flops_per_token
from dslib.plan import comm, deepseek_budget as budget, flops
from dslib.studies.planning_claims import ClaimEvidence

GB = 1e9
CLAIM_ID = "v3_gpu_hours_vs_flops"


def memory_rows(config: DeepSeekConfig, layouts: dict[str, budget.Layout]) -> list[dict[str, Any]]:
    """GB per GPU by part for each layout, with its total and its largest part."""
    rows = []
    for name, layout in layouts.items():
        parts = budget.memory_per_gpu(config, layout)
        rows.append({"layout": name, **{k: v / GB for k, v in parts.items()}, "total": sum(parts.values()) / GB,
                     "dominant": max(parts, key=parts.get)})
    return rows


def plot_memory_stacks(ax: Any, rows: list[dict[str, Any]], device_memory_gb: float) -> None:
    """One stacked bar per layout (GB per GPU), the device's memory as a line."""
    parts = ["weights", "gradients", "optimizer", "gathered block", "activations"]
    bottoms = [0.0] * len(rows)
    labels = [r["layout"] for r in rows]
    for part in parts:
        heights = [r.get(part, 0.0) for r in rows]
        if any(heights):
            ax.barh(labels, heights, left=bottoms, label=part)
            bottoms = [b + h for b, h in zip(bottoms, heights)]
    ax.axvline(device_memory_gb, color="black", linestyle="--", label=f"H800 {device_memory_gb:g} GB")
    ax.invert_yaxis()
    ax.set(xlabel="GB per GPU", title="DeepSeek-V3 memory per GPU, by layout")
    ax.legend(loc="upper right", fontsize="small")


def flops_rows(config: DeepSeekConfig) -> list[dict[str, Any]]:
    """Training FLOPs per token by part, and the part V3 runs in BF16 (the rest in FP8)."""
    parts = deepseek_flops_per_token(config)
    total = sum(parts.values())
    bf16 = budget.bf16_flops_per_token(config)
    return [*({"part": k, "GFLOP_per_token": v / 1e9} for k, v in parts.items()),
            {"part": "total", "GFLOP_per_token": total / 1e9},
            {"part": "of which BF16 (attention, heads, routers)", "GFLOP_per_token": bf16 / 1e9}]


def mfu_evidence(config: DeepSeekConfig, tokens: float = budget.TRAIN_TOKENS) -> ClaimEvidence:
    """Implied MFU for each reading the report leaves open: which GPU-hours, which peak, and
    whether attention counts the full T x T square or the causal half."""
    parts = deepseek_flops_per_token(config)
    full = sum(parts.values())
    causal = full - (parts["attention"] + parts.get("mtp_attention", 0.0)) / 2
    bf16_share = budget.bf16_flops_per_token(config) / full
    bf16_peak, fp8_peak = flops.PEAK_FLOPS["H800 bf16"], flops.PEAK_FLOPS["H800 fp8"]
    peaks = {"bf16": bf16_peak, "fp8": fp8_peak,
             "fp8+bf16": budget.blended_peak(1 - bf16_share, bf16_share, fp8_peak, bf16_peak)}
    hours = {"2.788M (all)": budget.GPU_HOURS_TOTAL, "2.664M (pre-training)": budget.GPU_HOURS_PRETRAINING}
    check = ClaimEvidence(CLAIM_ID, note=(
        f"{full / 1e9:.1f} GFLOP/token (6 x activated weights + MLA attention over the full square, MTP "
        f"included; {causal / 1e9:.1f} counting the causal half) x {tokens:.3g} tokens; H800 dense peaks "
        f"{bf16_peak / 1e12:.1f} (BF16) and {fp8_peak / 1e12:.1f} (FP8) TFLOP/s; the blended peak runs the "
        f"{bf16_share:.0%} of FLOPs V3 keeps in BF16 at the BF16 peak"))
    for hours_name, gpu_hours in hours.items():
        for attention, per_token in (("full square", full), ("causal", causal)):
            for peak_name, peak in peaks.items():
                mfu = budget.implied_mfu(per_token, tokens, gpu_hours, peak)
                conditions = {"gpu_hours": hours_name, "attention": attention, "peak": peak_name}
                check.rows.append({**conditions, "peak_TFLOPS": peak / 1e12, "implied_mfu": mfu})
                check.evidence.append({"value": mfu, "kind": "modelled", "conditions": conditions,
                                       "default": peak_name == "fp8+bf16" and attention == "full square"
                                       and gpu_hours == budget.GPU_HOURS_PRETRAINING})
    return check


def all_to_all_rows(config: DeepSeekConfig, layout: budget.Layout, max_nodes: int, ib: comm.Link,
                    nvlink: comm.Link, mfu: float) -> list[dict[str, Any]]:
    """Per token and MoE layer: copies and bytes on IB and NVLink for three dispatch schemes, and
    the seconds per micro-batch against the layer's forward compute at ``mfu`` of the FP8 peak."""
    m, d = config.moe, config.hidden_size
    nodes = layout.ep // layout.gpus_per_node
    schemes = {"plain all-to-all (a copy per expert)": dict(per_node=False),
               "a copy per node, no node limit": dict(),
               f"node-limited ({max_nodes} nodes, V3)": dict(max_nodes=max_nodes)}
    tokens = layout.micro_batch_tokens
    compute_s = tokens * budget.moe_layer_forward_flops(config) / (flops.PEAK_FLOPS["H800 fp8"] * mfu)
    rows = []
    for name, kwargs in schemes.items():
        copies = budget.dispatch_copies(m.n_routed_experts, m.top_k, nodes, layout.gpus_per_node, **kwargs)
        sent = budget.all_to_all_bytes(copies, d)
        ib_s, nvlink_s = tokens * sent["ib"] / ib.bandwidth, tokens * sent["nvlink"] / nvlink.bandwidth
        rows.append({"scheme": name, "ib_copies": copies["ib"], "ib_copies_worst": copies["ib_worst"],
                     "nvlink_copies": copies["nvlink"], "ib_KB": sent["ib"] / 1e3, "nvlink_KB": sent["nvlink"] / 1e3,
                     "ib_ms": 1e3 * ib_s, "nvlink_ms": 1e3 * nvlink_s, "forward_compute_ms": 1e3 * compute_s,
                     "comm_over_compute": max(ib_s, nvlink_s) / compute_s})
    return rows
