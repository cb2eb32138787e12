"""The article's chapter 09 claims as evidence rows, from the numbers measured in this chapter.

ckpt_sharing_98_to_65: "checkpointing (every 4 layers) + sharing: memory 98% -> 65%", i.e. the
tuned run needs 65/98 of the plain run's memory. Measured here (tuned / plain peak, the small
model); the article's setting (configs/model/article.yaml, mixed precision AdamW) is modelled
with the chapter 02 memory model over micro-batches (modelled rows: shown, not deciding).
powersgd_1_16: "PowerSGD compresses to 1/16": per rank, the counted compression and the loss it
costs over the same steps. The claims engine (dslib.claims) decides.
"""
from __future__ import annotations

from typing import Any

from dslib.model import count_parameters, load_config
from dslib.model.config import ModelConfig
from dslib.plan.memory import model_states
from dslib.studies.planning_claims import ClaimEvidence
from dslib.tune.checkpointing import modelled_activation_bytes
from dslib.tune.powersgd import rank_for_ratio, step_bytes
from dslib.tune.sharing import shared_parameter_count


def modelled_training_bytes(config: ModelConfig, micro_batch: int, every: int | None, share_group: int | None,
                            precision: str = "mixed", scheme: str = "every_kth") -> float:
    """Model states (AdamW) + activations of one device, no ZeRO, with the given tuning."""
    n_params = shared_parameter_count(config, share_group) if share_group else count_parameters(config)
    states = model_states(n_params, precision=precision, optimizer="adamw").device_total
    element_bytes = 4 if precision == "fp32" else 2
    return states + modelled_activation_bytes(config, micro_batch, every, element_bytes, scheme)


ARTICLE_MICRO_BATCHES = (1, 2, 4, 8, 16, 32, 64)
# "checkpoint every 4 layers" as DeepSpeed (activation_checkpoint_interval) and Megatron
# (recompute_num_layers) spell it: chunks of 4 layers, every layer recomputed
ARTICLE_READING = "chunks"


def ckpt_sharing_evidence(plain_MB: float, tuned_MB: dict[str, float], every: int, share_group: int,
                          measured_conditions: dict[str, Any], article_micro_batch: int = 8,
                          micro_batches: tuple[int, ...] = ARTICLE_MICRO_BATCHES) -> ClaimEvidence:
    """The measured tuned/plain peak here per reading of "every k layers" (``tuned_MB``: scheme ->
    peak, dslib.tune.checkpointing), and the same ratios modelled at the article's scale. The
    article's most likely reading (``ARTICLE_READING``) is the default row."""
    article = load_config("article")
    rows, evidence = [], []
    for reading, MB in tuned_MB.items():
        tuning = {"reading": reading, "every": every, "share_group": share_group}
        rows.append({"scale": "measured here", "reading": reading, **measured_conditions, "plain_MB": plain_MB,
                     "tuned_MB": MB, "tuned_over_plain": MB / plain_MB})
        evidence.append({"value": MB / plain_MB, "conditions": {"scale": "here", **measured_conditions, **tuning},
                         "default": reading == ARTICLE_READING})
    for reading in tuned_MB:
        tuning = {"reading": reading, "every": every, "share_group": share_group}
        for b in micro_batches:
            ratio = (modelled_training_bytes(article, b, every, share_group, scheme=reading)
                     / modelled_training_bytes(article, b, None, None))
            rows.append({"scale": "modelled: article model, mixed precision", "reading": reading, "micro_batch": b,
                         "tuned_over_plain": ratio})
            evidence.append({"value": ratio, "kind": "modelled", "default": False, "conditions": {
                "scale": "article", "model": "article", "micro_batch": b, "precision": "mixed", **tuning}})
    note = (f"checkpoint every {every} layers + MLP shared by {share_group} layers, in two readings: every_kth "
            f"(blocks 0, {every}, ... checkpointed alone) and chunks (DeepSpeed's activation_checkpoint_interval, "
            f"Megatron's recompute_num_layers: chunks of {every}, all recomputed; the default row). 98% -> 65% of "
            "a device is a ratio of 0.663 of the plain run's memory. The saving is the activations' share of "
            f"memory (micro-batch, sequence length) and the sharing group; modelled at seq {article.seq_len}, no ZeRO.")
    return ClaimEvidence("ckpt_sharing_98_to_65", note, rows, evidence)


def _tail_mean(values: list[float], n: int = 5) -> float:
    tail = values[-n:]
    return sum(tail) / len(tail)


def powersgd_evidence(runs: list[dict[str, Any]], conditions: dict[str, Any]) -> ClaimEvidence:
    """``runs`` from compare_compression: plain first, then one per PowerSGD rank. One evidence row
    per rank: the counted compression and the loss cost against plain DDP over the same steps."""
    plain, shapes = runs[0], runs[0]["shapes"]
    rows = []
    for run in runs:
        rows.append({"rank": run["rank"] or "plain", "bytes_per_step": run["bytes_per_step"][-1],
                     "compression": plain["bytes_per_step"][-1] / run["bytes_per_step"][-1],
                     "formula_compression": step_bytes(shapes, None) / step_bytes(shapes, run["rank"]),
                     "final_loss": _tail_mean(run["losses"]),
                     "loss_cost": _tail_mean(run["losses"]) - _tail_mean(plain["losses"])})
    evidence = [{"value": {"compression": row["compression"], "loss_cost": row["loss_cost"]},
                 "conditions": {"rank": row["rank"], **conditions, "steps": len(plain["losses"])}}
                for row in rows[1:]]
    rank16 = rank_for_ratio(shapes, 16.0)
    note = ("Compression depends on the rank and on the matrix shapes ((n+m)r vs nm), not a fixed 16x: "
            + (f"rank {rank16} is the largest with >= 16x for these gradient shapes" if rank16 else
               "no rank reaches 16x for these gradient shapes")
            + "; the loss cost (mean of the last 5 steps) shows over a short run with error feedback and plain "
            "all-reduce warm-up.")
    return ClaimEvidence("powersgd_1_16", note, rows, evidence)
