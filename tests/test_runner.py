"""The notebook runner, the run record, the cookbook loop and its report."""
import json

import pytest

from dslib import claims, cli, jobs
from dslib.jobs import report
from dslib.jobs.cookbook import run_book
from dslib.jobs.params import ParameterError
from dslib.jobs.record import read_record
from dslib.jobs.runner import run_notebook

RECORDING = ('from dslib import jobs\nimport matplotlib.pyplot as plt\nrun = jobs.start("01_ok")\n'
             'run.metric("answer", steps * 2, unit="x")\nrun.table("t", [{"a": 1, "b": "x"}])\n'
             'fig, ax = plt.subplots(); ax.plot([1, 2])\nrun.figure(fig, "line", caption="a line")\n'
             'run.evidence("lion_1_8x_faster", 1.1, unit="x", seeds=3, default=True, conditions={"model": "tiny"})')


def test_successful_run_writes_the_record(notebook_factory, tmp_path):
    nb = notebook_factory("01_ok.ipynb", "steps = 1", RECORDING)
    result = run_notebook(nb, "cpu", [("steps", "21")], out=tmp_path / "run")
    assert result.ok, result.error
    record = jobs.read_record(result.run_dir)
    assert record["metrics"]["answer"]["value"] == 42
    assert record["run"]["parameters"] == {"steps": 21} and record["run"]["status"] == "ok"
    assert record["run"]["title"] == "01_ok title" and record["run"]["torch"]
    assert (result.run_dir / "figures" / "line.png").stat().st_size > 1000
    executed = json.loads(result.notebook.read_text())
    assert any(o.get("output_type") == "display_data" for c in executed["cells"] for o in c.get("outputs", []))
    assert "Executing Cell" in (result.run_dir / "run.log").read_text()


def test_failing_cell_gives_nonzero_exit_and_saved_notebook(notebook_factory, tmp_path, capsys):
    nb = notebook_factory("02_bad.ipynb", "steps = 1", "x = steps", "raise ValueError('planted error')")
    code = cli.main(["run", str(nb), "--out", str(tmp_path / "bad")])
    out = capsys.readouterr().out
    assert code == 1 and "planted error" in out and str(tmp_path / "bad" / "02_bad.ipynb") in out
    saved = json.loads((tmp_path / "bad" / "02_bad.ipynb").read_text())
    errors = [o for c in saved["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors and errors[0]["evalue"] == "planted error"
    assert jobs.read_record(tmp_path / "bad")["run"]["status"] == "failed"


def test_refused_parameter_runs_nothing(notebook_factory, tmp_path, capsys):
    nb = notebook_factory("03_x.ipynb", "steps = 1", "open('ran', 'w')")
    with pytest.raises(ParameterError):
        run_notebook(nb, "cpu", [("x = 1; import os", "1")], out=tmp_path / "r")
    assert cli.main(["run", str(nb), "-p", "x = 1; import os", "1", "--out", str(tmp_path / "r")]) == 2
    assert "has no parameter" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (nb.parent / "ran").exists()


def test_record_api_rejects_non_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("DSLIB_RUN_DIR", str(tmp_path))
    run = jobs.start("x")
    with pytest.raises(TypeError, match="must be a number"):
        run.metric("m", "fast")
    run.metric("nan", float("nan"))
    assert jobs.read_record(tmp_path)["metrics"]["nan"]["value"] is None


def test_cookbook_goes_on_after_a_failure_and_reports_it(notebook_factory, tmp_path, capsys):
    notebook_factory("01_ok.ipynb", "steps = 1", RECORDING)
    notebook_factory("02_bad.ipynb", "steps = 1", "raise RuntimeError('boom')")
    results, md = run_book("cpu", out=tmp_path / "book", folder=tmp_path, echo=print)
    assert [r.ok for r in results] == [True, False]
    text = md.read_text()
    assert "status **failed**" in text and "RuntimeError: boom" in text
    assert "| does not hold | none of 1 rows meets step_ratio within 10% of 1.8x (step_ratio 1.1) |" in text
    assert "| step_ratio 1.1 x | model=tiny | measured (default) | cpu | 3 |" in text
    assert text.count("not yet checked") == len(claims.load_claims()) - 1
    assert "![line](01_ok/figures/line.png)" in text
    assert "<table>" in (tmp_path / "book" / "index.html").read_text()
    assert "[2/2] 02_bad: FAILED" in capsys.readouterr().out
    assert cli.main(["cookbook", "--only", "99"]) == 2  # no such notebook: a clear error


def test_report_table_escapes_and_truncates():
    rows = [{"a": f"x|{i}", "b": 0.123456} for i in range(30)]
    table = report.markdown_table(rows, max_rows=3)
    assert "x\\|0" in table and "0.1235" in table and "27 more rows" in table


def test_the_kernel_knows_which_parameters_the_run_set(notebook_factory, tmp_path):
    """Injected names count even when equal to the default; the rest only when edited."""
    nb = notebook_factory("given.ipynb", "a = 1\nb = 2\nc = 3",
                          "from dslib import jobs\nrun = jobs.start('given')\nc = 30  # a hand edit\n"
                          f"run.table('changed', [{{'names': ','.join(sorted(jobs.changed_parameters({str(tmp_path / 'given.ipynb')!r}, globals())))}}])")
    result = run_notebook(nb, "smoke", cli_params=[("a", "1")], out=tmp_path / "run")
    assert result.ok, result.error
    assert read_record(result.run_dir)["tables"]["changed"] == [{"names": "a,c"}]
