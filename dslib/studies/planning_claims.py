"""The article's resource-planning claims as evidence: the memory and communication models'
numbers over a grid of the settings the article does not state.

Each function returns a ClaimEvidence: the rows for the chapter's table, one evidence row per
setting (``check.record(run)`` passes them to ``run.evidence``) and the assumptions. The
claims engine (dslib.claims) decides the verdict from the rows and configs/claims.yaml.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dslib.plan import comm, memory

GB = 1e9


@dataclass
class ClaimEvidence:
    claim_id: str
    note: str  # the assumptions behind every row
    rows: list[dict[str, Any]] = field(default_factory=list)  # the chapter's table
    evidence: list[dict[str, Any]] = field(default_factory=list)  # run.evidence keyword arguments

    def record(self, run: Any) -> None:
        """One ``run.evidence`` row per setting (metrics.json written once)."""
        with run.held():
            for row in self.evidence:
                run.evidence(self.claim_id, **row)


def training_memory(n_params: int, precision: str, shape: dict[str, Any], zero_stage: int = 0,
                    n_devices: int = 1, optimizer: str = "adamw") -> dict[str, float]:
    """Bytes per device of model states and activations for one precision (fp32, amp, mixed)."""
    states = memory.model_states(n_params, precision=precision, zero_stage=zero_stage,
                                 gpus_per_node=n_devices, optimizer=optimizer)
    act_bytes = 4 if precision == "fp32" else 2
    activations = sum(memory.activation_memory(**shape, element_bytes=act_bytes).values())
    # autocast keeps a 16-bit copy of every weight it casts for the forward (per device's share)
    cast_cache = 2 * n_params / (n_devices if zero_stage == 3 else 1) if precision == "amp" else 0.0
    return {"states": states.device_total + cast_cache, "activations": activations}


def mixed_precision_rows(n_params: int, shape: dict[str, Any], micro_batches: list[int],
                         zero_stage: int = 0, n_devices: int = 1,
                         optimizer: str = "adamw") -> list[dict[str, Any]]:
    """Memory saving of mixed precision and autocast against fp32, per micro-batch size."""
    rows = []
    for micro_batch in micro_batches:
        sized = dict(shape, micro_batch=micro_batch)
        full = training_memory(n_params, "fp32", sized, zero_stage, n_devices, optimizer)
        fp32_total = sum(full.values())
        row = {"micro_batch": micro_batch, "fp32_GB": fp32_total / GB,
               "activation_share_fp32": full["activations"] / fp32_total}
        for precision in ("mixed", "amp"):
            total = sum(training_memory(n_params, precision, sized, zero_stage, n_devices, optimizer).values())
            row[f"{precision}_GB"] = total / GB
            row[f"{precision}_saving"] = 1 - total / fp32_total
        rows.append(row)
    return rows


def mixed_precision_evidence(n_params: int, shape: dict[str, Any], micro_batches: list[int],
                             default_micro_batch: int, zero_stage: int = 0, n_devices: int = 1) -> ClaimEvidence:
    """The modelled saving of 16-bit training against fp32 at every micro-batch (modelled rows: the
    claim is about measured memory, which chapter 07 records)."""
    rows = mixed_precision_rows(n_params, shape, micro_batches, zero_stage, n_devices)
    evidence = [{"value": row[f"{precision}_saving"], "kind": "modelled",
                 "conditions": {"precision": precision, "micro_batch": row["micro_batch"],
                                "activation_share": round(row["activation_share_fp32"], 2)},
                 "default": precision == "mixed" and row["micro_batch"] == default_micro_batch}
                for row in rows for precision in ("mixed", "amp")]
    fp32_bytes, mixed_bytes = (sum(memory.state_bytes_per_param("adamw", p, zero_stage).values())
                               for p in ("fp32", "mixed"))
    # per s*b*h of a layer's saved activations (Korthikanti): 16 tensors of e bytes + 2 one-byte masks
    act16, act32 = 16 * 2 + 2, 16 * 4 + 2
    note = (f"{n_params / 1e6:.0f}M params, AdamW, ZeRO stage {zero_stage} on {n_devices} device(s), "
            f"seq {shape['seq_len']}, memory {shape.get('memory_length', 0)}. Model states do not shrink: "
            f"fp32 needs {fp32_bytes} B/param, DeepSpeed-style mixed precision {mixed_bytes} (16-bit weights "
            f"and grads + fp32 master, Adam states and gradient copy), autocast (amp) {fp32_bytes} + a 2 B cast "
            f"cache. Only activations halve (Korthikanti formula, {act16} vs {act32} B per s*b*h), so the "
            f"saving is at most ~{1 - act16 / act32:.0%} and needs activation-dominated memory.")
    return ClaimEvidence("mixed_precision_memory_40", note, rows, evidence)


# The grid the article's 35% -> 18% is looked for in: tokens per GPU per step (1/8 to 8 sequences
# of 2048), the ZeRO volume, and the share of compute the communication overlaps after tuning.
COMM_TOKENS = (256, 512, 1024, 2048, 4096, 8192, 16384)
COMM_OVERLAPS = tuple(round(0.05 * k, 2) for k in range(1, 14)) + (round(comm.BACKWARD_SHARE, 3),)


def comm_overhead_evidence(setting: comm.CommSetting = comm.CommSetting(),
                           tokens_grid: tuple[int, ...] = COMM_TOKENS, overlaps: tuple[float, ...] = COMM_OVERLAPS,
                           default_tokens: int = 4096) -> ClaimEvidence:
    """Communication's share of the step before (no overlap) and after (``overlap`` of compute
    hidden under it) for every grid setting; the article gives neither batch size nor overlap."""
    s, rows, evidence = setting, [], []
    for tokens in tokens_grid:
        for stage in (2, 3):
            before = s.overhead(tokens, stage, 0.0)
            for overlap in overlaps:
                after = s.overhead(tokens, stage, overlap)
                conditions = {"tokens_per_gpu": tokens, "zero_stage": stage, "overlap": overlap}
                rows.append({**conditions, "before": before, "after": after})
                evidence.append({"value": {"before": before, "after": after}, "conditions": conditions,
                                 "kind": "modelled", "default": tokens == default_tokens and stage == 2
                                 and overlap == round(comm.BACKWARD_SHARE, 3)})
    dp_states = memory.model_states(int(s.n_params), gpus_per_node=s.n_devices).device_total
    note = (f"alpha-beta ring model: {s.link.name} {s.link.bandwidth / GB:.0f} GB/s achievable, "
            f"{s.link.latency * 1e6:.0f} us/step; bf16 gradients and weights; "
            f"{s.n_params / 1e9:.0f}B params (L={s.layers}, h={s.hidden}, seq {s.seq_len}), {s.n_devices} GPUs, "
            f"peak {s.peak_flops / 1e12:.0f} TFLOP/s at MFU {s.mfu:.0%}; ZeRO-2 moves the DP volume, ZeRO-3 "
            f"1.5x. Plain DP would hold {dp_states / GB:.0f} GB of mixed-precision Adam states per GPU, more than "
            "any GPU, so DP itself is not in the grid. Overlap: the share of compute the communication hides "
            f"under ({comm.BACKWARD_SHARE:.2f} = all of backward).")
    return ClaimEvidence("comm_overhead_35_to_18", note, rows, evidence)


ZERO3_LAYOUTS: list[tuple[str, int, dict[str, Any]]] = [
    ("DP (no ZeRO)", 0, {}),
    ("ZeRO-2", 2, {}),
    ("ZeRO-3", 3, {}),
    ("ZeRO-3, DeepSpeed estimator", 3, memory.AS_DEEPSPEED),
    ("ZeRO-3 + optimizer offload", 3, {"offload_optimizer": "cpu"}),
    ("ZeRO-3 + optimizer and param offload", 3, {"offload_optimizer": "cpu", "offload_param": "cpu"}),
]


def zero3_rows(n_params: float = 100e9, device_counts: tuple[int, ...] = (1, 4, 5, 8, 16, 32, 64),
               largest_layer_params: int = 0) -> list[dict[str, Any]]:
    """Model-state GB per device and in total for each layout and device count (mixed-precision AdamW)."""
    rows = []
    for name, stage, extra in ZERO3_LAYOUTS:
        for devices in device_counts:
            states = memory.model_states(int(n_params), zero_stage=stage, gpus_per_node=devices,
                                         largest_layer_params=largest_layer_params, **extra)
            rows.append({"layout": name, "devices": devices, "per_device_GB": states.device_total / GB,
                         "all_devices_GB": states.device_total * devices / GB,
                         "cpu_GB": states.cpu_per_node / GB})
    return rows


def zero3_readings() -> dict[str, int]:
    """Bytes per parameter of mixed-precision AdamW states, read the ways "the memory" is read."""
    b = memory.state_bytes_per_param("adamw", "mixed")
    return {"16-bit weights": b["params"], "fp32 master + Adam (ZeRO paper K=12)": b["master"] + b["optimizer"],
            "ZeRO paper 2+2+12": b["params"] + b["grads"] + b["master"] + b["optimizer"],
            "DeepSpeed estimator 2+4+4+8": b["params"] + b["grads_fp32"] + b["master"] + b["optimizer"],
            "engine (+ 16-bit grad partition)": sum(b.values())}


def zero3_evidence(n_params: float = 100e9, device_counts: tuple[int, ...] = (),
                   default_devices: int = 8) -> ClaimEvidence:
    """1.2 TB before and 320 GB after, over every pairing of a 'before' reading (the whole model's
    states on one device), a ZeRO-3 'after' layout (per device) and a device count (1-16 and
    ``device_counts``): the article names neither the bytes counted nor the device count."""
    readings, counts = zero3_readings(), sorted(set(range(1, 17)) | set(device_counts))
    after = {f"{name} / devices": {n: b * n_params / n / GB for n in counts}
             for name, b in list(readings.items())[:3]}
    for row in zero3_rows(n_params, tuple(counts)):
        if row["layout"].startswith("ZeRO-3"):
            layout = "memory model: " + row["layout"].replace(", ", " ")
            after.setdefault(layout, {})[row["devices"]] = row["per_device_GB"]
    evidence = [{"value": {"before_GB": b * n_params / GB, "after_GB": per_device[n]},
                 "conditions": {"before": before, "after": layout, "devices": n}, "kind": "modelled",
                 "default": before == "ZeRO paper 2+2+12" and layout == "memory model: ZeRO-3"
                 and n == default_devices}
                for before, b in readings.items() for layout, per_device in after.items() for n in counts]
    table = [{"reading": k, "bytes_per_param": v, "whole_model_GB": v * n_params / GB} for k, v in readings.items()]
    offloaded = readings["16-bit weights"] * 2 * n_params / GB
    note = (f"{n_params / 1e9:.0f}B params, mixed-precision AdamW. 'before': the whole model's states on one "
            "device under each reading; 'after': per device under ZeRO-3, by the ZeRO paper's readings or "
            f"chapter 02's memory model (checked against DeepSpeed's tensors in chapter 05), on {counts[0]}-"
            f"{counts[-1]} devices. The article gives neither the device count nor the offload; with optimizer "
            f"offload the devices hold only the 16-bit weights and gradients, {offloaded:.0f} GB in all.")
    return ClaimEvidence("zero3_100b_1_2tb_to_320gb", note, table, evidence)
