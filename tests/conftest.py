"""Shared fixtures: tiny notebooks written on the fly for the runner tests, a guard that no rank
starts, and the time-budget table printed at the end of the run (reported, never asserted)."""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

from dslib.env import outputs_dir
from dslib.jobs.budgets import budget_table
from dslib.io import write_json_atomic

WALL_TIMES = pytest.StashKey[dict]()
BUDGET_PROFILE = "smoke"


def write_notebook(path: Path, params: str, *cells: str) -> Path:
    """A notebook with a markdown title, a tagged parameters cell, and code cells."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem} title"), nbformat.v4.new_code_cell(params)]
    nb.cells[1].metadata["tags"] = ["parameters"]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture
def notebook_factory(tmp_path):
    def make(name: str, params: str, *cells: str) -> Path:
        return write_notebook(tmp_path / name, params, *cells)
    return make


@pytest.fixture
def no_rank_may_start(monkeypatch):
    """Fail the test if anything reaches the launcher: a refusal must come before any process."""
    from dslib.dist import launch as launch_module

    def refuse(entry, nprocs, *args, **kwargs):
        raise AssertionError(f"{entry} was launched on {nprocs} ranks; it should have been refused first")

    monkeypatch.setattr(launch_module, "_launch_once", refuse)


def pytest_configure(config):
    config.stash[WALL_TIMES] = {}


@pytest.fixture
def record_wall_time(request):
    """record(stem, seconds): a notebook's wall time, for the budget table at the end of the run."""
    def record(stem: str, seconds: float) -> None:
        request.config.stash[WALL_TIMES][stem] = seconds
    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    walls = config.stash.get(WALL_TIMES, {})
    if not walls:
        return
    path = outputs_dir() / "budgets" / f"{BUDGET_PROFILE}.json"
    write_json_atomic(path, {"profile": BUDGET_PROFILE, "wall_s": walls})
    terminalreporter.write_sep("-", "time budgets")
    terminalreporter.write_line(budget_table(walls, BUDGET_PROFILE))
    terminalreporter.write_line(f"(written to {path})")


# Tests log no runs to the repository's MLflow store (outputs/mlflow.db); test_tracking turns
# tracking on with a store of its own.
os.environ.setdefault("DSLIB_TRACKING", "0")
