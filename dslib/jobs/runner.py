"""Execute one notebook headlessly with papermill into a run directory.

A run directory holds the executed notebook, ``metrics.json`` (what the notebook recorded
plus a ``run`` section written here: parameters, profile, git commit, versions, device,
host, wall time, status), ``figures/`` and ``run.log`` (the cells' output).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from traitlets.config import Config

from dslib.env import REPO_ROOT, outputs_dir
from dslib.jobs import params as P
from dslib.io import write_json_atomic
from dslib.jobs import tracking
from dslib.jobs.record import METRICS_FILE, RUN_DIR_VAR, read_record


@dataclass
class RunResult:
    ok: bool
    run_dir: Path
    notebook: Path  # the executed copy
    wall_s: float
    error: str = ""


def default_run_dir(stem: str, profile: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return outputs_dir() / f"run-{profile}-{stamp}" / stem


def notebook_title(notebook: Path) -> str:
    """The first markdown heading of the notebook (its chapter title)."""
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("#"):
                    return line.lstrip("# ").strip()
    return notebook.stem


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def provenance() -> dict[str, Any]:
    """What produced a run: code version, library versions, device and host."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    try:  # the version from package metadata: importing deepspeed costs seconds
        ds_version = version("deepspeed")
    except PackageNotFoundError:
        ds_version = "not installed"
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "torch": torch.__version__,
        "deepspeed": ds_version,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "cpus": os.cpu_count(),
        "host": platform.node(),
    }


def kernel_config() -> Config:
    """Kernel manager settings for papermill: CurveZMQ keys for the kernel's sockets, which
    ipykernel's kernelspec declares it supports (jupyter_client's documented switch). The
    kernel then talks encrypted and no longer warns "running over TCP without encryption"
    at every start."""
    config = Config()
    config.KernelManager.transport_encryption = "auto"
    return config


@contextlib.contextmanager
def _kernel_env(run_dir: Path, given: list[str]) -> Iterator[None]:
    """The kernel inherits this process's environment: point it at the run dir and this repo,
    and name the parameters this run injects (``params.changed_parameters`` reads them)."""
    saved = {k: os.environ.get(k) for k in (RUN_DIR_VAR, "PYTHONPATH", "MPLBACKEND", P.GIVEN_VAR)}
    os.environ[RUN_DIR_VAR] = str(run_dir.resolve())
    os.environ[P.GIVEN_VAR] = ",".join(given)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), saved["PYTHONPATH"]]))
    os.environ.pop("MPLBACKEND", None)  # Agg would stop figures from embedding in the notebook
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("papermill")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def _write_run_info(run_dir: Path, info: dict[str, Any]) -> None:
    record = read_record(run_dir)
    record["run"] = {**record.get("run", {}), **info}
    write_json_atomic(run_dir / METRICS_FILE, record)


def run_notebook(notebook: str | Path, profile: str = P.DEFAULT_PROFILE,
                 cli_params: list[tuple[str, str]] | None = None, params_file: str | Path | None = None,
                 out: str | Path | None = None, start_timeout: int = 120,
                 echo: Callable[..., None] = lambda *a, **k: None) -> RunResult:
    """Run ``notebook`` with checked parameters. Raises ParameterError before running anything."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    notebook = Path(notebook)
    if not notebook.exists():
        raise FileNotFoundError(f"no such notebook: {notebook}")
    parameters = P.resolve(notebook, profile, params_file, cli_params)
    run_dir = Path(out) if out else default_run_dir(notebook.stem, profile)
    echo(f"running {notebook} (profile {profile}) into {run_dir} with {parameters}", flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / METRICS_FILE).unlink(missing_ok=True)  # a rerun into the same dir starts clean
    executed = run_dir / notebook.name
    _write_run_info(run_dir, {"notebook": str(notebook), "title": notebook_title(notebook),
                              "profile": profile, "parameters": parameters, "status": "running",
                              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              **provenance()})
    start, error = time.perf_counter(), ""
    try:
        with _kernel_env(run_dir, list(parameters)), _log_to(run_dir / "run.log"):
            pm.execute_notebook(str(notebook), str(executed), parameters=parameters, progress_bar=False,
                                log_output=True, cwd=str(notebook.parent.resolve()),
                                start_timeout=start_timeout, config=kernel_config())
    except PapermillExecutionError as err:
        error = f"cell {err.cell_index}: {err.ename}: {err.evalue}"
    except Exception as err:  # kernel died, timeout: the run failed, the record says why
        error = f"{type(err).__name__}: {err}"
    wall = time.perf_counter() - start
    _write_run_info(run_dir, {"status": "failed" if error else "ok", "error": error,
                              "wall_s": round(wall, 2)})
    tracking.log_run(run_dir)
    return RunResult(ok=not error, run_dir=run_dir, notebook=executed, wall_s=wall, error=error)
