"""A small metric registry (lm-evaluation-harness style): name -> loader.

The metric modules live in this repository (dslib/eval/metrics/<name>/<name>.py) and load
with `evaluate.load(<folder>)`, which works offline; `evaluate.load("bleu")` would go to
the hub and fail. Other loaders (any callable returning an evaluate module) can be added
with `register_metric`.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any


@functools.lru_cache(maxsize=1)
def evaluate_module():
    """``evaluate``, imported on first use without ``transformers.pipelines``.

    ``import evaluate`` imports its Evaluator, which imports transformers.pipelines when
    transformers is installed (sentence-transformers brings it): measured 50 s on the
    loaded 2-core machine against 13 s without. The Evaluator is the one part of
    ``evaluate`` this book does not use, and it degrades to "transformers unavailable".
    The block is held only while ``evaluate`` imports, and only if nothing imported either
    before: importing this module changes nothing.
    """
    if "evaluate" in sys.modules or "transformers.pipelines" in sys.modules:
        import evaluate
        return evaluate
    sys.modules["transformers.pipelines"] = None  # makes that import raise ImportError
    try:
        import evaluate
    finally:
        del sys.modules["transformers.pipelines"]  # a later real import still works
    return evaluate


METRICS_DIR = Path(__file__).parent / "metrics"
_LOADERS: dict[str, Callable[..., Any]] = {}


def register_metric(name: str, loader: Callable[..., Any]) -> None:
    """Add a loader (any callable returning an ``evaluate`` module) under ``name``."""
    if name in _LOADERS:
        raise ValueError(f"metric {name!r} is already registered")
    _LOADERS[name] = loader


def available_metrics() -> list[str]:
    return sorted(_LOADERS)


def metric_path(name: str) -> Path:
    """The folder of a module shipped in dslib/eval/metrics."""
    return METRICS_DIR / name


def load_metric(name: str, **kwargs: Any) -> Any:
    """Load a registered metric; kwargs go to its loader (e.g. experiment_id)."""
    if name not in _LOADERS:
        raise KeyError(f"unknown metric {name!r}; available: {', '.join(available_metrics())}")
    return _LOADERS[name](**kwargs)


def hub_load_error(name: str) -> str:
    """What ``evaluate.load(name)`` (a hub name, as the article writes it) raises here, or "" if it
    loads: offline, the hub is unreachable by design."""
    try:
        evaluate_module().load(name)
    except Exception as error:  # FileNotFoundError / ConnectionError: whatever the hub path raises
        return f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
    return ""


def combine(names: list[str]) -> Any:
    """`evaluate.combine` over registered metrics (they must take the same inputs)."""
    return evaluate_module().combine([load_metric(n) for n in names])


def _load_shipped(folder: Path, **kwargs: Any) -> Any:
    return evaluate_module().load(str(folder), **kwargs)


for _folder in sorted(p for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").exists()):
    register_metric(_folder.name, partial(_load_shipped, _folder))
