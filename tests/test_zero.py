"""ZeRO runs on 2 CPU ranks (gloo): same loss at every stage, configs refused early, checkpoints resume.

Each launch starts 2 ranks that import torch + DeepSpeed (~10-15 s on 2 cores). No test here
needs a compiled op: stages 0-3 use torch's AdamW and DeepSpeed's shm all-reduce is skipped.
"""
from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from dslib.parallel.ds_config import load_ds_config
from dslib.parallel.launch import LaunchError
from dslib.parallel.zero import run_zero

STEPS = 4


@pytest.fixture(scope="module")
def zero3_run():
    return run_zero("zero3", nprocs=2, model="tiny", steps=STEPS)


def test_stage0_and_stage3_reach_the_same_loss(zero3_run):
    zero0 = run_zero("zero0", nprocs=2, model="tiny", steps=STEPS)
    assert zero0.stage == 0 and zero3_run.stage == 3
    assert zero3_run.losses[-1] < zero3_run.losses[0]  # it trains
    assert zero3_run.losses == pytest.approx(zero0.losses, rel=1e-4)
    # stage 3 keeps half the weights per rank on 2 ranks; stage 0 keeps all of them
    assert zero3_run.memory[0]["params"] == pytest.approx(zero0.memory[0]["params"] / 2, rel=0.02)


@pytest.mark.parametrize("overrides, field", [
    ({"zero_optimization": {"stage": 5}}, "zero_optimization.stage"),
    ({"zero_optimization": {"stage": 3, "offload_param": {"device": "ssd"}}},
     "zero_optimization.offload_param.device"),
    ({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "gpu"}}},
     "zero_optimization.offload_optimizer.device"),
    ({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}, "offload_param needs stage 3"),
])
def test_invalid_config_is_refused_before_any_process_starts(overrides, field):
    start = time.perf_counter()
    with pytest.raises(ValidationError) as error:
        run_zero("zero3", nprocs=2, ds_overrides=overrides)
    assert field in str(error.value)
    assert time.perf_counter() - start < 5  # no rank was launched


def test_nvme_config_needs_a_path():
    with pytest.raises(ValueError, match="nvme_dir"):
        run_zero("article", nprocs=2)
    assert load_ds_config("article").offload_device("param") == "nvme"


def test_killed_rank_is_named_and_the_run_resumes_to_the_same_loss(tmp_path, zero3_run):
    with pytest.raises(LaunchError) as error:
        run_zero("zero3", nprocs=2, model="tiny", steps=STEPS, save_dir=tmp_path, save_every=2,
                 kill_at_step=2, kill_rank=1)
    assert error.value.rank == 1 and "rank 1" in str(error.value)
    assert (tmp_path / "latest").read_text().strip() == "step2"
    resumed = run_zero("zero3", nprocs=2, model="tiny", steps=STEPS, save_dir=tmp_path, resume=True)
    assert resumed.first_step == 2
    assert resumed.losses == pytest.approx(zero3_run.losses[2:], rel=1e-5)
