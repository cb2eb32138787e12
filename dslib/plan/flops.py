"""Training FLOPs and time: 6N per token plus attention, MFU, time to train D tokens on G devices.

Takes plain numbers so it fits any model; dslib.model.flops counts the Transformer-XL config itself.
"""
from __future__ import annotations

# Dense 16-bit tensor-core peak per device (vendor datasheets, no sparsity), FLOP/s.
PEAK_FLOPS: dict[str, float] = {
    "V100 fp16": 125e12,
    "A100 bf16": 312e12,
    "H100 SXM bf16": 989e12,
    "H200 bf16": 989e12,
    # H800 SXM: H100 SXM's compute (its NVLink and FP64 cut); H100 SXM datasheet 1,979 / 3,958
    # TFLOPS bf16 / fp8 "with sparsity", half without: 989.4 / 1978.9 (1,830 MHz tensor clock)
    "H800 bf16": 989.4e12,
    "H800 fp8": 1978.9e12,
}


def training_flops_per_token(n_params: float, layers: int, hidden: int, seq_len: int,
                             memory_length: int = 0, recompute: bool = False) -> float:
    """FLOPs to train on one token: 6N + 12*L*h*k (PaLM, Chowdhery et al. 2022, appendix B).

    6N: forward 2N multiply-adds per token, backward twice that. Attention scores and their
    weighted sum add 2*2*h*k forward per layer and token over k keys (x3 with backward); with a
    Transformer-XL memory a query sees k = seq_len + memory_length keys. Full recomputation runs
    the forward once more: 8N + 16*L*h*k hardware FLOPs (the model FLOPs of MFU stay 6N + 12Lhk).
    """
    for name, value in (("n_params", n_params), ("layers", layers), ("hidden", hidden), ("seq_len", seq_len)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if memory_length < 0:
        raise ValueError(f"memory_length must be >= 0, got {memory_length}")
    keys = seq_len + memory_length
    passes = 4 if recompute else 3  # forward (+ recomputed forward) + backward (2 forwards' worth)
    return passes * (2 * n_params + 4 * layers * hidden * keys)


def step_compute_time(tokens_per_device: float, flops_per_token: float, peak_flops: float,
                      mfu: float) -> float:
    """Seconds of compute for one step of ``tokens_per_device`` tokens at utilisation ``mfu``."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    return tokens_per_device * flops_per_token / (peak_flops * mfu)


def train_time(tokens: float, flops_per_token: float, n_devices: int, peak_flops: float,
               mfu: float) -> float:
    """Seconds to train on ``tokens`` tokens with ``n_devices`` devices of ``peak_flops`` at ``mfu``."""
    if n_devices <= 0:
        raise ValueError(f"n_devices must be positive, got {n_devices}")
    return step_compute_time(tokens / n_devices, flops_per_token, peak_flops, mfu)


def model_flops_utilisation(tokens_per_s: float, flops_per_token: float, n_devices: int,
                            peak_flops: float) -> float:
    """MFU: achieved model FLOP/s over the devices' peak (Chowdhery et al. 2022, appendix B)."""
    return tokens_per_s * flops_per_token / (n_devices * peak_flops)
