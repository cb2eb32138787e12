"""Chapter 07's measurements: which dtype each module computes in under autocast, what fp16
does to gradients with and without loss scaling, training at each precision on the same
batches, and peak memory split into model states and activations.

Every training step here is the book's one step (dslib.train.step.train_step) with an
``OptimizerStepper`` carrying the precision's gradient scaler.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from dslib.env import synchronize
from dslib.train.precision import (INIT_SCALE, Precision, autocast, cpu_precision_support, low_precision_slowdown,
                                   make_grad_scaler)
from dslib.train.step import Batch, OptimizerStepper, batch_loss, train_step

# torch.profiler memory categories, grouped into the two halves of the 40% question
MODEL_STATE_CATEGORIES = ("PARAMETER", "GRADIENT", "OPTIMIZER_STATE")


def hardware_note(device: torch.device) -> str:
    """Why low precision is fast or slow on this device, in one paragraph for the reader,
    with the slowdown measured here (``low_precision_slowdown``)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        bf16 = "with" if torch.cuda.is_bf16_supported() else "without"
        return (f"{name} (compute capability {major}.{minor}, {bf16} bf16): tensor cores run fp16/bf16 "
                "matmuls at several times the fp32 rate and halve the bytes moved, so autocast speeds up "
                "matmul-bound steps; LayerNorm/softmax/loss stay fp32 at little cost.")
    measured = low_precision_slowdown(device)
    times = (f"measured here: a training step takes {measured['bf16_vs_fp32']:.1f}x fp32's time under bf16 "
             f"autocast and {measured['fp16_vs_fp32']:.1f}x under fp16 ({measured['model']})")
    if measured["native_bf16"]:
        support = cpu_precision_support()
        return (f"{measured['cpu']}: native bf16 ({', '.join(support['bf16_flags'])}) - oneDNN runs bf16 "
                "matmuls on AVX512-BF16/AMX units, so bf16 autocast can come close to or beat fp32; every "
                f"autocast region still pays for casting weights and the fp32 ops around them; {times}.")
    return (f"{measured['cpu']}: no bf16/fp16 arithmetic instructions (no avx512_bf16/amx_bf16; flags: "
            f"{', '.join(measured['cpu_flags']) or 'none'}) - autocast converts to bf16/fp16 and back around "
            f"emulated low-precision kernels, far slower than fp32; {times}. Long runs use fp32 here and "
            "the low-precision runs stay short; on a GPU with tensor cores the same code is faster than fp32.")


def module_output_dtypes(model: nn.Module, batch: Batch, device: torch.device,
                         precision: Precision | str) -> dict[str, str]:
    """Module class -> dtype of its output in one autocast forward (e.g. LayerNorm: float32)."""
    seen: dict[str, str] = {}

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        if torch.is_tensor(output) and output.is_floating_point():
            seen.setdefault(type(module).__name__, str(output.dtype).replace("torch.", ""))

    handles = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    try:
        with torch.no_grad(), autocast(device, precision):
            seen["loss"] = str(batch_loss(model, batch).dtype).replace("torch.", "")
    finally:
        for h in handles:
            h.remove()
    return seen


def gradients(model: nn.Module, batch: Batch, device: torch.device, precision: Precision | str,
              loss_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Parameter gradients of one backward under autocast, with the loss multiplied by
    loss_scale before backward and the gradients divided by it afterwards (what GradScaler does)."""
    model.zero_grad(set_to_none=True)
    with autocast(device, precision):
        loss = batch_loss(model, batch)
    (loss * loss_scale).backward()
    grads = {name: p.grad.detach() / loss_scale for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def gradient_underflow(model: nn.Module, batch: Batch, device: torch.device,
                       loss_scale: float = INIT_SCALE) -> list[dict[str, Any]]:
    """Per parameter: gradient elements that are non-zero in FP32 but exactly zero under
    FP16 autocast, without loss scaling and with ``loss_scale`` (counts and fractions)."""
    reference = gradients(model, batch, device, Precision.FP32)
    unscaled = gradients(model, batch, device, Precision.FP16)
    scaled = gradients(model, batch, device, Precision.FP16, loss_scale)
    rows = []
    for name, ref in reference.items():
        nonzero = ref != 0
        n = int(nonzero.sum())
        zero_plain = int((nonzero & (unscaled[name] == 0)).sum())
        zero_scaled = int((nonzero & (scaled[name] == 0)).sum())
        rows.append({"parameter": name, "elements": ref.numel(), "nonzero_fp32": n,
                     "zeroed_fp16_unscaled": zero_plain, "zeroed_fp16_scaled": zero_scaled,
                     "zeroed_frac_unscaled": zero_plain / max(n, 1), "zeroed_frac_scaled": zero_scaled / max(n, 1),
                     "median_abs_grad_fp32": float(ref.abs().median())})
    return rows


@dataclass
class PrecisionRun:
    """One training run at one precision: per-step loss, time, loss scale and skipped steps."""

    precision: str
    loss: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        return [{"precision": self.precision, "step": i + 1, "loss": loss, "step_s": t, "scale": s,
                 "skipped": (i + 1) in self.skipped}
                for i, (loss, t, s) in enumerate(zip(self.loss, self.step_s, self.scale))]


def train_run(model: nn.Module, batches: Iterable[Batch], device: torch.device, precision: Precision | str,
              optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None) -> PrecisionRun:
    """Train ``model`` (FP32 master weights) over ``batches`` under autocast at ``precision``."""
    precision = Precision(precision)
    scaler = scaler if scaler is not None else make_grad_scaler(device, precision)
    stepper = OptimizerStepper(optimizer, scaler)
    run = PrecisionRun(precision.value)
    model.train()
    for step, batch in enumerate(batches, start=1):
        start = time.perf_counter()
        run.scale.append(scaler.get_scale() if scaler.is_enabled() else 1.0)
        result = train_step(model, batch, stepper, precision=precision)
        if result.skipped:
            run.skipped.append(step)
        synchronize(device)
        run.step_s.append(time.perf_counter() - start)
        run.loss.append(result.loss.item())
    return run


def memory_split(model: nn.Module, batch: Batch, device: torch.device, precision: Precision | str,
                 optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Tensor memory at the peak of one training step, split by torch.profiler's categories.

    The profiler tags every allocation (parameter, gradient, optimizer state, activation,
    autograd detail, temporary, input); model states = parameters + gradients + optimizer
    state, activations = everything else alive at the peak (autocast's low-precision
    weight copies included). The step before profiling creates the optimizer state.
    """
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX

    stepper = OptimizerStepper(optimizer, make_grad_scaler(device, precision))
    train_step(model, batch, stepper, precision=precision)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, profile_memory=True, record_shapes=True, with_stack=True) as prof:
        train_step(model, batch, stepper, precision=precision)
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/timeline.json"
        indexed = device if device.type == "cpu" or device.index is not None else torch.device(device.type, 0)
        prof.export_memory_timeline(path, device=str(indexed))
        _times, sizes = json.loads(Path(path).read_text())
    # column 0 is unused; category c is column _CATEGORY_TO_INDEX[c] + 1 (None = unknown)
    names = {index + 1: (cat.name if cat is not None else "UNKNOWN") for cat, index in _CATEGORY_TO_INDEX.items()}
    totals = [sum(row) for row in sizes]
    at_peak = sizes[max(range(len(totals)), key=totals.__getitem__)]
    by_category = {names[i]: at_peak[i] for i in names}
    model_states = sum(by_category[c] for c in MODEL_STATE_CATEGORIES)
    return {"precision": Precision(precision).value, "peak_bytes": max(totals), "model_state_bytes": model_states,
            "activation_bytes": max(totals) - model_states, "by_category": by_category}
