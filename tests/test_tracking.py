"""Run tracking: real runs logged to a real MLflow store, read back, and found in the MLflow UI."""
from __future__ import annotations

import json
import time

import pytest
from browser import chromium, screenshot_dir, server  # noqa: F401 (fixture)

from dslib.jobs import tracking
from dslib.jobs.record import read_record
from dslib.jobs.runner import run_notebook
from dslib.dist.ports import free_port

CELLS = ("from dslib import jobs\nimport matplotlib.pyplot as plt\nrun = jobs.start('00_tiny')\n"
         "run.metric('final_loss', 1.5 * lr, unit='nats')\n"
         "run.table('train_history', [{'step': 10 * i, 'loss': lr / (i + 1), 'note': 'x'} for i in range(steps)])",
         "fig, ax = plt.subplots()\nax.plot(range(steps))\nrun.figure(fig, 'curve')")


@pytest.fixture
def store(tmp_path, monkeypatch):
    """Tracking on, into a store of its own (the embedded default under DSLIB_OUTPUTS)."""
    monkeypatch.setenv(tracking.TRACKING_VAR, "1")
    monkeypatch.setenv("DSLIB_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "_unreachable", set())
    return tracking.tracking_uri()


def _runs(uri: str, experiment: str = "00_tiny"):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, exp, {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def test_runs_are_logged_with_params_metrics_steps_and_artifacts(store, notebook_factory, tmp_path):
    nb = notebook_factory("00_tiny.ipynb", "lr = 0.1\nsteps = 3", *CELLS)
    for lr in ("0.1", "0.3"):
        assert run_notebook(nb, "smoke", [("lr", lr)], out=tmp_path / "sweep" / f"00_tiny-lr={lr}").ok
    assert store.startswith("sqlite:///") and (tmp_path / "outputs" / "mlflow.db").is_file()
    client, exp, runs = _runs(store)
    assert set(runs) == {"sweep/00_tiny-lr=0.1", "sweep/00_tiny-lr=0.3"}
    run = runs["sweep/00_tiny-lr=0.3"]
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.3", "profile": "smoke", "steps": "3"}
    assert run.data.metrics["final_loss"] == pytest.approx(0.45)
    record = read_record(tmp_path / "sweep" / "00_tiny-lr=0.3")
    assert run.data.tags["git_commit"] == record["run"]["git_commit"] and run.data.tags["torch"]
    history = client.get_metric_history(run.info.run_id, "train_history/loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.3), (10, 0.15), (20, pytest.approx(0.1))]
    assert "train_history/note" not in run.data.metrics, "only numeric columns become metrics"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"00_tiny.ipynb", "metrics.json", "run.log", "figures"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "figures")] == ["figures/curve.png"]
    assert exp.artifact_location.startswith((tmp_path / "outputs" / tracking.ARTIFACTS_DIR).as_uri())


def test_a_failed_run_is_logged_failed_with_what_it_recorded(store, notebook_factory, tmp_path):
    nb = notebook_factory("00_tiny.ipynb", "lr = 0.1\nsteps = 2", CELLS[0], "raise RuntimeError('diverged')")
    result = run_notebook(nb, "smoke", out=tmp_path / "failed" / "00_tiny")
    assert not result.ok
    client, _, runs = _runs(store)
    run = runs["failed/00_tiny"]
    assert run.info.status == "FAILED" and "diverged" in run.data.tags["error"]
    assert run.data.metrics["final_loss"] == pytest.approx(0.15)
    assert "00_tiny.ipynb" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_an_unreachable_store_warns_once_and_the_records_are_written(store, notebook_factory, tmp_path,
                                                                    monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    nb = notebook_factory("00_tiny.ipynb", "lr = 0.1\nsteps = 2", *CELLS)
    results = [run_notebook(nb, "smoke", out=tmp_path / f"run{i}" / "00_tiny") for i in range(2)]
    assert all(r.ok for r in results)
    assert all(read_record(r.run_dir)["metrics"]["final_loss"]["value"] == pytest.approx(0.15) for r in results)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "run tracking is off" in line]
    assert len(warnings) == 1 and "cannot be reached" in warnings[0]


def test_tracking_off_writes_no_store(notebook_factory, tmp_path, monkeypatch):
    monkeypatch.setenv(tracking.TRACKING_VAR, "0")
    monkeypatch.setenv("DSLIB_OUTPUTS", str(tmp_path / "outputs"))
    assert tracking.log_run(tmp_path) is None
    assert not (tmp_path / "outputs" / "mlflow.db").exists()


def _wait_for_text(driver, texts, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = driver.execute_script("return document.body.innerText")
        if all(t in body for t in texts):
            return body
        time.sleep(1)
    raise AssertionError(f"the MLflow UI never showed {texts}; it showed:\n{body[:3000]}")


def test_both_runs_and_their_metrics_are_in_the_mlflow_ui(store, notebook_factory, tmp_path, chromium):
    try:
        cmd = tracking.ui_command(free_port(), store)
    except FileNotFoundError as err:
        pytest.skip(str(err))
    nb = notebook_factory("00_tiny.ipynb", "lr = 0.1\nsteps = 3", *CELLS)
    for lr in ("0.1", "0.3"):
        assert run_notebook(nb, "smoke", [("lr", lr)], out=tmp_path / "sweep" / f"00_tiny-lr={lr}").ok
    _, exp, runs = _runs(store)
    base = f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}"
    shots = screenshot_dir("mlflow")
    started = time.perf_counter()
    with server(cmd, f"{base}/health", tmp_path / "mlflow-ui.log"):
        up_s = time.perf_counter() - started
        chromium.get(f"{base}/#/experiments/{exp.experiment_id}/runs")
        _wait_for_text(chromium, list(runs))
        chromium.save_screenshot(str(shots / "1-experiment.png"))
        ids = [r.info.run_id for r in runs.values()]
        chromium.get(f"{base}/#/compare-runs?runs={json.dumps(ids)}&experiments={json.dumps([exp.experiment_id])}")
        body = _wait_for_text(chromium, [*runs, "final_loss", "train_history/loss", "0.15", "0.45"])
        chromium.save_screenshot(str(shots / "2-compare.png"))
    assert "Comparing 2 Runs" in body
    print(f"MLflow UI up in {up_s:.0f} s; screenshots in {shots}")
