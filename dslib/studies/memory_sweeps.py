"""Chapter 09's memory sweeps: peak training memory and step time per activation-checkpoint
interval, and the plain against the MLP-shared model, each configuration in a fresh process.

Why a fresh process: the allocator keeps freed memory, so configurations measured one after
another in one process would hide each other. Each configuration runs
``python -m dslib.studies.memory_sweeps`` alone, its steps inside ``peak_memory``
(dslib.train.memory); step times are measured separately, in the calling process with the
normal allocator, round-robin over the configurations.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from dslib.data.synthetic import markov_tokens
from dslib.env import device, python_path, synchronize
from dslib.model import build_model, load_config
from dslib.train import TrainConfig, Trainer
from dslib.train.memory import peak_memory
from dslib.train.step import OptimizerStepper, train_step
from dslib.tune.checkpointing import apply_recompute, modelled_activation_bytes, modelled_recompute_overhead
from dslib.tune.sharing import share_mlp, unique_parameter_count
from dslib.units import MB


def measure_in_this_process(model: str, model_overrides: dict[str, Any], checkpoint_every: int | None,
                            share_group: int | None, batch_size: int, steps: int, seed: int,
                            checkpoint_scheme: str = "every_kth") -> dict[str, Any]:
    """Build, tune and train ``steps`` steps (>= 2: the second is the first with AdamW states
    and activations alive together); peak memory above the pre-model baseline."""
    # a first step loads kernels, thread pools and lazy caches (~100 MB, whatever the model):
    # run it on a throw-away copy, free it, then start counting
    args = (model, model_overrides, checkpoint_every, share_group, batch_size, seed, checkpoint_scheme)
    train_step(*_tuned_setup(*args))
    with peak_memory(device()) as peak:
        net, batch, stepper = _tuned_setup(*args)
        for _ in range(steps):
            train_step(net, batch, stepper)
        peak_bytes = peak()
    scheme = _scheme(checkpoint_scheme, checkpoint_every)
    return {"model": model, "scheme": scheme or "none", "checkpoint_every": checkpoint_every, "share_group": share_group,
            "params": unique_parameter_count(net), "peak_MB": peak_bytes / MB}


def _scheme(scheme: str, every: int | None) -> str | None:
    """The recompute scheme that runs: selective needs no k, the other two nothing without one."""
    return scheme if scheme == "selective" or every is not None else None


def _tuned_setup(model: str, model_overrides: dict[str, Any], checkpoint_every: int | None,
                 share_group: int | None, batch_size: int, seed: int, checkpoint_scheme: str = "every_kth"):
    """(model, batch, stepper) of one configuration: the model seeded, tuned, on the device; a
    batch of random tokens as inputs and targets; AdamW."""
    config = load_config(model, **model_overrides)
    net = build_model(config, seed)
    if share_group:
        share_mlp(net, share_group)
    apply_recompute(net, _scheme(checkpoint_scheme, checkpoint_every), checkpoint_every)
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
            steps: int = 2, seed: int = 0, timeout: float = 300, checkpoint_scheme: str = "every_kth") -> dict[str, Any]:
    """``measure_in_this_process`` in a fresh Python process; returns its result.

    An identical configuration is measured once per calling process (the result is cached).
    """
    args = dict(model=model, model_overrides=model_overrides or {}, checkpoint_every=checkpoint_every,
                share_group=share_group, batch_size=batch_size, steps=steps, seed=seed,
                checkpoint_scheme=checkpoint_scheme)
    key = json.dumps(args, sort_keys=True)
    if key not in _measured:
        _measured[key] = _measure_fresh(args, timeout)
    return dict(_measured[key])


_measured: dict[str, dict[str, Any]] = {}


def _measure_fresh(args: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=python_path())
    proc = subprocess.run([sys.executable, "-m", "dslib.studies.memory_sweeps", json.dumps(args)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def checkpoint_sweep(everies: list[int | None], model: str = "tiny", model_overrides: dict[str, Any] | None = None,
                     batch_size: int = 8, timed_steps: int = 3) -> list[dict[str, Any]]:
    """Measured peak (fresh process) and step time (here) for each ``every`` (None: no
    checkpointing), next to the modelled activation bytes and recompute overhead."""
    return _recompute_sweep([("every_kth", every) for every in everies], model, model_overrides, batch_size,
                            timed_steps)


READING_SPECS = {"every_kth": "every_kth", "chunks": "chunks", "selective": "selective", "full": "every_kth"}


def checkpoint_readings(k: int = 4, model: str = "tiny", model_overrides: dict[str, Any] | None = None,
                        batch_size: int = 8, timed_steps: int = 3,
                        schemes: tuple[str, ...] = ("every_kth", "chunks", "selective", "full")) -> list[dict[str, Any]]:
    """The two readings of "checkpoint every k layers" (every_kth: every k-th block alone; chunks: chunks
    of k, all recomputed), selective recomputation and full checkpointing (every block), each of
    ``schemes`` against none: same model, same batches."""
    specs = [("every_kth", None)] + [(READING_SPECS[s], None if s == "selective" else 1 if s == "full" else k)
                                     for s in schemes]
    return _recompute_sweep(specs, model, model_overrides, batch_size, timed_steps)


def _recompute_sweep(specs: list[tuple[str, int | None]], model: str, model_overrides: dict[str, Any] | None,
                     batch_size: int, timed_steps: int) -> list[dict[str, Any]]:
    config = load_config(model, **(model_overrides or {}))
    with ThreadPoolExecutor(max_workers=2) as pool:  # two fresh processes at a time: peaks are per process
        rows = list(pool.map(lambda spec: measure(model, model_overrides, spec[1], None, batch_size,
                                                  checkpoint_scheme=spec[0]), specs))
    configs = [dict(model=model, model_overrides=model_overrides or {}, checkpoint_every=every, share_group=None,
                    batch_size=batch_size, seed=0, checkpoint_scheme=scheme) for scheme, every in specs]
    for row, seconds in zip(rows, step_times(configs, timed_steps)):
        row["step_s"] = seconds
    plain = next((r for r in rows if r["scheme"] == "none"), rows[0])
    for row, (scheme, every) in zip(rows, specs):
        row["time_overhead"] = row["step_s"] / plain["step_s"] - 1
        row["memory_saved_MB"] = plain["peak_MB"] - row["peak_MB"]
        row["modelled_activations_MB"] = modelled_activation_bytes(config, batch_size, every, scheme=scheme) / MB
        row["modelled_recompute"] = modelled_recompute_overhead(config, every, scheme=scheme)
    return rows


def tuned_peaks_MB(readings: tuple[str, ...], every: int, share_group: int, model: str = "tiny",
                   model_overrides: dict[str, Any] | None = None, batch_size: int = 8) -> dict[str, float]:
    """Peak MB (fresh process) of checkpointing every ``every`` layers, in each reading (scheme), plus
    MLPs shared by ``share_group`` layers: chapter 09's tuned run."""
    return {reading: measure(model, model_overrides, every, share_group, batch_size,
                             checkpoint_scheme=reading)["peak_MB"] for reading in readings}


def compare_sharing(group_size: int, model: str = "tiny", model_overrides: dict | None = None,
                    steps: int = 60, batch_size: int = 8, lr: float = 2e-3, seed: int = 0) -> dict[str, dict]:
    """Train the plain and the MLP-shared model the same steps on the same Markov stream.

    Returns, per variant, its parameter count, losses per step, and the measured peak
    training memory of a step (``measure``, fresh process).
    """
    config = load_config(model, **(model_overrides or {}))
    tokens = markov_tokens(config.vocab_size, (steps + 2) * config.seq_len * batch_size, seed=seed)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, seq_len=config.seq_len, lr=lr, min_lr=lr / 10,
                      warmup_steps=min(10, steps), eval_every=0, log_every=steps, use_memory=False,
                      progress=False, seed=seed)
    results = {}
    for name, group in (("plain", None), (f"shared_mlp_x{group_size}", group_size)):
        net = build_model(config, seed)
        if group:
            share_mlp(net, group)
        losses = Trainer(net, cfg, tokens).fit().losses  # dslib.env.device()
        peak = measure(model, model_overrides, None, group, batch_size, seed=seed)["peak_MB"]
        results[name] = {"params": unique_parameter_count(net), "losses": losses, "peak_MB": peak}
    return results


if __name__ == "__main__":
    print(json.dumps(measure_in_this_process(**json.loads(sys.argv[1]))))
