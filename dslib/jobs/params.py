"""Notebook parameters: profiles, files and -p values, checked before anything runs.

papermill only warns about an unknown parameter name and writes it into the injected
cell as code, so ``-p "x = 1; import os" 1`` would execute. Here every name must be one the
notebook declares in its ``parameters`` cell, and every value is converted to the type
of the notebook's default; anything else is an error naming the parameter.

Values are read as YAML, but numbers as Python reads them: YAML 1.1 (PyYAML) takes ``1e-3``
and ``3E-3`` for strings; here every exponent form Python reads is a float
(in -p values, lists, profiles and parameter files alike), and a float parameter accepts
every form ``float()`` accepts (``inf``, ``nan``, ``1_000.0``). Ints stay strict: ``7.0`` or
``1e3`` for an int parameter is an error.
"""
from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Any

import yaml

from dslib.env import REPO_ROOT

PROFILES_DIR = REPO_ROOT / "configs" / "profiles"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
GIVEN_VAR = "DSLIB_GIVEN_PARAMETERS"  # names the runner injected (profile, -f file, -p), for the kernel
DEFAULT_PROFILE = "cpu"
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class _Loader(yaml.SafeLoader):
    """YAML with Python's exponent floats (``1e-3``), which YAML 1.1 leaves as strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"))


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


class ParameterError(ValueError):
    """A parameter name, value or profile the notebook cannot accept."""


def declared_parameters(notebook: str | Path) -> dict[str, Any]:
    """Name -> default value of the notebook's ``parameters`` cell (papermill's inspection)."""
    import papermill as pm

    declared = pm.inspect_notebook(str(notebook))
    if not declared:
        raise ParameterError(f"{notebook}: no cell tagged 'parameters'")
    defaults = {}
    for name, info in declared.items():
        try:
            defaults[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            defaults[name] = info["default"]  # an expression: keep its source text
    return defaults


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def profile_overrides(profile: str, stem: str) -> dict[str, Any]:
    """A profile's ``default`` section merged with its section for notebook ``stem``."""
    path = PROFILES_DIR / f"{profile}.yaml"
    if not path.exists():
        raise ParameterError(f"unknown profile {profile!r}; available: {', '.join(available_profiles())}")
    sections = _load_yaml(path.read_text()) or {}
    if not isinstance(sections, dict):
        raise ParameterError(f"{path}: expected a mapping of notebook stem -> parameters")
    merged: dict[str, Any] = {}
    for key in ("default", stem):
        section = sections.get(key) or {}
        if not isinstance(section, dict):
            raise ParameterError(f"{path}: section {key!r} must map parameter names to values")
        merged.update(section)
    return merged


def convert(name: str, raw: Any, default: Any) -> Any:
    """Convert ``raw`` (a CLI string or a YAML value) to the type of ``default``."""
    target = type(default)
    if raw is None or (isinstance(raw, str) and target is not str and raw in ("None", "null")):
        return None  # "no value" (e.g. no document limit) is allowed for any parameter
    if default is None:
        return _load_yaml(raw) if isinstance(raw, str) else raw
    if isinstance(raw, str) and target is not str:
        if target is bool:
            if raw.lower() in _TRUE | _FALSE:
                return raw.lower() in _TRUE
            raise ParameterError(f"parameter {name!r}: {raw!r} is not a boolean (true/false)")
        if target is float:
            try:
                return float(raw)
            except ValueError:
                pass  # ".inf" and other YAML spellings, or an error below
        try:
            raw = _load_yaml(raw)
        except yaml.YAMLError as err:
            raise ParameterError(f"parameter {name!r}: cannot parse {raw!r}: {err}") from None
    if target is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if target is bool and not isinstance(raw, bool):
        raise ParameterError(f"parameter {name!r}: {raw!r} is not a boolean (true/false)")
    if target in (int, float) and isinstance(raw, bool):
        raise ParameterError(f"parameter {name!r}: expected {target.__name__}, got a boolean")
    if target is tuple and isinstance(raw, list):
        return tuple(raw)
    if not isinstance(raw, target):
        raise ParameterError(f"parameter {name!r}: expected {target.__name__} like the default "
                             f"{default!r}, got {raw!r}")
    return raw


def resolve(notebook: str | Path, profile: str = DEFAULT_PROFILE, params_file: str | Path | None = None,
            cli: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """The parameters to inject: profile < params file < -p, each name checked and typed."""
    notebook = Path(notebook)
    defaults = declared_parameters(notebook)
    layers: list[tuple[str, dict[str, Any]]] = [(f"profile {profile!r}", profile_overrides(profile, notebook.stem))]
    if params_file is not None:
        loaded = _load_yaml(Path(params_file).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ParameterError(f"{params_file}: expected a mapping of parameter -> value")
        layers.append((str(params_file), loaded))
    layers.append(("-p", dict(cli or [])))
    resolved: dict[str, Any] = {}
    for origin, values in layers:
        for name, raw in values.items():
            if name not in defaults:
                raise ParameterError(f"{origin}: {notebook.name} has no parameter {name!r}; "
                                     f"its parameters are: {', '.join(defaults)}")
            resolved[name] = convert(name, raw, defaults[name])
    return resolved


def changed_parameters(notebook: str | Path, namespace: dict[str, Any]) -> dict[str, Any]:
    """The parameters of ``notebook`` (a stem in notebooks/, or a path) that this run sets: those the runner injected (from
    the profile, a -f file or -p, even when equal to the default) and those whose value differs
    from the notebook's declared default (edited by hand in JupyterLab). A notebook whose own
    defaults mirror a config file passes only these, so that the file decides the rest."""
    path = Path(notebook) if str(notebook).endswith(".ipynb") else NOTEBOOKS_DIR / f"{notebook}.ipynb"
    defaults = declared_parameters(path)
    given = set(filter(None, os.environ.get(GIVEN_VAR, "").split(",")))
    return {name: namespace[name] for name, default in defaults.items()
            if name in namespace and (name in given or namespace[name] != default)}
