"""Run a dslib entry point on N ranks and get rank 0's result back.

``launch("dslib.dist.demo:all_reduce_sum", nprocs=2)`` starts the ranks with torchrun
on this machine, or with srun when called inside a Slurm allocation, each running
``dslib.dist.worker`` (process group on gloo or nccl, chosen by dslib.env). If a rank
fails or the timeout passes, the whole process group is killed and ``LaunchError`` names
the rank and quotes the tail of its stderr; no process is left behind.
"""
from __future__ import annotations

import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from dslib.dist.ports import free_port
from dslib.env import REPO_ROOT

TAIL_LINES = 25
LAUNCHERS = ("auto", "torchrun", "deepspeed", "srun")
PORT_RETRIES = 2
PORT_IN_USE = "EADDRINUSE"  # what torch's TCPStore says when the master port is taken


class LaunchError(RuntimeError):
    """A distributed run failed: which rank, why, and the tail of its stderr."""

    def __init__(self, message: str, rank: int | None = None, stderr_tail: str = "") -> None:
        super().__init__(message + (f"\n--- stderr of rank {rank} (tail) ---\n{stderr_tail}" if stderr_tail else ""))
        self.rank = rank
        self.stderr_tail = stderr_tail


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _rank_logs(log_dir: Path, stream: str) -> dict[int, Path]:
    """torchrun writes <log_dir>/<run id>/attempt_<k>/<local rank>/<stream>.log."""
    return {int(p.parent.name): p for p in log_dir.glob(f"**/attempt_*/*/{stream}.log")}


def _failed_rank(launcher_err: str, stderr_logs: dict[int, Path], raised: list[int]) -> int | None:
    """The first rank to fail: what torchrun or srun report (a rank killed by a signal leaves no
    traceback, and the ranks it leaves waiting then raise too), else the first traceback."""
    match = re.search(r"Root Cause.*?rank\s*:\s*(\d+)", launcher_err, re.S) \
        or re.search(r"task (\d+): (?:Exited with exit code [1-9]|Killed)", launcher_err)
    if match:
        return int(match.group(1))
    if raised:
        return raised[0]
    for rank in sorted(stderr_logs):
        if "Traceback" in stderr_logs[rank].read_text(errors="replace"):
            return rank
    return None


def _split_labelled(work: Path) -> dict[int, Path]:
    """srun --label output ('1: text') split into one stderr file per rank."""
    lines: dict[int, list[str]] = {}
    for line in (work / "launcher.err").read_text(errors="replace").splitlines():
        label, sep, text = line.partition(": ")
        if sep and label.strip().isdigit():
            lines.setdefault(int(label), []).append(text)
    for rank, rank_lines in lines.items():
        (work / f"rank{rank}.err").write_text("\n".join(rank_lines))
    return {rank: work / f"rank{rank}.err" for rank in lines}


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            continue


def in_slurm_allocation() -> bool:
    return "SLURM_JOB_ID" in os.environ and "SLURM_NTASKS" in os.environ


def _command(launcher: str, nprocs: int, log_dir: Path, worker_args: list[str]) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    worker = ["-m", "dslib.dist.worker", *worker_args]
    if launcher == "srun":
        hosts = subprocess.run(["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]],
                               capture_output=True, text=True, check=True).stdout.split()
        env.update(MASTER_ADDR=hosts[0], MASTER_PORT=str(free_port()))
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):  # srun's SLURM_* variables decide these
            env.pop(var, None)
        # --label prefixes each line with its rank, which is how a failure is attributed
        return ["srun", f"--ntasks={nprocs}", "--kill-on-bad-exit=1", "--label", sys.executable, *worker], env
    if launcher == "deepspeed":  # DeepSpeed's own launcher (on CPU it spawns N local ranks too)
        return [sys.executable, "-m", "deepspeed.launcher.runner", f"--num_gpus={nprocs}",
                f"--master_port={free_port()}", "--no_local_rank", "--module", *worker[1:]], env
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nprocs}", "--nnodes=1",
            "--master-addr=127.0.0.1", f"--master-port={free_port()}", f"--log-dir={log_dir}",
            "--redirects=3", *worker], env


def launch(entry: str, nprocs: int = 2, kwargs: dict[str, Any] | None = None, timeout: float = 300,
           launcher: str = "auto") -> Any:
    """Run ``entry`` ('package.module:function', called as function(**kwargs)) on ``nprocs`` ranks.

    Returns rank 0's return value. ``launcher``: 'torchrun' (local ranks), 'deepspeed' (DeepSpeed's
    launcher, local ranks), 'srun' (ranks of the current Slurm allocation) or 'auto' (srun inside
    an allocation, else torchrun).
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {LAUNCHERS}, got {launcher!r}")
    if nprocs < 1:
        raise ValueError(f"nprocs must be >= 1, got {nprocs}")
    if launcher == "auto":
        launcher = "srun" if in_slurm_allocation() else "torchrun"
    for _ in range(PORT_RETRIES):
        try:
            return _launch_once(entry, nprocs, kwargs, timeout, launcher)
        except LaunchError as error:
            # free_port() releases the port it found before the launcher binds it: another
            # launch (a second notebook, a test) can take it in between; a fresh port fixes that
            if PORT_IN_USE not in str(error):
                raise
    return _launch_once(entry, nprocs, kwargs, timeout, launcher)


def _launch_once(entry: str, nprocs: int, kwargs: dict[str, Any] | None, timeout: float, launcher: str) -> Any:
    with tempfile.TemporaryDirectory(prefix="dslib-launch-") as tmp:
        work = Path(tmp)
        (work / "args.pkl").write_bytes(pickle.dumps(kwargs or {}))
        result_file, log_dir = work / "result.pkl", work / "logs"
        cmd, env = _command(launcher, nprocs, log_dir, ["--entry", entry, "--args-file", str(work / "args.pkl"),
                                                        "--result-file", str(result_file)])
        with open(work / "launcher.out", "w") as out, open(work / "launcher.err", "w") as err:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, start_new_session=True)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                tails = "\n".join(f"--- rank {r} ---\n{_tail(p, 10)}"
                                  for r, p in sorted(_rank_logs(log_dir, "stderr").items()))
                raise LaunchError(f"{entry} on {nprocs} ranks timed out after {timeout:.0f} s; all ranks "
                                  f"were killed\n{tails}") from None
            finally:
                _kill_group(proc)  # nothing of the group survives, whatever happened
        launcher_err = (work / "launcher.err").read_text(errors="replace")
        stderr_logs = _rank_logs(log_dir, "stderr") if launcher == "torchrun" else _split_labelled(work)
        if proc.returncode != 0:
            # tracebacks the workers wrote (worker.error_file), first written first
            raised = {int(p.stem[4:]): p for p in sorted(work.glob("rank*.error"), key=lambda p: p.stat().st_mtime)}
            rank = _failed_rank(launcher_err, stderr_logs, list(raised))
            tail = _tail(raised.get(rank) or stderr_logs.get(rank) or work / "launcher.err")
            raise LaunchError(f"{entry} failed on rank {rank if rank is not None else '?'} "
                              f"({launcher} exit code {proc.returncode})", rank, tail)
        if not result_file.exists():
            raise LaunchError(f"{entry}: rank 0 finished without writing a result", 0,
                              _tail(stderr_logs.get(0, work / "launcher.err")))
        return pickle.loads(result_file.read_bytes())
