"""Mixed precision: autocast, dynamic loss scaling, underflow and memory measurements.

Current API: ``torch.autocast(device_type, dtype)`` and ``torch.amp.GradScaler(device_type)``.
The article's ``torch.cuda.amp.autocast`` / ``torch.cuda.amp.GradScaler`` are deprecated
spellings of the same thing (CUDA-only; they warn on torch >= 2.4).

Under autocast the weights stay FP32 (the "master weights": the optimizer updates
them in FP32); matmuls and convolutions run in the low-precision dtype on casted
copies, while LayerNorm, softmax and cross-entropy are on autocast's FP32 list.
FP16 has a 5-bit exponent (smallest normal 6.1e-5, smallest subnormal 6e-8), so small
gradients flush to zero unless the loss is scaled up first; BF16 has FP32's 8-bit
exponent and needs no scaling.
"""
from __future__ import annotations

import contextlib
import functools
import re
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

# the article's loss-scaling settings
INIT_SCALE, GROWTH_FACTOR, BACKOFF_FACTOR = 2.0**15, 2.0, 0.5

LossFn = Callable[[nn.Module, Any], torch.Tensor]


class Precision(str, Enum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"

    @property
    def dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.value]


# Autocast's policy differs by device: CUDA runs layer_norm/softmax/log_softmax in FP32,
# CPU runs them in the input dtype (bf16 in -> bf16 out). These are upcast here so the
# numerically sensitive ops are FP32 on every device, as the chapter's recipe says.
FP32_FUNCTIONS = frozenset({
    F.layer_norm, F.group_norm, F.softmax, F.log_softmax, F.cross_entropy, F.nll_loss,
    torch.layer_norm, torch.softmax, torch.log_softmax, torch.Tensor.softmax, torch.Tensor.log_softmax,
})


def _upcast(value: Any) -> Any:
    if torch.is_tensor(value) and value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    return value


class UpcastSensitiveOps(TorchFunctionMode):
    """Run normalisation, softmax and losses in FP32 inside an autocast region."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FP32_FUNCTIONS:
            args, kwargs = tree_map(_upcast, (args, kwargs))
        return func(*args, **kwargs)


@contextlib.contextmanager
def autocast(device: torch.device, precision: Precision | str) -> Iterator[None]:
    """Autocast region for the run's device, with LayerNorm/softmax/loss kept in FP32.

    FP32 is plain FP32 (autocast disabled). Weights are never cast in place: autocast
    casts copies for each matmul, so the optimizer keeps updating FP32 master weights.
    """
    precision = Precision(precision)
    if precision is Precision.FP32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=precision.dtype), UpcastSensitiveOps():
        yield


def make_grad_scaler(device: torch.device, precision: Precision | str, init_scale: float = INIT_SCALE,
                     growth_factor: float = GROWTH_FACTOR, backoff_factor: float = BACKOFF_FACTOR,
                     growth_interval: int = 2000, enabled: bool | None = None) -> torch.amp.GradScaler:
    """Dynamic loss scaler; enabled by default only for FP16 (BF16 has FP32's exponent range)."""
    if enabled is None:
        enabled = Precision(precision) is Precision.FP16
    return torch.amp.GradScaler(device.type, init_scale=init_scale, growth_factor=growth_factor,
                                backoff_factor=backoff_factor, growth_interval=growth_interval,
                                enabled=enabled)


def cpu_precision_support(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """Does this CPU have native bf16/fp16 arithmetic (AVX512-BF16, AMX, AVX512-FP16)?"""
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    flags = cpu_flags(cpuinfo)
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    bf16 = sorted(flags & {"avx512_bf16", "amx_bf16"})
    fp16 = sorted(flags & {"avx512_fp16", "amx_fp16"})
    return {"cpu": model.group(1).strip() if model else "unknown", "bf16_flags": bf16, "fp16_flags": fp16,
            "native_bf16": bool(bf16), "native_fp16": bool(fp16), "amx": "amx_tile" in flags,
            "avx512": "avx512f" in flags}


# CPU flags that decide how fast fp32, bf16 and fp16 matmuls can be
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")


def low_precision_slowdown(device: torch.device | str | None = None) -> dict[str, Any]:
    """How many times slower a training step is under bf16 and fp16 autocast than in fp32 here.

    Measured once per process and device (a few seconds: fwd + bwd of a 2-layer Transformer,
    d=128, 512 tokens, best of 3 after a warm-up), returned with the CPU's flags. On a CPU
    without bf16/fp16 units (AVX2 only) autocast is tens of times slower than fp32: a chapter
    trains its long runs in fp32 where its precision is in ``avoid_for_long_runs`` (more than
    2x fp32's time) and keeps the 16-bit runs short.
    """
    device = torch.device(device if device is not None else "cpu")
    return _measured_slowdown(device)


@functools.cache
def _measured_slowdown(device: torch.device, d_model: int = 128, seq: int = 128, batch: int = 4,
                       vocab: int = 1024, repeats: int = 3) -> dict[str, Any]:
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the caller's RNG stays
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(d_model, 4, 4 * d_model, dropout=0.0, batch_first=True, norm_first=True)
        model = nn.Sequential(nn.Embedding(vocab, d_model), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                              nn.Linear(d_model, vocab)).to(device)
        tokens = torch.randint(0, vocab, (batch, seq)).to(device)

    def step_seconds(precision: Precision) -> float:
        samples = []
        for _ in range(repeats + 1):  # the first one selects kernels and fills autocast's cast cache
            start = time.perf_counter()
            with autocast(device, precision):
                loss = F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
            loss.backward()
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            samples.append(time.perf_counter() - start)
        return min(samples[1:])

    seconds = {p: step_seconds(p) for p in Precision}
    support, flags = cpu_precision_support(), cpu_flags()
    bf16, fp16 = seconds[Precision.BF16] / seconds[Precision.FP32], seconds[Precision.FP16] / seconds[Precision.FP32]
    return {"device": str(device), "cpu": support["cpu"], "cpu_flags": [f for f in CPU_FLAGS if f in flags],
            "native_bf16": support["native_bf16"], "native_fp16": support["native_fp16"],
            "fp32_step_ms": 1e3 * seconds[Precision.FP32], "bf16_vs_fp32": bf16, "fp16_vs_fp32": fp16,
            # a 16-bit long run that costs more than twice fp32's time is not worth it
            "avoid_for_long_runs": [p for p, ratio in (("bf16", bf16), ("fp16", fp16)) if ratio > 2.0],
            "model": f"2-layer Transformer d{d_model}, {batch}x{seq} tokens, vocab {vocab}, fwd+bwd"}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """Every flag /proc/cpuinfo lists for this CPU (empty where there is none)."""
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    found = re.search(r"^flags\s*:(.*)$", text, re.M)
    return set(found.group(1).split()) if found else set()


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


def apply_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler) -> bool:
    """Backward with the (possibly disabled) scaler and step; True if the step was skipped.

    GradScaler unscales the gradients, skips optimizer.step() when any is inf/NaN, and
    multiplies the scale by backoff_factor; after growth_interval clean steps it grows.
    """
    scaler.scale(loss).backward()
    scale_before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)  # free gradients before the next forward
    return scaler.is_enabled() and scaler.get_scale() < scale_before


def module_output_dtypes(model: nn.Module, batch: Any, loss_fn: LossFn, device: torch.device,
                         precision: Precision | str) -> dict[str, str]:
    """Module class -> dtype of its output in one autocast forward (e.g. LayerNorm: float32)."""
    seen: dict[str, str] = {}

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        if torch.is_tensor(output) and output.is_floating_point():
            seen.setdefault(type(module).__name__, str(output.dtype).replace("torch.", ""))

    handles = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    try:
        with torch.no_grad(), autocast(device, precision):
            seen["loss"] = str(loss_fn(model, batch).dtype).replace("torch.", "")
    finally:
        for h in handles:
            h.remove()
    return seen


def gradients(model: nn.Module, batch: Any, loss_fn: LossFn, device: torch.device,
              precision: Precision | str, loss_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Parameter gradients of one backward under autocast, with the loss multiplied by
    loss_scale before backward and the gradients divided by it afterwards (what GradScaler does)."""
    model.zero_grad(set_to_none=True)
    with autocast(device, precision):
        loss = loss_fn(model, batch)
    (loss * loss_scale).backward()
    grads = {name: p.grad.detach() / loss_scale for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def gradient_underflow(model: nn.Module, batch: Any, loss_fn: LossFn, device: torch.device,
                       loss_scale: float = INIT_SCALE) -> list[dict[str, Any]]:
    """Per parameter: gradient elements that are non-zero in FP32 but exactly zero under
    FP16 autocast, without loss scaling and with ``loss_scale`` (counts and fractions)."""
    reference = gradients(model, batch, loss_fn, device, Precision.FP32)
    unscaled = gradients(model, batch, loss_fn, device, Precision.FP16)
    scaled = gradients(model, batch, loss_fn, device, Precision.FP16, loss_scale)
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


def train_run(model: nn.Module, batches: Iterable[Any], loss_fn: LossFn, device: torch.device,
              precision: Precision | str, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler | None = None) -> PrecisionRun:
    """Train ``model`` (FP32 master weights) over ``batches`` under autocast at ``precision``."""
    precision = Precision(precision)
    scaler = scaler if scaler is not None else make_grad_scaler(device, precision)
    run = PrecisionRun(precision.value)
    model.train()
    for step, batch in enumerate(batches, start=1):
        start = time.perf_counter()
        with autocast(device, precision):
            loss = loss_fn(model, batch)
        run.scale.append(scaler.get_scale() if scaler.is_enabled() else 1.0)
        if apply_step(loss, optimizer, scaler):
            run.skipped.append(step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        run.step_s.append(time.perf_counter() - start)
        run.loss.append(loss.item())
    return run


# torch.profiler memory categories, grouped into the two halves of the 40% question
MODEL_STATE_CATEGORIES = ("PARAMETER", "GRADIENT", "OPTIMIZER_STATE")


def memory_split(model: nn.Module, batch: Any, loss_fn: LossFn, device: torch.device,
                 precision: Precision | str, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Tensor memory at the peak of one training step, split by torch.profiler's categories.

    The profiler tags every allocation (parameter, gradient, optimizer state, activation,
    autograd detail, temporary, input); model states = parameters + gradients + optimizer
    state, activations = everything else alive at the peak (autocast's low-precision
    weight copies included). The step before profiling creates the optimizer state.
    """
    import json
    import tempfile

    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX

    scaler = make_grad_scaler(device, precision)

    def step() -> None:
        with autocast(device, precision):
            loss = loss_fn(model, batch)
        apply_step(loss, optimizer, scaler)

    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
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
