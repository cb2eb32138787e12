"""torch.distributed.pipelining schedules on 2 and 4 gloo ranks: each equals one process, holds the
activations its formula says; formulas by hand; the activation meter frees what autograd frees.

One launch of 2 ranks (~7 s here) and one of 4 (8 layers, one per stage for the two-stages-per-rank
schedules; ~11 s, 4 ranks oversubscribing 2 cores). Tolerances: step 1's loss
and the gradients are the same sums in another order (1e-6); later losses follow AdamW steps,
whose normalisation lifts float rounding of near-zero gradients to ~1e-4 in the loss (measured up
to 1.0e-4 here). Micro-batches in flight (a rank's peak saved bytes / one micro-batch's) match the
formulas to a few percent where a rank's stages are alike; the routed experts' token counts vary its bytes.
"""
from __future__ import annotations

import gc

import pytest
import torch

from dslib.parallel.schedules import (SCHEDULES, bubble_1f1b, bubble_interleaved, in_flight_formula, run_schedules,
                                      schedule_config, split_layers, stages_of_rank, table2_bubble_time,
                                      train_reference)
from dslib.train.memory import SavedActivations

STEPS, MICRO, M = 2, 2, 4
CONFIG = dict(num_layers=4)
P4, M4, CONFIG4 = 4, 8, dict(num_layers=8)  # DualPipeV needs m >= 2p stages


@pytest.fixture(scope="module")
def runs():
    config = schedule_config(**CONFIG)
    return run_schedules([(name, M) for name in SCHEDULES] + [("DualPipeV", 2)], config, ranks=2, steps=STEPS,
                         micro_batch=MICRO)


@pytest.fixture(scope="module")
def reference():
    return train_reference(schedule_config(**CONFIG), STEPS, MICRO, M)


def assert_equals_one_process(run, reference) -> None:
    losses, grads = reference
    assert run.error is None
    assert run.losses[0] == pytest.approx(losses[0], abs=1e-6)
    assert run.losses == pytest.approx(losses, abs=3e-4)
    assert set(run.grads) == set(grads)
    for key, grad in grads.items():
        assert (run.grads[key] - grad).abs().max().item() < 1e-6, key


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_equals_one_process(runs, reference, name):
    run = next(r for r in runs if r.schedule == name and r.micro_batches == M)
    assert_equals_one_process(run, reference)
    kinds = {a[1] for rank in run.actions for a in rank[-1]}
    assert "F" in kinds and ({"B"} & kinds or {"I", "W"} <= kinds)
    assert len(run.peak_activation_bytes) == 2 * SCHEDULES[name][2] and min(run.peak_activation_bytes.values()) > 0


@pytest.fixture(scope="module")
def runs4():
    return run_schedules([(name, M4) for name in SCHEDULES] + [("DualPipeV", 4)], schedule_config(**CONFIG4),
                         ranks=P4, steps=STEPS, micro_batch=MICRO)


@pytest.fixture(scope="module")
def reference4():
    return train_reference(schedule_config(**CONFIG4), STEPS, MICRO, M4)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_on_4_ranks_equals_one_process_and_holds_its_formula(runs4, reference4, name):
    run = next(r for r in runs4 if r.schedule == name and r.micro_batches == M4)
    assert_equals_one_process(run, reference4)
    assert len(run.actions) == P4 and len(run.peak_activation_bytes) == P4 * SCHEDULES[name][2]
    last_stage = P4 * SCHEDULES[name][2] - 1
    for rank, peak in enumerate(run.rank_peak_activation_bytes):
        stages = stages_of_rank(name, rank, P4)
        if last_stage in stages and SCHEDULES[name][2] > 1:
            continue  # the head stage's micro-batch (logits, the loss) outweighs its partner's: unequal stages
        in_flight = peak / sum(run.micro_batch_activation_bytes[s] for s in stages)
        # at its peak a rank need not hold as many chunks of each of its stages (interleaved rank 0: 11
        # chunks of two stages), and their chunks differ in bytes (dense vs MoE layers, the
        # routed token counts): bytes count micro-batches to a few percent (5.62 for 5.5 measured)
        assert in_flight == pytest.approx(in_flight_formula(name, P4, M4, rank)[0], rel=0.05), rank


def test_dualpipev_on_4_ranks_needs_8_micro_batches(runs4):
    failed = next(r for r in runs4 if r.schedule == "DualPipeV" and r.micro_batches == 4)
    assert failed.error == ("ValueError: DualPipeV requires at least as many microbatches as stages, "
                            "but got 4 microbatches and 8 stages.")


def test_saved_activations_are_released_when_a_backward_retains_the_graph():
    # zero-bubble's input backward retains the graph for the weight backward: a meter that held a
    # saved output with its grad_fn would keep that graph alive for good (a cycle through C++)
    meter = SavedActivations([])
    x = torch.randn(4, 8, requires_grad=True)
    with meter.saving(0):
        y = torch.tanh(x).exp()  # both save their outputs
    assert meter.per_micro_batch[0] == [2 * y.nbytes] and meter.peak[0] == 2 * y.nbytes
    torch.autograd.grad(y.sum(), x, retain_graph=True)
    del y
    gc.collect()
    assert meter.total[0] == 0 and meter.live[0] == {}


def test_in_flight_formulas_by_hand():
    assert [in_flight_formula("1F1B", 4, 8, r)[0] for r in range(4)] == [4, 3, 2, 1]
    assert in_flight_formula("1F1B", 4, 2, 0)[0] == 2
    # interleaved, p=4, v=2, m=8: rank 0 warms up (2-1)*4 + 2*3 = 10 chunks, holds 11 = 5.5 micro-batches,
    # Megatron's p(1 + (p-1)/(p v)); at m=4 it is capped at all 2m chunks
    assert in_flight_formula("Interleaved1F1B", 4, 8, 0)[0] == 5.5 == 4 * (1 + 3 / 8)
    assert in_flight_formula("Interleaved1F1B", 4, 4, 0)[0] == 4
    assert in_flight_formula("ZBVZeroBubble", 4, 8, 3)[0] == 4 and in_flight_formula("DualPipeV", 4, 8, 0)[0] == 4.5


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
