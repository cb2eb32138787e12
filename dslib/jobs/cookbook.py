"""Run every notebook in order into one book directory, then write its report.

A failing notebook does not stop the others; the report marks it failed with its error.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from dslib.env import REPO_ROOT, outputs_dir
from dslib.jobs import report
from dslib.jobs.budgets import budget_table
from dslib.jobs.params import DEFAULT_PROFILE
from dslib.jobs.runner import RunResult, run_notebook

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


def select(only: list[str] | None = None, folder: Path = NOTEBOOKS_DIR) -> list[Path]:
    """Notebooks in order; ``only`` keeps those whose stem starts with one of the given numbers."""
    notebooks = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if only:
        notebooks = [nb for nb in notebooks if any(nb.stem.startswith(n) for n in only)]
        missing = [n for n in only if not any(nb.stem.startswith(n) for nb in notebooks)]
        if missing:
            raise ValueError(f"no notebook numbered {', '.join(missing)} in {folder}")
    return notebooks


def run_book(profile: str = DEFAULT_PROFILE, only: list[str] | None = None, out: Path | None = None,
             folder: Path = NOTEBOOKS_DIR, echo: Callable[..., None] = print) -> tuple[list[RunResult], Path]:
    """Run the selected notebooks; returns their results and the report's index.md path."""
    book = Path(out) if out else outputs_dir() / "cookbook"
    notebooks = select(only, folder)
    results, start = [], time.perf_counter()
    for i, nb in enumerate(notebooks, 1):
        echo(f"[{i}/{len(notebooks)}] {nb.stem} ({profile}) ...", flush=True)
        result = run_notebook(nb, profile=profile, out=book / nb.stem)
        results.append(result)
        state = "ok" if result.ok else f"FAILED: {result.error}"
        echo(f"[{i}/{len(notebooks)}] {nb.stem}: {state} ({result.wall_s:.1f} s, "
             f"total {time.perf_counter() - start:.0f} s)", flush=True)
    md, html = report.build_report([r.run_dir for r in results], book)
    echo(budget_table({r.run_dir.name: r.wall_s for r in results}, profile))
    echo(f"report: {md} and {html}")
    return results, md
