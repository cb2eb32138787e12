"""What chapter 09 shows and records of its tuning studies: table rows and job-run metrics
(dslib.studies.memory_sweeps, ds_checkpointing, overlap, tuning_claims hold the studies)."""
from __future__ import annotations

from typing import Any

from dslib.model import load_config
from dslib.tune.checkpointing import checkpoint_input_bytes


def record_deepspeed_memory(job_run: Any, ds_sweep: list[dict[str, Any]], config_name: str, ranks: int) -> None:
    """Memory saved per rank by torch's and DeepSpeed's checkpointing at every layer and every 4th."""
    for r in ds_sweep:
        if r["variant"] in ("torch", "deepspeed") and r["checkpoint_every"] in (1, 4):
            job_run.metric(f"zero_{r['variant']}_ckpt_k{r['checkpoint_every']}_memory_saved", r["memory_saved_MB"],
                           unit="MB", note=f"{config_name}, {ranks} ranks, peak step memory per rank")


def article_checkpoint_inputs(micro_batch: int, tensor_parallel: tuple[int, ...] = (1, 8)) -> list[dict[str, Any]]:
    """Modelled, at the article's scale: what a rank keeps of the checkpointed layers' inputs with
    every layer checkpointed (bf16), without and with tensor parallel."""
    article = load_config("article")
    kept_GB = article.num_layers * checkpoint_input_bytes(article, micro_batch, 2) / 1e9
    return [{"tensor_parallel_ranks": tp, "checkpoint_inputs_GB_per_rank": kept_GB / tp} for tp in tensor_parallel]


def sharing_rows(sharing: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant of memory_sweeps.compare_sharing: parameters, peak memory, mean of the last 5 losses."""
    return [{"variant": k, "params": v["params"], "peak_MB": v["peak_MB"],
             "final_loss": sum(v["losses"][-5:]) / len(v["losses"][-5:])} for k, v in sharing.items()]


def overlap_rows(overlap: dict[str, Any]) -> list[dict[str, Any]]:
    """Buckets and step time per bucket cap, and the synchronous all-reduce's step time."""
    return ([{"bucket_cap_mb": e["bucket_cap_mb"], "buckets": len(e["events"]), "step_ms": e["step_s"] * 1e3}
             for e in overlap["buckets"]] + [{"bucket_cap_mb": "sync", "step_ms": overlap["sync"]["step_s"] * 1e3}])


def record_summary(job_run: Any, sweep: list[dict[str, Any]], plain_MB: float, tuned: dict[str, float],
                   article_reading: str, overlap: dict[str, Any], placement: dict[str, Any],
                   powersgd_rows: list[dict[str, Any]], model_config: str) -> None:
    """The chapter's headline metrics: checkpointing every 4th layer, checkpointing with sharing,
    synchronous vs overlapped all-reduce, the modelled TP placement, PowerSGD's compression."""
    k4 = next((r for r in sweep if r["checkpoint_every"] == 4), None)
    if k4:
        job_run.metric("ckpt_k4_memory_saved", 1 - k4["peak_MB"] / plain_MB, unit="fraction", note=model_config)
        job_run.metric("ckpt_k4_time_overhead", k4["time_overhead"], unit="fraction", note="noisy on a shared CPU")
    job_run.metric("ckpt_sharing_peak_ratio", tuned[article_reading] / plain_MB, unit="fraction", note=article_reading)
    job_run.metric("ckpt_sharing_peak_ratio_every_kth", tuned["every_kth"] / plain_MB, unit="fraction")
    job_run.metric("sync_vs_overlap_step_ratio", overlap["sync"]["step_s"] / overlap["buckets"][-1]["step_s"], unit="x")
    job_run.metric("tp_inside_node_comm_s_modelled", placement["total_comm_s"][0], unit="s", note="modelled, not measured")
    job_run.metric("powersgd_max_compression", max(r["compression"] for r in powersgd_rows), unit="x")
