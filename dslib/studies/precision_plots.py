"""Chapter 07's runs and figures, lifted out of the notebook's cells: one call per cell.

The number formats figure draws fp32 / bf16 / fp16 from torch.finfo (sign, exponent and
mantissa bits); the gradient figure puts the chapter model's measured FP32 gradient magnitudes
against fp16's smallest subnormal, smallest normal and largest value.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from dslib import viz
from dslib.model import TransformerXL
from dslib.model.config import ModelConfig
from dslib.studies.mixed_precision import PrecisionRun, gradients, memory_split, train_run
from dslib.train.precision import Precision, make_grad_scaler
from dslib.train.step import Batch

FORMATS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def fresh_model(config: ModelConfig, device: torch.device, seed: int = 0) -> nn.Module:
    """The chapter's Transformer-XL with the same initialisation for every run."""
    torch.manual_seed(seed)
    return TransformerXL(config).to(device)


def train_precisions(config: ModelConfig, batches: list[Batch], device: torch.device, precisions: list[str],
                     growth_interval: int, init_scale: float | None = None) -> dict[str, PrecisionRun]:
    """One run per precision from the same initialisation over the same batches (AdamW, lr 1e-3)."""
    runs = {}
    for p in precisions:
        model = fresh_model(config, device)
        scaler_args = {"growth_interval": growth_interval} | ({"init_scale": init_scale} if init_scale else {})
        runs[p] = train_run(model, batches, device, p, torch.optim.AdamW(model.parameters(), lr=1e-3),
                            make_grad_scaler(device, p, **scaler_args))
    return runs


def step_time_rows(runs: dict[str, PrecisionRun]) -> list[dict[str, Any]]:
    """Median step (first step left out: kernel selection), final loss, skipped steps, time vs the first run."""
    rows = [{"precision": p, "median_step_ms": 1e3 * float(torch.tensor(r.step_s[1:] or r.step_s).median()),
             "final_loss": r.loss[-1], "skipped_steps": len(r.skipped)} for p, r in runs.items()]
    for row in rows:
        row["time_vs_fp32"] = row["median_step_ms"] / rows[0]["median_step_ms"]
    return rows


def loss_and_scale(runs: dict[str, PrecisionRun], overflow: PrecisionRun, overflow_init_scale: float):
    """Loss per precision (left); fp16 loss scale per step, skipped steps in red (right)."""
    fig, axes = viz.new_figure(ncols=2)
    ax_loss, ax_scale = axes.flat
    for p, r in runs.items():
        ax_loss.plot(range(1, len(r.loss) + 1), r.loss, label=p)
    ax_loss.set(xlabel="step", ylabel="training loss", title="same batches, same initialisation")
    ax_loss.legend()
    for name, r in (("init 2^15 (article)", runs.get("fp16")), (f"init {overflow_init_scale:.0e}", overflow)):
        if r is not None:
            ax_scale.semilogy(range(1, len(r.scale) + 1), r.scale, marker=".", label=name)
            ax_scale.scatter(r.skipped, [r.scale[s - 1] for s in r.skipped], color="red", zorder=3)
    ax_scale.set(xlabel="step", ylabel="loss scale", title="fp16 loss scale (red: skipped step)")
    ax_scale.legend()
    return fig


def underflow_bars(rows: list[dict[str, Any]]):
    """Per parameter, the fraction of non-zero FP32 gradient elements that fp16 zeroes."""
    fig, ax = viz.new_figure(height=0.22 * len(rows) + 1)
    names = [r["parameter"] for r in rows]
    ax.barh(names, [r["zeroed_frac_unscaled"] for r in rows], label="fp16, no scaling")
    ax.barh(names, [r["zeroed_frac_scaled"] for r in rows], label="fp16, scale 2^15")
    ax.set(xlabel="fraction of non-zero fp32 gradient elements that are 0 in fp16")
    ax.legend()
    return fig


def memory_rows(config: ModelConfig, batch: Batch, device: torch.device, precisions: list[str]) -> list[dict[str, Any]]:
    """memory_split per precision (fresh model, AdamW), in MB, with the saving against the first."""
    rows = []
    for p in precisions:
        model = fresh_model(config, device)
        m = memory_split(model, batch, device, p, torch.optim.AdamW(model.parameters()))
        rows.append({**m, "peak_MB": m["peak_bytes"] / 1e6, "model_state_MB": m["model_state_bytes"] / 1e6,
                     "activation_MB": m["activation_bytes"] / 1e6})
    for row in rows:
        row["saving_vs_fp32"] = 1 - row["peak_bytes"] / rows[0]["peak_bytes"]
    return rows


def memory_bars(rows: list[dict[str, Any]], title: str):
    fig, ax = viz.new_figure()
    names = [r["precision"] for r in rows]
    states = [r["model_state_MB"] for r in rows]
    ax.bar(names, states, label="model states")
    ax.bar(names, [r["activation_MB"] for r in rows], bottom=states, label="activations (+ temporaries)")
    ax.set(ylabel="MB at peak", title=title)
    ax.legend()
    return fig


def record_memory_evidence(run: Any, rows: list[dict[str, Any]], conditions: dict[str, Any]) -> float:
    """One evidence row per low precision for mixed_precision_memory_40 (the claims engine decides);
    returns the activations' share of the fp32 peak, which decides the saving."""
    fp32 = rows[0]
    share = fp32["activation_bytes"] / fp32["peak_bytes"]
    run.metric("fp32_activation_share", share, note="activations / peak tensor memory in fp32")
    split = (f"fp32 peak {fp32['peak_MB']:.1f} MB = {fp32['model_state_MB']:.1f} MB model states"
             f" + {fp32['activation_MB']:.1f} MB activations")
    for r in rows[1:]:
        run.metric(f"memory_saving_{r['precision']}", r["saving_vs_fp32"], note="1 - peak(p)/peak(fp32), one training step")
        run.evidence("mixed_precision_memory_40", r["saving_vs_fp32"], unit="fraction", default=r["precision"] == "fp16",
                     conditions={"precision": r["precision"], **conditions, "activation_share": round(share, 2)},
                     note=split)
    return share


def deepspeed_precision_rows(config: ModelConfig, batches: list[Batch], device: torch.device, batch_size: int,
                             zero_stage: int, steps: int) -> list[dict[str, Any]]:
    """DeepSpeed bf16 and fp16 engines under ZeRO, a few steps each; a refused config is a row, not a raise."""
    from dslib.dist.ds_config import engine_config
    from dslib.studies.deepspeed_runs import run_engine

    rows = []
    for p in ("bf16", "fp16"):
        result = run_engine(fresh_model(config, device), engine_config(batch_size, p, zero_stage), batches[:steps])
        rows.append({"precision": p, "zero_stage": zero_stage, "ran": result["ok"],
                     "param_dtype": result.get("param_dtype"), "losses": result["losses"], "error": result["error"]})
    return rows


def format_bits(dtype: torch.dtype) -> dict[str, Any]:
    """Sign, exponent and mantissa bits of a float dtype, and its range, from torch.finfo."""
    info = torch.finfo(dtype)
    mantissa = round(-math.log2(info.eps))  # eps = 2^-mantissa bits
    exponent = info.bits - 1 - mantissa
    return {"bits": info.bits, "sign": 1, "exponent": exponent, "mantissa": mantissa, "max": info.max,
            "smallest_normal": info.smallest_normal, "smallest_subnormal": info.smallest_normal * info.eps}


def bit_layouts():
    """fp32, bf16 and fp16 as rows of sign / exponent / mantissa bits, with each one's range."""
    fig, ax = viz.new_figure(width=9, height=2.6)
    colors = {"sign": "tab:red", "exponent": "tab:blue", "mantissa": "tab:green"}
    for row, (name, dtype) in enumerate(FORMATS.items()):
        f, left = format_bits(dtype), 0
        for part in ("sign", "exponent", "mantissa"):
            ax.barh(row, f[part], left=left, color=colors[part], edgecolor="white",
                    label=part if row == 0 else None)
            ax.text(left + f[part] / 2, row, str(f[part]), ha="center", va="center", color="white", fontsize=8)
            left += f[part]
        ax.text(33, row, f"max {f['max']:.1e}, normal min {f['smallest_normal']:.1e}", va="center", fontsize=8)
    ax.set_yticks(range(len(FORMATS)), list(FORMATS))
    ax.invert_yaxis()
    ax.set(xlim=(0, 50), xlabel="bits (sign | exponent | mantissa)", title="Number formats: range is exponent bits")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def gradient_magnitudes(model: nn.Module, batch: Batch, device: torch.device) -> torch.Tensor:
    """|gradient| of every non-zero parameter-gradient element of one FP32 backward, flattened."""
    grads = torch.cat([g.flatten() for g in gradients(model, batch, device, Precision.FP32).values()]).abs()
    return grads[grads > 0].cpu()


def gradient_range(magnitudes: torch.Tensor, loss_scale: float):
    """Histogram of log10 |gradient| against fp16's range, unscaled and multiplied by ``loss_scale``."""
    fp16 = format_bits(torch.float16)
    fig, ax = viz.new_figure(width=8)
    logs = magnitudes.double().log10()
    bins = torch.linspace(min(float(logs.min()), -10), max(float((logs + math.log10(loss_scale)).max()), 5), 80)
    ax.hist(logs.numpy(), bins=bins.numpy(), alpha=0.7, label="measured fp32 gradients")
    ax.hist((logs + math.log10(loss_scale)).numpy(), bins=bins.numpy(), alpha=0.5,
            label=f"x loss scale {loss_scale:.0f}")
    for key, style in (("smallest_subnormal", ":"), ("smallest_normal", "--"), ("max", "-")):
        ax.axvline(math.log10(fp16[key]), color="black", linestyle=style, label=f"fp16 {key} {fp16[key]:.1e}")
    ax.set(xlabel="log10 |gradient element|", ylabel="elements", yscale="log",
           title="Gradient magnitudes of the chapter model against fp16's range")
    ax.legend(fontsize=7)
    return fig


def below_fp16(magnitudes: torch.Tensor, loss_scale: float = 1.0) -> dict[str, float]:
    """Fractions of the gradient elements that fp16 flushes to zero or stores as subnormals (after scaling)."""
    fp16, scaled = format_bits(torch.float16), magnitudes.double() * loss_scale
    return {"below_subnormal_min": float((scaled < fp16["smallest_subnormal"] / 2).double().mean()),
            "subnormal": float(((scaled >= fp16["smallest_subnormal"] / 2) & (scaled < fp16["smallest_normal"]))
                               .double().mean()),
            "above_max": float((scaled > fp16["max"]).double().mean())}


def below_fp16_rows(magnitudes: torch.Tensor, loss_scales: tuple[float, ...]) -> list[dict[str, Any]]:
    """``below_fp16`` for each loss scale, one row each."""
    return [{"loss_scale": scale, **below_fp16(magnitudes, scale)} for scale in loss_scales]
