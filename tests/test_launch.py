"""The launcher: real ranks on gloo; a failing or hanging rank gives a clear error in time."""
import socket
import subprocess

import pytest

from dslib.dist import launch as launch_module
from dslib.dist.launch import LaunchError, launch


def _workers_alive(entry: str) -> int:
    """Workers still running `entry` (by name: other launches may run on the machine meanwhile)."""
    out = subprocess.run(["pgrep", "-f", f"dslib.dist.worker .*--entry {entry}"], capture_output=True, text=True).stdout
    return len(out.split())


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_two_ranks_all_reduce(launcher):
    result = launch("dslib.dist.demo:all_reduce_sum", nprocs=2, kwargs={"size": 3}, timeout=120,
                    launcher=launcher)
    assert result == {"world_size": 2, "backend": "gloo", "sum": [3.0, 3.0, 3.0], "slurm_step": None}


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_a_rank_that_exits_names_itself(launcher):
    with pytest.raises(LaunchError) as info:
        launch("dslib.dist.demo:fail_on_rank", nprocs=2, kwargs={"rank": 1, "message": "rank one broke"},
               timeout=120, launcher=launcher)
    assert info.value.rank == 1 and "rank 1" in str(info.value)
    assert "RuntimeError: rank one broke" in info.value.stderr_tail
    assert _workers_alive("dslib.dist.demo:fail_on_rank") == 0


@pytest.mark.timeout(180)  # only a hang guard: the launcher's own 20 s timeout is what is tested
def test_a_hanging_rank_is_killed_at_the_timeout():
    with pytest.raises(LaunchError, match="timed out after 20 s"):
        launch("dslib.dist.demo:hang_on_rank", nprocs=2, kwargs={"rank": 1}, timeout=20)
    assert _workers_alive("dslib.dist.demo:hang_on_rank") == 0


def test_bad_arguments_fail_before_any_process():
    with pytest.raises(ValueError, match="launcher must be one of"):
        launch("dslib.dist.demo:all_reduce_sum", launcher="mpirun")
    with pytest.raises(LaunchError, match="failed on rank 0"):
        launch("dslib.dist.demo", nprocs=1, timeout=60)  # no ':function' part


def test_a_master_port_taken_in_between_is_retried_on_a_fresh_one(monkeypatch):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = iter([taken.getsockname()[1]])  # the first port handed out is already in use
    fresh = launch_module.free_port
    monkeypatch.setattr(launch_module, "free_port", lambda: next(ports, None) or fresh())
    with taken:
        result = launch("dslib.dist.demo:all_reduce_sum", nprocs=2, kwargs={"size": 1}, timeout=120)
    assert result["sum"] == [3.0]
