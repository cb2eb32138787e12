"""Tensor parallel on 2 CPU ranks (gloo) equals one process: outputs, gradients, and the f/g bytes.

One launch (~15-30 s on 2 loaded cores: two ranks importing torch) runs both paths, the
explicit Megatron ops and torch's parallelize_module, on the tiny model over two segments
(so the Transformer-XL memory path is split too).
"""
from __future__ import annotations


import pytest

from dslib.model import TransformerXL, load_config
from dslib.parallel.tp_study import tp_equality

SEGMENTS, LAYERS = 2, load_config("tiny").num_layers


@pytest.fixture(scope="module")
def runs():
    return {r["path"]: r for r in tp_equality(nprocs=2, segments=SEGMENTS)}


@pytest.mark.parametrize("path", ["explicit", "dtensor"])
def test_split_model_matches_single_process(runs, path):
    run = runs[path]
    assert run["tp"] == 2 and run["tp_group"] == [0, 1]
    assert run["max_abs_diff_logits"] < 1e-5
    assert run["loss_diff"] < 1e-5
    assert run["max_abs_diff_params"] == 0.0  # shards gather back to the original weights
    assert run["max_abs_diff_grads"] < 1e-6  # fp32 round-off (largest gradient ~5e-2)
    n_params = sum(1 for _ in TransformerXL(load_config("tiny")).parameters())
    assert run["max_abs_diff_grads_compared"] == n_params  # every gradient, gathered


def test_f_and_g_move_what_megatron_predicts(runs):
    run = runs["explicit"]
    # per layer and segment: g twice forward (attention, MLP), f twice backward
    assert run["comm_calls"] == {"g:all_reduce(forward)": 2 * LAYERS * SEGMENTS,
                                 "f:all_reduce(backward)": 2 * LAYERS * SEGMENTS}
    assert run["comm_bytes_total"] == run["comm_bytes_formula"] > 0


def test_tp_not_dividing_heads_is_refused_before_any_rank_starts(no_rank_may_start):
    with pytest.raises(ValueError, match="tp=3 does not divide the model's num_attention_heads=4"):
        tp_equality(nprocs=3)
