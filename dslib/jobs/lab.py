"""JupyterLab as the book runs it: on 127.0.0.1 with a token, the project's settings and kernel.

``dslib lab`` (``make lab``) and the browser test start the same command. Settings:
``configs/jupyterlab/overrides.json`` (JupyterLab's admin defaults: no news prompt, no update
check; a user's own changes still win). Kernels get CurveZMQ keys, as under ``dslib run``.
The token comes from JUPYTER_TOKEN when set, else JupyterLab makes one and prints the URL.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from dslib.env import REPO_ROOT
from dslib.jobs.record import RUN_DIR_VAR

SETTINGS_DIR = REPO_ROOT / "configs" / "jupyterlab"


def lab_command(notebook_dir: Path = REPO_ROOT / "notebooks", port: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "jupyterlab", "--ip", "127.0.0.1", "--no-browser",
           f"--ServerApp.root_dir={notebook_dir}", f"--LabApp.app_settings_dir={SETTINGS_DIR}",
           "--KernelManager.transport_encryption=auto"]
    if port:
        cmd += ["--port", str(port), "--ServerApp.port_retries=0"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    return cmd


def lab_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The kernel imports this checkout's dslib and records into outputs/lab, not a run dir."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop(RUN_DIR_VAR, None)
    env.pop("MPLBACKEND", None)  # Agg would keep figures out of the notebook
    return env
