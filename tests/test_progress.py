"""Progress bars: plain lines under `dslib run` (papermill), tqdm's widget in JupyterLab
(tests/test_lab.py sees it rendered)."""
from __future__ import annotations

import nbformat

from dslib import progress
from dslib.jobs.runner import run_notebook

LOOP = ("from dslib.progress import progress_bar\nimport time\n"
        "for _ in progress_bar(range(n), desc='steps', leave=False, mininterval=0.1):\n    time.sleep(0.05)")


def test_headless_run_writes_plain_progress_lines_not_a_widget(notebook_factory, tmp_path):
    nb = notebook_factory("bar.ipynb", "n = 20", LOOP)
    result = run_notebook(nb, "smoke", out=tmp_path / "bar")
    assert result.ok, result.error
    executed = nbformat.read(result.notebook, as_version=4)
    outputs = [o for c in executed.cells for o in c.get("outputs", [])]
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    assert "widgets" not in executed.metadata
    text = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
    lines = text.splitlines()
    assert "\r" not in text and len(lines) >= 2, text
    assert "steps:" in lines[0] and "20/20" in lines[-1], "the last line stays (leave is forced on)"
    assert len(set(lines)) == len(lines), "no line twice"


def test_plain_python_is_not_interactive():
    assert not progress.interactive()
    bar = progress.progress_bar(range(2), disable=True)
    assert type(bar).__module__ == "tqdm.std"
