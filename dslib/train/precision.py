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
import re
from enum import Enum
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

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
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split()) if "flags" in text else set()
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    bf16 = sorted(flags & {"avx512_bf16", "amx_bf16"})
    fp16 = sorted(flags & {"avx512_fp16", "amx_fp16"})
    return {"cpu": model.group(1).strip() if model else "unknown", "bf16_flags": bf16, "fp16_flags": fp16,
            "native_bf16": bool(bf16), "native_fp16": bool(fp16), "amx": "amx_tile" in flags,
            "avx512": "avx512f" in flags}
