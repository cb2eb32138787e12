"""Notebooks as Slurm jobs, against a real single-node Slurm (scripts/local-slurm.sh).

Skipped, with the reason, only where the Slurm packages cannot be installed; CI installs them.
"""
import os
import shutil
import subprocess

import pytest

from dslib import cli, jobs
from dslib.env import REPO_ROOT
from dslib.jobs import slurm

SCRIPT = REPO_ROOT / "scripts" / "local-slurm.sh"
DISTRIBUTED = ('from dslib import jobs\nfrom dslib.dist.launch import launch\nrun = jobs.start("01_dist")\n'
               'result = launch("dslib.dist.demo:all_reduce_sum", nprocs=ranks, timeout=120)\n'
               'run.metric("world_size", result["world_size"])\nrun.metric("sum", result["sum"][0] * scale)\n'
               'run.metric("srun_step", int(result["slurm_step"]))')


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if shutil.which("sbatch") is None:
        install = subprocess.run([str(SCRIPT), "install"], capture_output=True, text=True)
        if install.returncode != 0:
            pytest.skip(f"Slurm packages cannot be installed here: {install.stderr.strip()[-300:]}")
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "DSLIB_SLURM_DIR": str(state)}
    started = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, env=env, timeout=300)
    assert started.returncode == 0, started.stderr
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    yield state
    subprocess.run([str(SCRIPT), "stop"], env=env, timeout=60)
    if saved is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = saved


def _submit(capsys, *argv):
    assert cli.main(["submit", *argv]) == 0
    out = capsys.readouterr().out
    return [line.split()[2].rstrip(":") for line in out.splitlines() if line.startswith("submitted job")]


def test_two_rank_notebook_runs_through_srun(cluster, notebook_factory, tmp_path, capsys):
    nb = notebook_factory("01_dist.ipynb", "ranks = 1\nscale = 1.0", DISTRIBUTED)
    [job] = _submit(capsys, str(nb), "--ntasks-per-node", "2", "--profile", "cpu", "-p", "ranks", "2",
                    "--time", "00:05:00", "--out", str(tmp_path / "jobs"))
    state = slurm.wait(job, timeout=240)
    assert state["state"] == "COMPLETED", state
    assert state["metrics"] == {"world_size": 2, "sum": 3.0, "srun_step": 0}
    run_dir = tmp_path / "jobs" / "01_dist"
    assert (run_dir / "01_dist.ipynb").exists() and (run_dir / f"slurm-{job}.out").exists()


def test_sweep_gives_one_record_per_value_and_a_comparison(cluster, notebook_factory, tmp_path, capsys):
    nb = notebook_factory("01_dist.ipynb", "ranks = 1\nscale = 1.0", DISTRIBUTED)
    ids = _submit(capsys, str(nb), "--profile", "cpu", "--sweep", "scale=1,2.5", "--time", "00:05:00",
                  "--out", str(tmp_path / "sweep"))
    assert len(ids) == 2
    assert [slurm.wait(j, timeout=240)["metrics"]["sum"] for j in ids] == [1.0, 2.5]
    runs = sorted((tmp_path / "sweep").iterdir())
    assert cli.main(["report", *map(str, runs), "--out", str(tmp_path / "cmp")]) == 0
    text = (tmp_path / "cmp" / "index.md").read_text()
    assert "| scale=1.0 | ok |" in text and "| scale=2.5 | ok |" in text
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 1000


def test_failing_notebook_shows_its_error(cluster, notebook_factory, tmp_path, capsys):
    nb = notebook_factory("02_bad.ipynb", "steps = 1", "raise ValueError('planted job failure')")
    [job] = _submit(capsys, str(nb), "--profile", "cpu", "--time", "00:05:00", "--out", str(tmp_path / "j"))
    slurm.wait(job, timeout=240)
    assert cli.main(["jobs", "status", job]) == 1
    out = capsys.readouterr().out
    assert "state: FAILED" in out and "ValueError: planted job failure" in out and "log tail:" in out


def test_oversized_and_invalid_requests_are_refused(cluster, notebook_factory, tmp_path, capsys):
    nb = notebook_factory("01_dist.ipynb", "ranks = 1\nscale = 1.0", DISTRIBUTED)
    assert cli.main(["submit", str(nb), "--profile", "cpu", "--cpus-per-task", "64",
                     "--out", str(tmp_path / "big")]) == 2
    assert "sbatch refused 1 node(s) x 1 task(s) x 64 CPU(s)" in capsys.readouterr().err
    assert cli.main(["submit", str(nb), "--profile", "cpu", "-p", "rank", "2", "--out", str(tmp_path / "x")]) == 2
    assert "has no parameter 'rank'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_dry_run_prints_the_script_and_submits_nothing(notebook_factory, tmp_path, capsys):
    nb = notebook_factory("01_dist.ipynb", "ranks = 1\nscale = 1.0", DISTRIBUTED)
    assert cli.main(["submit", str(nb), "--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu",
                     "--account", "proj", "-p", "ranks", "16", "--dry-run", "--out", str(tmp_path / "d")]) == 0
    script = capsys.readouterr().out
    for line in ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=gpu", "#SBATCH --account=proj", "--profile cluster", "-p ranks 16"]:
        assert line in script
    assert not (tmp_path / "d").exists() and not jobs.read_record(tmp_path / "d")
