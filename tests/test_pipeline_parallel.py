"""DeepSpeed pipeline (deepspeed.pipe) on 2 CPU ranks: same losses as one process, shapes refused early.

One launch of 2 ranks and one of 4 (dp=1 x pp=2 x tp=2): ~20 s and ~40 s on 2 cores, most of it
starting processes that import torch + DeepSpeed.
"""
from __future__ import annotations

import pytest

from dslib.model import flops_per_token
from dslib.parallel import pipeline
from dslib.parallel.pipeline import PipeRun, pipe_config, pipe_ds_config, run_pipeline_engines
from dslib.parallel.schedules import bubble_1f1b
from dslib.studies.pipeline_study import (describe_stages, idle_fraction, layer_flops, run_3d,
                                           stage_times, train_reference)
from dslib.data.shards import corpus_shards

STEPS, MICRO, M = 4, 2, 3
TINY = {"num_layers": 3}


@pytest.fixture(scope="module")
def pipe_run():
    config = pipe_config("tiny", **TINY)
    return run_pipeline_engines([{"config": config, "partition_method": "type:BlockPipe", "micro_batches": M}],
                        stages=2, micro_batch=MICRO, steps=STEPS, measure_activations=True)[0]


def test_pipeline_loss_equals_single_process_loss(pipe_run):
    config = pipe_config("tiny", **TINY)
    ds_config = pipe_ds_config(MICRO, M)
    reference = train_reference(config, ds_config, str(corpus_shards(config.vocab_size, limit=2000)), STEPS)
    assert pipe_run.losses[-1] < pipe_run.losses[0]  # it trains
    assert pipe_run.losses == pytest.approx(reference, rel=1e-5)


def test_tied_embedding_and_head_stay_equal_on_both_stages(pipe_run):
    # the two copies of the tied weight live on stage 0 and stage 1; only the all-reduce of
    # their gradients after each backward keeps them equal through AdamW steps
    assert pipe_run.parts[0] == 0 and len(pipe_run.stage_params) == 2
    assert pipe_run.stage_layers[0][0] == "EmbeddingPipe" and pipe_run.stage_layers[-1][-1] == "EmbeddingPipe(head)"
    assert pipe_run.tied_max_diff == 0.0


def test_timestamps_give_stage_times_and_a_bubble(pipe_run):
    assert all(t > 0 for t in stage_times(pipe_run))
    assert 0 < idle_fraction(pipe_run) < 1
    assert bubble_1f1b(2, 1) == 0.5 and bubble_1f1b(4, 13) == pytest.approx(3 / 16)


def test_deepspeed_1f1b_holds_p_minus_stage_micro_batches(pipe_run):
    # what each ForwardPass saves for backward (the loss too, on the last stage), counted while it lives
    in_flight = [peak / one for peak, one in zip(pipe_run.peak_activation_bytes, pipe_run.micro_batch_activation_bytes)]
    assert in_flight == pytest.approx([min(M, 2 - stage) for stage in range(2)], rel=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"stages": 2, "tensor": 2, "nprocs": 3}, "world_size=3 != dp\\*pp\\*tp"),
    ({"stages": 3, "tensor": 1, "nprocs": 3}, "pp=3 is greater than the model's num_layers=2"),
    ({"stages": 2, "tensor": 3, "nprocs": 6}, "tp=3 does not divide"),
])
def test_invalid_shapes_are_refused_before_any_rank_starts(kwargs, message):
    config = pipe_config("tiny")  # 2 blocks, 4 heads
    with pytest.raises(ValueError, match=message):
        pipeline.validate_pipeline(config, kwargs["nprocs"], kwargs["stages"], ["uniform"], [2], kwargs["tensor"])


def test_run_pipeline_refuses_a_bad_partition_method_without_launching(monkeypatch):
    def no_launch(*args, **kwargs):
        raise AssertionError("a rank was started")
    monkeypatch.setattr("dslib.dist.launch.launch", no_launch)
    with pytest.raises(ValueError, match="matches no layer"):
        run_pipeline_engines([{"config": pipe_config("tiny"), "partition_method": "type:Conv", "micro_batches": 2}])
    with pytest.raises(ValueError, match="gate.enabled"):
        pipe_config("tiny", gate={"enabled": True})


def test_3d_pipeline_x_tensor_parallel_matches_one_process(pipe_run):
    result = run_3d("tiny", TINY, pipeline=2, tensor=2, micro_batches=M, micro_batch=MICRO, steps=STEPS)
    assert result["losses_3d"] == pytest.approx(result["losses_single"], rel=1e-5)
    assert result["losses_3d"] == pytest.approx(pipe_run.losses, rel=1e-5)
    # the same stages as without tensor parallel, each rank holding half of every block's matrices
    assert result["stages"] == "E+2B | B+N+H"
    assert all(tp < pp for tp, pp in zip(result["stage_params"], pipe_run.stage_params))


def _ideal_1f1b_run() -> PipeRun:
    """p=2 stages, m=2 micro-batches, forward 1 s, backward 2 s, free communication (1F1B order)."""
    stage0 = [("LoadMicroBatch", 0, 0), ("ForwardPass", 0, 1), ("ForwardPass", 1, 2),
              ("BackwardPass", 4, 6), ("BackwardPass", 7, 9)]
    stage1 = [("ForwardPass", 1, 2), ("BackwardPass", 2, 4), ("ForwardPass", 4, 5), ("BackwardPass", 5, 7)]
    config = pipe_config("tiny").model_dump()
    return PipeRun("ideal", config, "uniform", 2, [0, 3, 5], [1, 1], [0.0], [[stage0], [stage1]], 0.0)


def test_an_ideal_schedule_measures_exactly_the_bubble_1f1b():
    run = _ideal_1f1b_run()
    assert stage_times(run, skip=0) == [3, 3]
    assert idle_fraction(run, skip=0) == pytest.approx(bubble_1f1b(2, 2)) == pytest.approx(1 / 3)
    assert describe_stages(run) == "E+2B | N+H"


def test_layer_flops_add_up_to_the_model_flops():
    config = pipe_config("small")
    assert sum(layer_flops(config)) == pytest.approx(flops_per_token(config, with_memory=False))
