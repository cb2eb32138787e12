"""Run records: the one call a notebook makes to record metrics, tables, figures and claims.

A notebook calls ``run = jobs.start("03_architecture")``. Under ``dslib run`` the run
directory comes from DSLIB_RUN_DIR (set by the runner); in JupyterLab it is
``outputs/lab/<stem>/``. Every call rewrites ``metrics.json`` atomically, so a
notebook that fails half-way still leaves what it measured.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dslib.env import REPO_ROOT, RUN_DIR_VAR, outputs_dir
from dslib.io import jsonable, write_json_atomic

METRICS_FILE = "metrics.json"
CLAIMS_FILE = REPO_ROOT / "configs" / "claims.yaml"

Verdict = Literal["holds", "holds only when", "does not hold"]
VERDICTS: tuple[str, ...] = ("holds", "holds only when", "does not hold")


def load_claims(path: Path = CLAIMS_FILE) -> dict[str, dict[str, Any]]:
    """The claims ledger: claim id -> {section, claim, check, chapters}."""
    return yaml.safe_load(path.read_text())["claims"]


def _clean_number(value: Any) -> float | int | None:
    value = jsonable(value) if not isinstance(value, (int, float)) else value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"a metric must be a number, got {type(value).__name__}: {value!r}")
    return None if isinstance(value, float) and not math.isfinite(value) else value


@dataclass
class Run:
    """What one notebook run measured. All writes go straight to ``metrics.json``."""

    stem: str
    run_dir: Path
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    figures: list[dict[str, str]] = field(default_factory=list)
    claims: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def figures_dir(self) -> Path:
        return self.run_dir / "figures"

    def metric(self, name: str, value: Any, unit: str = "", note: str = "") -> Any:
        """Record one number (NaN/inf are stored as null); returns the value for chaining."""
        self.metrics[name] = {"value": _clean_number(value), "unit": unit, "note": note}
        self._save()
        return value

    def table(self, name: str, rows: Any) -> Any:
        """Record a table: a pandas DataFrame or a list of dicts. Returns ``rows``."""
        records = rows.to_dict(orient="records") if hasattr(rows, "to_dict") else list(rows)
        self.tables[name] = json.loads(json.dumps(records, default=jsonable))
        self._save()
        return rows

    def figure(self, fig: Any, name: str, caption: str = "") -> Path:
        """Save a matplotlib figure as figures/<name>.png and show it inline."""
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        path = self.figures_dir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        self.figures = [f for f in self.figures if f["name"] != name]
        self.figures.append({"name": name, "path": f"figures/{name}.png", "caption": caption})
        self._save()
        _show(fig)
        return path

    def claim(self, claim_id: str, measured: str, verdict: Verdict, note: str = "") -> None:
        """Record the check of one ledger claim: the measured value, the verdict, a note."""
        known = load_claims()
        if claim_id not in known:
            raise KeyError(f"unknown claim id {claim_id!r}; known: {', '.join(sorted(known))}")
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
        self.claims[claim_id] = {"measured": measured, "verdict": verdict, "note": note}
        self._save()

    def _save(self) -> None:
        path = self.run_dir / METRICS_FILE
        record = json.loads(path.read_text()) if path.exists() else {}
        record.update(stem=self.stem, metrics=self.metrics, tables=self.tables,
                      figures=self.figures, claims=self.claims)
        write_json_atomic(path, record)


def _show(fig: Any) -> None:
    """Display inline inside a kernel; a no-op in plain Python."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return
    if get_ipython() is not None:
        display(fig)
        import matplotlib.pyplot as plt

        plt.close(fig)


def start(stem: str) -> Run:
    """Open the run record of notebook ``stem`` (run dir from DSLIB_RUN_DIR, else outputs/lab)."""
    run_dir = Path(os.environ.get(RUN_DIR_VAR) or outputs_dir() / "lab" / stem)
    run_dir.mkdir(parents=True, exist_ok=True)
    run = Run(stem=stem, run_dir=run_dir)
    run._save()
    return run


def read_record(run_dir: Path) -> dict[str, Any]:
    """The merged record of a run directory (runner info + what the notebook recorded)."""
    path = Path(run_dir) / METRICS_FILE
    return json.loads(path.read_text()) if path.exists() else {}
