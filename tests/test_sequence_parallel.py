"""Sequence parallel (Megatron-style, over the tp group) on 2 CPU ranks equals one process,
with Transformer-XL memory (two segments), and saves fewer activation bytes per rank.

One launch (~15-30 s on 2 loaded cores)."""
from __future__ import annotations


import pytest

from dslib.parallel.tp_study import sp_study


@pytest.fixture(scope="module")
def run():
    return sp_study([2], segments=2)[0]


@pytest.mark.parametrize("mode", ["tp+sp", "tp+sp keep gathered"])
def test_sequence_parallel_matches_single_process(run, mode):
    sp = run[mode]
    assert sp["max_abs_diff_logits"] < 1e-5 and sp["loss_diff"] < 1e-5
    assert sp["max_abs_diff_grads"] < 1e-6  # incl. LayerNorm grads summed over the group
    assert sp["max_abs_diff_grads_compared"] == run["tp"]["max_abs_diff_grads_compared"]


def test_activation_bytes_fall_tp_then_sp_then_regather(run):
    single, tp = run["single_process_saved_bytes"], run["tp"]["saved_bytes_per_rank"][0]
    kept, regathered = run["tp+sp keep gathered"], run["tp+sp"]
    assert regathered["saved_bytes_per_rank"][0] < kept["saved_bytes_per_rank"][0] < tp < single
    assert regathered["saved_bytes_per_rank"][0] == regathered["saved_bytes_per_rank"][1]
    # the price: each gathered input is all-gathered once more in backward
    assert regathered["comm_bytes"]["sp:all_gather(backward, re-gather)"] == \
        regathered["comm_bytes"]["sp:reduce_scatter(backward)"]


def test_reduce_scatter_plus_all_gather_move_what_all_reduce_did(run):
    tp, sp = run["tp"]["comm_bytes"], run["tp+sp"]["comm_bytes"]
    # g's all-reduce becomes a reduce-scatter of the same tensor, f's a reduce-scatter of the same gradient
    assert sp["sp:reduce_scatter(forward)"] == tp["g:all_reduce(forward)"]
    assert sp["sp:reduce_scatter(backward)"] == tp["f:all_reduce(backward)"]


@pytest.mark.parametrize("overrides, message", [
    ({"seq_len": 63, "memory_length": 0}, "tp=2 does not divide the model's seq_len=63"),
    ({"memory_length": 32}, "memory_length=32 must be a multiple of seq_len=64"),
])
def test_unsplittable_shapes_are_refused_before_any_rank_starts(overrides, message, no_rank_may_start):
    with pytest.raises(ValueError, match=message):
        sp_study([2], overrides=overrides)
