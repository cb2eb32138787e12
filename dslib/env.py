"""The one place that decides the process environment: offline mode, op cache, device.

Every path (notebooks, launcher workers, tests) goes through these functions,
so CPU/gloo versus CUDA/nccl is chosen here and nowhere else.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

OFFLINE_VARS = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    # tokenizers forks badly inside datasets.map workers when its pool is already up
    "TOKENIZERS_PARALLELISM": "false",
}


RUN_DIR_VAR = "DSLIB_RUN_DIR"  # set by dslib.jobs.runner for the kernel of a headless run


def headless() -> bool:
    """True inside a run of ``dslib run``/``cookbook``/``submit``: nobody watches the notebook."""
    return bool(os.environ.get(RUN_DIR_VAR))


def set_offline() -> None:
    """Set the offline variables (without overriding what a user set) and the op cache."""
    for name, value in OFFLINE_VARS.items():
        os.environ.setdefault(name, value)
    # Idle OpenMP threads sleep instead of spinning: with several processes on few cores
    # (ranks, kernels, a busy machine) spinning threads made a smoke notebook 18x slower.
    # It reaches the processes started from here (kernels, ranks); torch reads it at load.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # torch's profiler (chapters 07 and 09 read memory with it) prints two status lines per use
    # at every kineto level below 6, flooding notebook and cookbook logs; set it lower to see them
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    # Hugging Face's own bars (transformers' "Loading weights") are tqdm.auto widgets: headless,
    # the executed notebook keeps their first frame, "0/103"; dslib's bars print lines instead.
    if headless():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # DeepSpeed's C++ ops JIT-compile on first use (30-210 s each): keep them in one
    # persistent folder so notebooks, tests and CI in one checkout compile them once.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache_dir() / "torch_extensions"))
    # The build tools come from this interpreter's environment first: ninja rebuilds every
    # cached op when its own command line changes, which a different ninja on PATH (system
    # versus venv, activated or not) does.
    bin_dir = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = os.pathsep.join(filter(None, [bin_dir, os.environ.get("PATH")]))


def cache_dir() -> Path:
    """Project cache (tokenizers, op builds): DSLIB_CACHE or <repo>/.cache."""
    path = Path(os.environ.get("DSLIB_CACHE", REPO_ROOT / ".cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def outputs_dir() -> Path:
    return Path(os.environ.get("DSLIB_OUTPUTS", REPO_ROOT / "outputs"))


def device():
    """The device every chapter runs on: cuda:LOCAL_RANK when CUDA exists, else cpu."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def synchronize(where=None) -> None:
    """Wait for the device's queued work (a no-op on a CPU), so that a timer sees it: CUDA
    kernels run asynchronously. ``where``: a torch.device, default ``device()``."""
    import torch

    where = device() if where is None else where
    if where.type == "cuda":
        torch.cuda.synchronize(where)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python's random."""
    import random

    import numpy as np
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def dist_backend() -> str:
    """nccl on CUDA, gloo on CPU."""
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"
