"""Pipeline x expert parallel (dslib.parallel.pipeline_expert) on 4 gloo ranks equals one process.

pp2 x ep2: two 1F1B pipelines of the 4-layer chapter 12 model (stage 0: embedding, the dense
layer and one MoE layer; stage 1: two MoE layers and the head), the two ranks of a stage sharding
its experts. One launch (~15 s on 2 loaded cores) runs, in every rank, the one-process reference on
the global batch (8 rows) and the rank's stage on its pipeline's 4 rows in 4 micro-batches: logits,
loss and every gradient after one forward/backward, the all-to-all bytes against the formula from
the reference's routing, then 20 AdamW steps with bias balancing. Tolerances as in
test_expert_parallel (fp32 round-off; Adam lifts it in near-zero gradients to ~lr x 1e-3).
"""
from __future__ import annotations

import pytest

from dslib.dist.launch import LaunchError
from dslib.model.deepseek import DeepSeekModel
from dslib.parallel.schedules import schedule_config
from dslib.studies.expert_study import equality_table, pp_ep_equality

STEPS, MICRO_BATCHES = 20, 4


@pytest.fixture(scope="module")
def run():
    return pp_ep_equality(nprocs=4, pp=2, ep=2, steps=STEPS, micro_batches=MICRO_BATCHES)


def test_the_grid_puts_a_stages_ranks_in_one_ep_group_and_a_pipeline_across_stages(run):
    by_rank = {r["rank"]: r for r in run["ranks"]}
    assert [by_rank[r]["ep_group"] for r in range(4)] == [[0, 1], [0, 1], [2, 3], [2, 3]]
    assert [by_rank[r]["pp_group"] for r in range(4)] == [[0, 2], [1, 3], [0, 2], [1, 3]]
    assert [(by_rank[r]["stage"], by_rank[r]["pipeline"]) for r in range(4)] == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_logits_loss_and_every_gradient_equal_one_process(run):
    assert run["max_abs_diff_logits"] < 1e-5
    assert run["loss_diff"] < 1e-5
    assert run["max_abs_diff_grads"] < 1e-6  # largest gradient ~2e-2
    n_params = sum(1 for _ in DeepSeekModel(schedule_config(num_layers=4)).parameters())
    for pipeline in (0, 1):  # its two stages together compare every parameter once
        assert sum(r["grads_compared"] for r in run["ranks"] if r["pipeline"] == pipeline) == n_params


def test_losses_over_20_steps_and_the_weights_equal_one_process(run):
    assert len(run["ep_losses"]) == STEPS
    assert run["ep_losses"][-1] < run["ep_losses"][0]  # it trains
    assert run["max_abs_diff_losses"] < 1e-4
    assert run["weights_off_share"] < 0.05  # a routing flip moves a few weights (test_expert_parallel)
    # the loads of both pipelines were summed before each bias update: the same biases as one process
    assert all(r["router_bias_moved"] > 0 for r in run["ranks"])
    assert run["max_abs_diff_router_bias"] == 0.0


def test_all_to_all_bytes_equal_the_formula(run):
    moe_layers = {0: 1, 1: 2}  # layer 0 is dense
    for rank in run["ranks"]:
        assert rank["a2a_bytes"] == rank["a2a_bytes_formula"]
        assert rank["a2a_bytes"]["dispatch(forward)"] > 0
        # one call per micro-batch, MoE layer of the stage and direction: no extra forward ran
        assert set(rank["a2a_calls"].values()) == {MICRO_BATCHES * moe_layers[rank["stage"]]}
    assert equality_table([run])[0]["layout"] == "pp2 x dp1 x ep2"


def test_a_rank_failing_inside_the_schedule_gives_the_launchers_error_without_hanging():
    with pytest.raises(LaunchError) as info:
        pp_ep_equality(nprocs=4, steps=1, fail_rank=3, timeout=120)
    assert info.value.rank == 3
    assert "timed out" not in str(info.value)
    # torch's pipelining wraps the stage's exception (its cause is above the quoted tail)
    assert "[Stage 1] failed to run forward" in info.value.stderr_tail


def test_a_grid_not_dividing_the_ranks_is_refused_before_any_rank_starts(no_rank_may_start):
    with pytest.raises(ValueError, match="pp=2 x ep=2 must divide nprocs=6"):
        pp_ep_equality(nprocs=6)
    with pytest.raises(ValueError, match="at least 2 layers"):
        pp_ep_equality(nprocs=4, num_layers=1)
