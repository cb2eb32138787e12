"""Every notebook, executed exactly as `dslib run NOTEBOOK --profile smoke` runs it.

papermill (not nbval) executes them: nbval cannot inject the smoke parameters, and this way
the test also checks the parameter validation and the run record. Each notebook's wall time
goes to the budget table printed at the end of the test run (90 s in smoke): reported, never
asserted. The timeout only catches a hang.
"""
import json

import pytest

from dslib import jobs
from dslib.jobs.budgets import NOTEBOOK_BUDGET_S
from dslib.jobs.cookbook import select
from dslib.jobs.runner import run_notebook

NOTEBOOKS = select()
HANG_TIMEOUT_S = int(6 * NOTEBOOK_BUDGET_S["smoke"])


@pytest.mark.timeout(HANG_TIMEOUT_S)
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_runs_in_smoke_profile(notebook, tmp_path, record_wall_time):
    result = run_notebook(notebook, "smoke", out=tmp_path / notebook.stem)
    record_wall_time(notebook.stem, result.wall_s)
    assert result.ok, f"{notebook.name}: {result.error} (see {result.notebook})"
    record = jobs.read_record(result.run_dir)
    assert record["metrics"] or record["tables"], "a chapter must record what it measured"
    for fig in record["figures"]:
        assert (result.run_dir / fig["path"]).exists()


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_follows_the_contract(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code), "commit notebooks without outputs"
    assert cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith("# ")
    assert "parameters" in cells[1].get("metadata", {}).get("tags", []), "second cell must be the parameters cell"
    assert f'jobs.start("{notebook.stem}")' in "".join("".join(c["source"]) for c in code)
