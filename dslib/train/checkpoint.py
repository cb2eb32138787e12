"""Checkpoints that survive SIGKILL: written atomically, read with ``weights_only=True``.

A checkpoint is ``<folder>/step_<8 digits>.pt``. It is written to a hidden temporary file in
the same folder, flushed and fsynced, then renamed over its final name (``os.replace`` is
atomic on POSIX), and the folder is fsynced so the rename itself is durable. A process
killed at any moment leaves either the previous checkpoints or the new one, plus at worst
a hidden ``.step_*.tmp`` file, which ``latest_checkpoint`` never matches.

RNG states are stored as tensors and plain containers, which is what ``weights_only``
loading accepts (no pickled numpy objects).
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dslib.io import atomic_path

CHECKPOINT_NAME = re.compile(r"^step_(\d{8})\.pt$")
TEMP_PREFIX = ".step_"


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step_{step:08d}.pt"


def save_checkpoint(state: dict[str, Any], folder: str | Path, step: int, keep: int | None = None) -> Path:
    """Write ``state`` as the checkpoint of ``step`` atomically; keep the newest ``keep``."""
    folder = Path(folder)
    path = checkpoint_path(folder, step)
    with atomic_path(path, durable=True) as tmp:  # a hidden .step_*.tmp until complete and fsynced
        torch.save(state, tmp)
    if keep is not None:
        for old in list_checkpoints(folder)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints in the folder, oldest first (temporary files never match)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: str | Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def remove_temp_files(folder: str | Path) -> list[Path]:
    """Delete temporary files a killed writer left behind (call only with no writer running)."""
    folder = Path(folder)
    stale = [p for p in folder.glob(f"{TEMP_PREFIX}*.tmp")] if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: str | Path, map_location: torch.device | str | None = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (tensors and plain containers only)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and python RNG states as tensors/plain values."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
