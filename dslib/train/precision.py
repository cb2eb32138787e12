"""Mixed precision: the autocast policy (sensitive ops in FP32) and the dynamic loss scaler.

Current API: ``torch.autocast(device_type, dtype)`` and ``torch.amp.GradScaler(device_type)``.
The article's ``torch.cuda.amp.autocast`` / ``torch.cuda.amp.GradScaler`` are deprecated
spellings of the same thing (CUDA-only; they warn on torch >= 2.4).

Under autocast the weights stay FP32 (the "master weights": the optimizer updates
them in FP32); matmuls and convolutions run in the low-precision dtype on casted
copies, while LayerNorm, softmax and cross-entropy are on autocast's FP32 list.
FP16 has a 5-bit exponent (smallest normal 6.1e-5, smallest subnormal 6e-8), so small
gradients flush to zero unless the loss is scaled up first; BF16 has FP32's 8-bit
exponent and needs no scaling. Chapter 07's measurements are in dslib.studies.mixed_precision.
"""
from __future__ import annotations

import contextlib
import functools
import re
import time
from enum import Enum
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from dslib.env import synchronize

# the article's loss-scaling settings
INIT_SCALE, GROWTH_FACTOR, BACKOFF_FACTOR = 2.0**15, 2.0, 0.5

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
    without bf16/fp16 units (AVX2 only) autocast runs emulated kernels, slower than fp32 by the
    factor this returns: a chapter trains its long runs in fp32 where its precision is in
    ``avoid_for_long_runs`` (more than 2x fp32's time) and keeps the 16-bit runs short.
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
            synchronize(device)
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
