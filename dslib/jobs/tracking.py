"""Run tracking with MLflow: each finished run's record, copied into a tracking store.

``metrics.json`` stays the book's own record (``dslib report`` and ``dslib book`` read it);
this module copies it, once a run has ended, into MLflow so that runs can be compared in
the MLflow UI (``make ui``): parameters and profile as params; commit, versions, device and
host as tags; every metric, plus one metric per numeric column of each table with a
``step`` column (training histories) logged at its step; figures, the executed notebook,
``metrics.json`` and ``run.log`` as artifacts. A failed run is logged FAILED with what it
recorded.

Store: ``MLFLOW_TRACKING_URI`` when set (a shared server), else the embedded default
``sqlite:///outputs/mlflow.db`` with artifacts in ``outputs/mlflow-artifacts/``.
``DSLIB_TRACKING=0`` turns tracking off. A store that cannot be reached gives one warning
per process and is not tried again by it; the run's own records are written regardless.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from dslib.env import REPO_ROOT, outputs_dir
from dslib.jobs.params import declared_parameters
from dslib.jobs.record import METRICS_FILE, read_record

TRACKING_VAR = "DSLIB_TRACKING"
UI_VAR = "DSLIB_MLFLOW_UI"  # an ``mlflow`` executable whose package ships the UI
UI_VENV = REPO_ROOT / ".venv-ui"  # made by `make ui-setup`: see constraints-ui.txt for why apart
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlflow-artifacts"
BATCH = 1000  # MLflow's limit of metrics per log_batch call
MAX_PARAM_CHARS = 6000  # MLflow's limit of a param value
MAX_TAG_CHARS = 5000
# A remote store that is down would otherwise be retried with backoff for minutes; and the
# book runs offline: no usage reports from the client or the UI server.
_ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                 "MLFLOW_DISABLE_TELEMETRY": "true"}
# The UI opens an experiment of this kind on its runs table (its default is the GenAI overview).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
_QUIET_LOGGERS = ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent")
_unreachable: set[str] = set()  # stores this process has already warned about


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(outputs_dir() / DB_FILE).resolve()}"


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite file, else the server's
    choice (None). MLflow's own default for SQLite, ./mlruns, depends on the working folder."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACTS_DIR).resolve().as_uri()
    return None


def enabled() -> bool:
    return os.environ.get(TRACKING_VAR, "1") != "0"


def log_run(run_dir: str | Path) -> str | None:
    """Log the run recorded in ``run_dir``; returns its MLflow run id, or None when tracking
    is off or the store cannot be reached (then one warning on stderr, once per store)."""
    uri = tracking_uri()
    if not enabled() or uri in _unreachable:
        return None
    _set_env_defaults()
    try:
        return _log(Path(run_dir), uri)
    except Exception as err:  # any store failure: the run itself is done and recorded
        _unreachable.add(uri)
        print(f"warning: run tracking is off for this process: the MLflow store {uri} cannot be "
              f"reached ({type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}); "
              f"the run's records are in {run_dir}", file=sys.stderr, flush=True)
        return None


def ui_command(port: int = 5000, uri: str | None = None) -> list[str]:
    """The MLflow UI server on 127.0.0.1 over the tracking store (one worker: a small machine).

    The UI is in the ``mlflow`` package only; the project's venv has ``mlflow-skinny``
    (``mlflow`` 3.17 pins pyarrow below the project's), so the server runs from .venv-ui."""
    mlflow = Path(os.environ.get(UI_VAR) or UI_VENV / "bin" / "mlflow")
    if not mlflow.is_file():
        raise FileNotFoundError(f"the MLflow UI is not installed ({mlflow}): run `make ui-setup`, or set {UI_VAR} "
                                "to an mlflow executable of the full mlflow package")
    _set_env_defaults()
    uri = uri or tracking_uri()
    cmd = [str(mlflow), "server", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    root = artifact_root(uri)
    return cmd + (["--default-artifact-root", root] if root else [])


def _log(run_dir: Path, uri: str) -> str:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    for name in _QUIET_LOGGERS:  # table creation and migrations log a line per step at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    record = read_record(run_dir)
    info, stem = record.get("run", {}), record.get("stem") or run_dir.name
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(stem)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(stem, artifact_location=_experiment_artifacts(uri, stem),
                                                     tags=EXPERIMENT_TAGS)
        except MlflowException:  # created meanwhile by a concurrent run
            experiment_id = client.get_experiment_by_name(stem).experiment_id
    else:
        experiment_id = experiment.experiment_id
    started_ms = _ms(info.get("started"))
    run = client.create_run(experiment_id, start_time=started_ms, run_name=f"{run_dir.parent.name}/{run_dir.name}",
                            tags=_tags(run_dir, info))
    run_id = run.info.run_id
    status = "FINISHED" if info.get("status") == "ok" else "FAILED"
    try:
        params, metrics = _params(run_dir, info), _metrics(record, started_ms)
        client.log_batch(run_id, params=params)
        for i in range(0, len(metrics), BATCH):
            client.log_batch(run_id, metrics=metrics[i:i + BATCH])
        for path in _artifacts(run_dir, info):
            client.log_artifact(run_id, str(path))
        if (run_dir / "figures").is_dir():
            client.log_artifacts(run_id, str(run_dir / "figures"), "figures")
    except Exception:
        status = "FAILED"
        raise
    finally:
        client.set_terminated(run_id, status=status, end_time=started_ms + int(1000 * (info.get("wall_s") or 0)))
    return run_id


def _set_env_defaults() -> None:
    for name, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


def _experiment_artifacts(uri: str, name: str) -> str | None:
    root = artifact_root(uri)
    return f"{root}/{name}" if root else None


def _ms(iso: str | None) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000) if iso else int(time.time() * 1000)


def _tags(run_dir: Path, info: dict[str, Any]) -> dict[str, str]:
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_RUN_NOTE, MLFLOW_SOURCE_NAME

    keys = ("profile", "status", "error", "git_commit", "git_dirty", "torch", "deepspeed", "python", "device",
            "cpus", "host", "notebook", "title")
    tags = {k: str(info[k])[:MAX_TAG_CHARS] for k in keys if info.get(k) not in (None, "")}
    tags.update({"run_dir": str(run_dir.resolve()), MLFLOW_SOURCE_NAME: str(info.get("notebook", run_dir.name)),
                 MLFLOW_GIT_COMMIT: str(info.get("git_commit", "")), MLFLOW_RUN_NOTE: str(info.get("title", ""))})
    return tags


def _params(run_dir: Path, info: dict[str, Any]) -> list:
    """Every parameter the run used: the notebook's defaults (from its parameters cell, in the
    executed copy) under the overrides the record lists, and the profile."""
    from mlflow.entities import Param

    executed = _executed(run_dir, info)
    try:
        defaults = declared_parameters(executed) if executed.is_file() else {}
    except ValueError:  # no parameters cell
        defaults = {}
    values = {"profile": info.get("profile", ""), **defaults, **info.get("parameters", {})}
    return [Param(_name(k), (v if isinstance(v, str) else json.dumps(v, default=str))[:MAX_PARAM_CHARS])
            for k, v in values.items()]


def _metrics(record: dict[str, Any], timestamp: int) -> list:
    """Every recorded metric at step 0, the wall time, and each table with a ``step`` column
    as one metric per numeric column (``table/column``) at its steps."""
    from mlflow.entities import Metric

    out = [Metric(_name(name), float(m["value"]), timestamp, 0)
           for name, m in record.get("metrics", {}).items() if _number(m.get("value"))]
    if _number(record.get("run", {}).get("wall_s")):
        out.append(Metric("wall_s", float(record["run"]["wall_s"]), timestamp, 0))
    for table, rows in record.get("tables", {}).items():
        for row in rows:
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                continue
            out += [Metric(_name(f"{table}/{col}"), float(value), timestamp, row["step"])
                    for col, value in row.items() if col != "step" and _number(value)]
    return out


def _executed(run_dir: Path, info: dict[str, Any]) -> Path:
    return run_dir / Path(info.get("notebook", f"{run_dir.name}.ipynb")).name


def _artifacts(run_dir: Path, info: dict[str, Any]) -> list[Path]:
    return [p for p in (_executed(run_dir, info), run_dir / METRICS_FILE, run_dir / "run.log") if p.is_file()]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _name(name: str) -> str:
    """MLflow names: letters, digits, ``_ - . /`` and spaces."""
    return re.sub(r"[^\w\-. /]", "_", str(name))
