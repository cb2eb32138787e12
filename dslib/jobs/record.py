"""Run records: the one call a notebook makes to record metrics, tables, figures and evidence.

A notebook calls ``run = jobs.start("03_architecture")``. Under ``dslib run`` the run
directory comes from DSLIB_RUN_DIR (set by the runner); in JupyterLab it is
``outputs/lab/<stem>/``. Every call rewrites ``metrics.json`` atomically, so a
notebook that fails half-way still leaves what it measured. Evidence rows are numbers for
the claims of configs/claims.yaml; the claims engine (dslib.claims) turns them into verdicts.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

from dslib import claims
from dslib.env import RUN_DIR_VAR, outputs_dir
from dslib.io import jsonable, write_json_atomic

METRICS_FILE = "metrics.json"


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
    evidence_rows: dict[tuple, claims.Evidence] = field(default_factory=dict)  # by claim, conditions, kind
    _held: bool = field(default=False, repr=False)

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

    def evidence(self, claim_id: str, value: float | dict[str, float], unit: str = "",
                 conditions: dict | None = None, kind: Literal["measured", "modelled"] = "measured",
                 seeds: int = 1, default: bool = False, note: str = "") -> None:
        """Record one evidence row for a claim of configs/claims.yaml: a number (or one per
        quantity of the claim), the conditions that produced it, measured or modelled, the seeds it
        averages over, and whether it is the chapter's own default setting. Never a verdict: the
        claims engine decides. A row with the same claim, conditions and kind replaces the old one."""
        row = claims.make_evidence(claim_id, value, unit, conditions, kind, seeds, default, note)
        self.evidence_rows[row.key()] = row
        self._save()

    @contextlib.contextmanager
    def held(self) -> Iterator["Run"]:
        """Write metrics.json once at the end of the block instead of after every call (a grid
        of hundreds of evidence rows)."""
        self._held = True
        try:
            yield self
        finally:
            self._held = False
            self._save()

    def verdicts(self) -> list[dict[str, str]]:
        """The engine's verdict on each claim this run has rows for, from these rows alone."""
        return claims.preview(read_record(self.run_dir), self.run_dir)

    def _save(self) -> None:
        if self._held:
            return
        path = self.run_dir / METRICS_FILE
        record = json.loads(path.read_text()) if path.exists() else {}
        record.pop("claims", None)  # the verdicts older records typed by hand
        record.update(stem=self.stem, metrics=self.metrics, tables=self.tables,
                      figures=self.figures, evidence=[r.stored() for r in self.evidence_rows.values()])
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
