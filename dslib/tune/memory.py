"""Peak training memory and step time of one configuration, each in a fresh process.

Why a fresh process: the allocator keeps freed memory, so configurations measured one
after another in one process would hide each other. Each configuration runs ``python -m
dslib.tune.memory`` alone, and its steps run inside ``peak_memory``. On a CPU that is
``rss_follows_tensors``: glibc's mmap threshold is pinned at 64 KiB, so every tensor
larger than that is mapped on allocation and returned on free (RSS follows the live
tensors, not the allocator's cache), and the kernel's peak-RSS mark is reset
(``echo 5 > /proc/self/clear_refs``, Linux >= 4.0), so imports and the warm-up do not
count: peak RSS (VmHWM) minus the RSS at that moment is the training memory of the steps
(weights, gradients, AdamW states, activations, temporaries). On a GPU it is the CUDA
allocator's peak. Fresh mappings are slow, so step times are measured separately, in the
calling process with the normal allocator. Where configurations must share a process
(DeepSpeed engines on launched ranks), ``peak_memory`` wraps the measured steps only.
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from dslib.env import REPO_ROOT, device, synchronize
from dslib.train.step import train_step

MB = 1e6


def _status_bytes(field: str) -> int:
    """VmRSS / VmHWM of this process from /proc/self/status (reported in kB)."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> int:
    """Reset the peak-RSS mark to the current RSS; returns that RSS (the baseline)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_bytes("VmRSS")


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


@contextmanager
def rss_follows_tensors() -> Iterator[Callable[[], int]]:
    """Inside: allocations over 64 KiB are mapped on allocation and returned on free, so RSS
    follows the live tensors; yields a function giving the peak RSS above the RSS at entry.

    Heap memory freed before entry is returned first (malloc_trim). On exit, large
    allocations come from the heap again and stay there (fast), until the next entry.
    """
    libc = ctypes.CDLL(None)
    gc.collect()
    libc.malloc_trim(0)
    libc.mallopt(M_MMAP_THRESHOLD, 64 << 10)
    baseline = _reset_peak()
    try:
        yield lambda: _status_bytes("VmHWM") - baseline
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)


@contextmanager
def peak_memory(device) -> Iterator[Callable[[], int]]:
    """Peak tensor memory above the memory at entry: the CUDA allocator's statistics on a GPU,
    ``rss_follows_tensors`` on a CPU."""
    import torch

    if device.type != "cuda":
        with rss_follows_tensors() as peak:
            yield peak
        return
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    yield lambda: torch.cuda.max_memory_allocated(device) - baseline


def measure_in_this_process(model: str, model_overrides: dict[str, Any], checkpoint_every: int | None,
                            share_group: int | None, batch_size: int, steps: int, seed: int) -> dict[str, Any]:
    """Build, tune and train ``steps`` steps (>= 2: the second is the first with AdamW states
    and activations alive together); peak memory above the pre-model baseline."""
    from dslib.tune.sharing import unique_parameter_count

    # a first step loads kernels, thread pools and lazy caches (~100 MB, whatever the model):
    # run it on a throw-away copy, free it, then start counting
    args = (model, model_overrides, checkpoint_every, share_group, batch_size, seed)
    train_step(*_tuned_setup(*args))
    with peak_memory(device()) as peak:
        net, batch, stepper = _tuned_setup(*args)
        for _ in range(steps):
            train_step(net, batch, stepper)
        peak_bytes = peak()
    return {"model": model, "checkpoint_every": checkpoint_every, "share_group": share_group,
            "params": unique_parameter_count(net), "peak_MB": peak_bytes / MB}


def _tuned_setup(model: str, model_overrides: dict[str, Any], checkpoint_every: int | None,
                 share_group: int | None, batch_size: int, seed: int):
    """(model, batch, stepper) of one configuration: the model seeded, tuned, on the device; a
    batch of random tokens as inputs and targets; AdamW."""
    import torch

    from dslib.model import build_model, load_config
    from dslib.train.step import OptimizerStepper
    from dslib.tune.checkpointing import apply_checkpointing
    from dslib.tune.sharing import share_mlp

    config = load_config(model, **model_overrides)
    net = build_model(config, seed)
    if share_group:
        share_mlp(net, share_group)
    apply_checkpointing(net, checkpoint_every)
    net.to(device())
    idx = torch.randint(0, config.vocab_size, (batch_size, config.seq_len)).to(device())
    return net, (idx, idx), OptimizerStepper(torch.optim.AdamW(net.parameters(), lr=1e-4))


def step_times(configs: list[dict[str, Any]], rounds: int = 3) -> list[float]:
    """Fastest step of each configuration (``_tuned_setup`` keyword dicts), timed round-robin
    in this process after one warm-up step each: a slow phase of a shared machine then hits
    every configuration alike instead of whichever ran during it."""
    setups = [_tuned_setup(**config) for config in configs]
    for setup in setups:
        train_step(*setup)
    best = [float("inf")] * len(setups)
    for _ in range(rounds):
        for i, setup in enumerate(setups):
            start = time.perf_counter()
            train_step(*setup)
            synchronize()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def measure(model: str = "tiny", model_overrides: dict[str, Any] | None = None,
            checkpoint_every: int | None = None, share_group: int | None = None, batch_size: int = 8,
            steps: int = 2, seed: int = 0, timeout: float = 300) -> dict[str, Any]:
    """``measure_in_this_process`` in a fresh Python process; returns its result.

    An identical configuration is measured once per calling process (the result is cached).
    """
    args = dict(model=model, model_overrides=model_overrides or {}, checkpoint_every=checkpoint_every,
                share_group=share_group, batch_size=batch_size, steps=steps, seed=seed)
    key = json.dumps(args, sort_keys=True)
    if key not in _measured:
        _measured[key] = _measure_fresh(args, timeout)
    return dict(_measured[key])


_measured: dict[str, dict[str, Any]] = {}


def _measure_fresh(args: dict[str, Any], timeout: float) -> dict[str, Any]:
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    proc = subprocess.run([sys.executable, "-m", "dslib.tune.memory", json.dumps(args)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def checkpoint_sweep(everies: list[int | None], model: str = "tiny", model_overrides: dict[str, Any] | None = None,
                     batch_size: int = 8, timed_steps: int = 3) -> list[dict[str, Any]]:
    """Measured peak (fresh process) and step time (here) for each ``every`` (None: no
    checkpointing), next to the modelled activation bytes and recompute overhead."""
    from dslib.model import load_config
    from dslib.tune.checkpointing import modelled_activation_bytes, modelled_recompute_overhead

    config = load_config(model, **(model_overrides or {}))
    with ThreadPoolExecutor(max_workers=2) as pool:  # two fresh processes at a time: peaks are per process
        rows = list(pool.map(lambda every: measure(model, model_overrides, every, None, batch_size), everies))
    configs = [dict(model=model, model_overrides=model_overrides or {}, checkpoint_every=every, share_group=None,
                    batch_size=batch_size, seed=0) for every in everies]
    for row, seconds in zip(rows, step_times(configs, timed_steps)):
        row["step_s"] = seconds
    plain = next((r for r in rows if r["checkpoint_every"] is None), rows[0])
    for row in rows:
        row["time_overhead"] = row["step_s"] / plain["step_s"] - 1
        row["memory_saved_MB"] = plain["peak_MB"] - row["peak_MB"]
        row["modelled_activations_MB"] = modelled_activation_bytes(config, batch_size, row["checkpoint_every"]) / MB
        row["modelled_recompute"] = modelled_recompute_overhead(config, row["checkpoint_every"])
    return rows


if __name__ == "__main__":
    print(json.dumps(measure_in_this_process(**json.loads(sys.argv[1]))))
