"""Config files, one way: read (YAML or JSON), merge overrides, validate with pydantic.

Every config of the book (model, DeepSeek model, data pipeline, DeepSpeed, end to end) loads
through ``load(schema, name_or_path, folder, suffix, kind, overrides)``: a name is looked up in
its folder (an unknown one lists the known names), overrides merge section by section, and a
bad value raises ``ConfigError`` naming the file and the field, before any compute. Sections
derive from ``Strict``, so a misspelt key is an error too. YAML is read with Python's exponent
floats (``1e-3``), which YAML 1.1 leaves as strings.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

Schema = TypeVar("Schema", bound=BaseModel)


class ConfigError(ValueError):
    """A config that does not validate; the message names the file (or origin) and each bad field."""


class Strict(BaseModel):
    """A config section in which an unknown key is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class _Loader(yaml.SafeLoader):
    """YAML with Python's exponent floats (``1e-3``), which YAML 1.1 leaves as strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"))


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


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


def validate(schema: type[Schema], data: Any, origin: str) -> Schema:
    """``schema`` built from ``data``, or a ConfigError that starts with ``origin`` (a file)."""
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{origin}: {validation_message(error)}") from None


def read_file(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text()) if path.suffix == ".json" else read_yaml(path.read_text())
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of fields, got {type(data).__name__}")
    return data or {}


def load(schema: type[Schema], name_or_path: str | Path, folder: Path, suffix: str = ".yaml", kind: str = "",
         overrides: dict[str, Any] | None = None) -> Schema:
    """The config ``folder/<name><suffix>`` (or a path) with ``overrides`` merged in, validated.
    A schema with a ``name`` field gets the file's stem when the file sets none."""
    path = config_path(name_or_path, folder, suffix, kind or schema.__name__)
    raw = read_file(path)
    if "name" in schema.model_fields:
        raw.setdefault("name", path.stem)
    return validate(schema, deep_merge(raw, overrides or {}), str(path))
