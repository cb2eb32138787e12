"""Helpers shared by the config loaders (model YAML, DeepSpeed JSON)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import ValidationError


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied; nested sections merge key by key (inputs untouched)."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_path(name_or_path: str | Path, folder: Path, suffix: str, kind: str) -> Path:
    """A config by name (``folder/<name><suffix>``) or by path; a clear error lists the known names."""
    path = Path(name_or_path)
    if not path.suffix:
        path = folder / f"{name_or_path}{suffix}"
    if not path.exists():
        known = sorted(p.stem for p in folder.glob(f"*{suffix}"))
        raise FileNotFoundError(f"no {kind} config {str(name_or_path)!r}; known: {known}")
    return path


def validation_message(error: ValidationError) -> str:
    """pydantic's errors as one line, each naming its field: ``train.steps: Input should be ... (got 0)``."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})"
                     for e in error.errors())
