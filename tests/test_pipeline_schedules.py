"""torch.distributed.pipelining schedules on 2 gloo ranks: each equals one process; formulas by hand.

One launch of 2 ranks (~20-40 s on 2 shared cores). Tolerances: step 1's loss and the gradients are
the same sums in another order (1e-6); later losses follow AdamW steps, whose normalisation lifts
float rounding of near-zero gradients to ~1e-4 in the loss (measured up to 1.0e-4 here).
"""
from __future__ import annotations

import pytest

from dslib.parallel.schedules import (SCHEDULES, bubble_1f1b, bubble_interleaved, run_schedules, schedule_config,
                                      split_layers, stages_of_rank, table2_bubble_time, train_reference)

STEPS, MICRO, M = 2, 2, 4
CONFIG = dict(num_layers=4)


@pytest.fixture(scope="module")
def runs():
    config = schedule_config(**CONFIG)
    return run_schedules([(name, M) for name in SCHEDULES] + [("DualPipeV", 2)], config, ranks=2, steps=STEPS,
                         micro_batch=MICRO)


@pytest.fixture(scope="module")
def reference():
    return train_reference(schedule_config(**CONFIG), STEPS, MICRO, M)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_equals_one_process(runs, reference, name):
    run = next(r for r in runs if r.schedule == name and r.micro_batches == M)
    losses, grads = reference
    assert run.error is None
    assert run.losses[0] == pytest.approx(losses[0], abs=1e-6)
    assert run.losses == pytest.approx(losses, abs=3e-4)
    assert set(run.grads) == set(grads)
    for key, grad in grads.items():
        assert (run.grads[key] - grad).abs().max().item() < 1e-6, key
    kinds = {a[1] for rank in run.actions for a in rank[-1]}
    assert "F" in kinds and ({"B"} & kinds or {"I", "W"} <= kinds)
    assert len(run.peak_activation_bytes) == 2 * SCHEDULES[name][2] and min(run.peak_activation_bytes.values()) > 0


def test_a_schedule_that_cannot_run_is_a_row_with_its_error(runs):
    failed = next(r for r in runs if r.schedule == "DualPipeV" and r.micro_batches == 2)
    assert failed.error.startswith("ValueError: DualPipeV requires at least as many microbatches as stages")
    assert failed.losses == []


def test_bubble_formulas_by_hand():
    assert bubble_1f1b(2, 2) == pytest.approx(1 / 3) and bubble_1f1b(4, 13) == pytest.approx(3 / 16)
    assert bubble_interleaved(4, 8, 2) == pytest.approx(3 / 19)
    # V3 Table 2 with F=1, B=2, W=1: 1F1B (8-1)*3 = 21; ZB1P (8-1)*(3-2) = 7; DualPipe (8/2-1)*(3+2-3) = 6
    assert table2_bubble_time("1F1B", 8, 1, 2, 1) == 21
    assert table2_bubble_time("ZB1P", 8, 1, 2, 1) == 7
    assert table2_bubble_time("DualPipe", 8, 1, 2, 1) == 6
    assert table2_bubble_time("DualPipe", 8, 1, 2, 1, fb=2.5) == pytest.approx(4.5)
    with pytest.raises(ValueError, match="Table 2"):
        table2_bubble_time("GPipe", 8, 1, 2, 1)


def test_stage_placement_and_split():
    assert split_layers(5, 2) == [(0, 3), (3, 5)]
    assert stages_of_rank("DualPipeV", 0, 2) == [0, 3] and stages_of_rank("Interleaved1F1B", 1, 2) == [1, 3]
    with pytest.raises(ValueError, match="at least 4 layers"):
        split_layers(2, 4)
