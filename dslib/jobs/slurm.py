"""Notebooks as Slurm jobs: render an sbatch script, submit it, follow the job.

The job runs ``dslib run`` on the first node of the allocation; the notebook's distributed
steps (``dslib.dist.launch``) see the allocation and start their ranks with srun.
Parameters are checked against the notebook before anything is submitted.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from string import Template
from typing import Any

from dslib.env import REPO_ROOT, outputs_dir
from dslib.jobs import params as P
from dslib.io import write_json_atomic
from dslib.jobs.record import read_record

TEMPLATE = REPO_ROOT / "configs" / "slurm" / "job.sbatch"
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}
LOG_TAIL_LINES = 30


class SlurmError(RuntimeError):
    """sbatch/scontrol refused or failed; the message says what was asked and why."""


@dataclass
class JobSpec:
    notebook: Path
    run_dir: Path
    profile: str = "cluster"
    params: list[tuple[str, str]] = field(default_factory=list)
    nodes: int = 1
    gpus_per_node: int = 0
    ntasks_per_node: int | None = None  # default: one task per GPU, else 1
    cpus_per_task: int = 1
    partition: str | None = None
    account: str | None = None
    time: str = "01:00:00"

    @property
    def tasks_per_node(self) -> int:
        return self.ntasks_per_node or max(self.gpus_per_node, 1)


def render(spec: JobSpec) -> str:
    """The sbatch script for ``spec`` (configs/slurm/job.sbatch filled in)."""
    if spec.nodes < 1 or spec.tasks_per_node < 1 or spec.cpus_per_task < 1 or spec.gpus_per_node < 0:
        raise ValueError("nodes, tasks per node and cpus per task must be >= 1, gpus per node >= 0")
    extra = [f"#SBATCH --partition={spec.partition}" if spec.partition else "",
             f"#SBATCH --account={spec.account}" if spec.account else "",
             f"#SBATCH --gpus-per-node={spec.gpus_per_node}" if spec.gpus_per_node else ""]
    param_args = " ".join(f"-p {shlex.quote(n)} {shlex.quote(str(v))}" for n, v in spec.params)
    return Template(TEMPLATE.read_text()).substitute(
        job_name=f"dslib-{spec.notebook.stem}", nodes=spec.nodes, ntasks_per_node=spec.tasks_per_node,
        cpus_per_task=spec.cpus_per_task, time=spec.time, run_dir=shlex.quote(str(spec.run_dir.resolve())),
        optional_directives="\n".join(e for e in extra if e), repo=shlex.quote(str(REPO_ROOT)),
        python=shlex.quote(sys.executable), notebook=shlex.quote(str(spec.notebook.resolve())),
        profile=shlex.quote(spec.profile), param_args=param_args)


def _jobs_index() -> Path:
    return outputs_dir() / "jobs"


def submit(spec: JobSpec, dry_run: bool = False) -> tuple[str | None, str]:
    """Check parameters, render, and (unless dry_run) sbatch. Returns (job id, script)."""
    P.resolve(spec.notebook, spec.profile, cli=spec.params)  # refuses bad names/values now
    script = render(spec)
    if dry_run:
        return None, script
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    script_path = spec.run_dir / "job.sbatch"
    script_path.write_text(script)
    proc = subprocess.run(["sbatch", "--parsable", str(script_path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SlurmError(f"sbatch refused {spec.nodes} node(s) x {spec.tasks_per_node} task(s) x "
                         f"{spec.cpus_per_task} CPU(s), {spec.gpus_per_node} GPU(s)/node, time {spec.time}"
                         f"{', partition ' + spec.partition if spec.partition else ''}: {proc.stderr.strip()}")
    job_id = proc.stdout.strip().split(";")[0]
    write_json_atomic(_jobs_index() / f"{job_id}.json", {"job_id": job_id, "run_dir": str(spec.run_dir.resolve()),
                                                         "notebook": str(spec.notebook), "script": str(script_path)})
    return job_id, script


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """'zero_stage=0,1,2,3' -> ('zero_stage', ['0', '1', '2', '3'])."""
    name, sep, values = text.partition("=")
    if not sep or not name.strip() or not values.strip():
        raise ValueError(f"--sweep must look like NAME=V1,V2,..., got {text!r}")
    return name.strip(), [v.strip() for v in values.split(",") if v.strip()]


def default_run_root(kind: str) -> Path:
    return outputs_dir() / f"{kind}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _scontrol(job_id: str) -> dict[str, str]:
    proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    if proc.returncode != 0:
        return {}
    return dict(tok.split("=", 1) for tok in proc.stdout.split() if "=" in tok)


def status(job_id: str) -> dict[str, Any]:
    """State, elapsed time and run dir of a job; metrics when done; error and log tail if failed."""
    index = _jobs_index() / f"{job_id}.json"
    info = json.loads(index.read_text()) if index.exists() else {}
    fields = _scontrol(job_id)
    if not fields and not info:
        raise SlurmError(f"no job {job_id}: scontrol does not know it and dslib did not submit it here")
    run_dir = Path(info.get("run_dir", fields.get("WorkDir", ".")))
    record = read_record(run_dir)
    run = record.get("run", {})
    state = fields.get("JobState") or {"ok": "COMPLETED", "failed": "FAILED"}.get(run.get("status"), "UNKNOWN")
    out: dict[str, Any] = {"job_id": job_id, "state": state, "elapsed": fields.get("RunTime", ""),
                           "exit_code": fields.get("ExitCode", ""), "reason": fields.get("Reason", ""),
                           "run_dir": str(run_dir)}
    if state == "COMPLETED":
        out["metrics"] = {k: v["value"] for k, v in record.get("metrics", {}).items()}
    if state in FINISHED - {"COMPLETED"}:
        out["error"] = run.get("error") or f"job ended {state} before the notebook recorded an error"
        log = run_dir / f"slurm-{job_id}.out"
        out["log_tail"] = "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]) \
            if log.exists() else ""
    return out


def wait(job_id: str, timeout: float = 3600, poll_s: float = 1.0) -> dict[str, Any]:
    """Poll ``scontrol`` until the job finishes (sbatch --wait returns seconds late)."""
    deadline = time.monotonic() + timeout
    while True:
        current = status(job_id)
        if current["state"] in FINISHED:
            return current
        if time.monotonic() > deadline:
            raise SlurmError(f"job {job_id} still {current['state']} after {timeout:.0f} s")
        time.sleep(poll_s)
