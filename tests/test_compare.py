"""The optimizer comparison: target crossing, ratios over seeds, sweep selection, real short runs."""
from types import SimpleNamespace

import torch
from torch import nn

import pytest

from dslib.studies.optimizers import (Curve, OptimizerSpec, best_specs, common_target, grid_edge, loss_targets,
                                      lr_sweep, seed_runs, speedup, speedups_at, sweep_edges, train_curve,
                                      widen_to_interior)


def curve(name: str, seed: int, val_loss: list[float], step_s: float = 1.0) -> Curve:
    steps = [10 * (i + 1) for i in range(len(val_loss))]
    return Curve(OptimizerSpec(name, 1e-3), seed, val_steps=steps, val_wall_s=[s * step_s for s in steps],
                 val_loss=val_loss)


def test_reach_and_speedup_ratios_per_seed():
    adamw = [curve("adamw", s, [3.0, 2.5, 2.0, 1.8]) for s in range(3)]
    lion = [curve("lion", 0, [2.5, 2.0, 1.9, 1.7], step_s=0.5), curve("lion", 1, [2.8, 2.4, 2.0, 1.9]),
            curve("lion", 2, [3.0, 2.9, 2.8, 2.7])]
    assert adamw[0].reach(2.0) == (30, 30.0) and lion[2].reach(2.0) is None
    result = speedup(adamw, lion, target=2.0)
    assert [r.get("step_ratio") for r in result["per_seed"]] == [1.5, 1.0, None]
    assert result["per_seed"][0]["time_ratio"] == 3.0  # half the step time and 2/3 of the steps
    assert result["step_ratio_mean"] == 1.25 and result["step_ratio_min"] == 1.0


def test_common_target_is_reached_by_every_run_and_best_spec_ignores_nan():
    runs = [curve("adamw", 0, [3.0, 2.0]), curve("lion", 0, [2.5, 2.2, 2.4])]
    target = common_target(runs)
    assert target == 2.2 and all(r.reach(target) for r in runs)
    diverged = Curve(OptimizerSpec("lion", 1e-2), 0, val_steps=[10], val_wall_s=[1.0], val_loss=[float("nan")])
    assert best_specs({"lion": [diverged, runs[1]]})["lion"] == runs[1].spec


class LinearRegression(nn.Linear):
    """nn.Linear with the book's model interface: ``model(x, targets=y).loss`` is the MSE."""

    def forward(self, x: torch.Tensor, targets: torch.Tensor) -> SimpleNamespace:
        loss = nn.functional.mse_loss(super().forward(x), targets)
        return SimpleNamespace(loss=loss, aux_loss=loss.new_zeros(()), mems=[], stats={})


def regression_setup():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 1, generator=gen)
    data = [(x, x @ w) for x in torch.randn(40, 16, 8, generator=gen)]
    return dict(batch_fn=lambda step: data[step % 32], val_batches=data[32:])


def test_train_curve_and_sweep_learn_on_real_runs():
    kwargs = regression_setup()
    model_fn = lambda: LinearRegression(8, 1)  # noqa: E731
    c = train_curve(model_fn, OptimizerSpec("lion", 3e-2), seed=0, steps=60, eval_every=20, **kwargs)
    assert c.val_steps == [20, 40, 60] and c.val_loss[-1] < 0.5 * c.val_loss[0]
    assert len(c.train_loss) == 60 and c.wall_s == sorted(c.wall_s)
    sweep = lr_sweep(model_fn, [OptimizerSpec("adamw", lr) for lr in (1e-4, 3e-2)], seed=0, steps=40,
                     eval_every=20, **kwargs)
    assert best_specs(sweep)["adamw"].lr == 3e-2  # the tiny lr barely moves in 40 steps
    runs = seed_runs(model_fn, {"adamw": OptimizerSpec("adamw", 3e-2)}, seeds=[0, 1], steps=20,
                     eval_every=10, **kwargs)
    assert [c.seed for c in runs["adamw"]] == [0, 1]
    assert runs["adamw"][0].val_loss != runs["adamw"][1].val_loss  # the seed changes the init


def test_steps_to_target_interpolate_between_evaluations():
    c = curve("adamw", 0, [3.0, 2.5, 2.0, 1.8])  # evaluations at steps 10, 20, 30, 40
    assert c.reach(2.25) == pytest.approx((25.0, 25.0))  # half-way between steps 20 and 30
    assert c.reach(1.9) == pytest.approx((35.0, 35.0))
    assert c.reach(3.5) == (10.0, 10.0)  # already below at the first evaluation
    assert c.reach(1.0) is None
    fast = curve("lion", 0, [2.6, 2.1, 1.9, 1.8])
    assert speedup([c], [fast], 2.25)["step_ratio_mean"] == pytest.approx(25.0 / 17.0)  # 10 + 10 * 0.35 / 0.5


@pytest.mark.parametrize("losses, edge", [([1.0, 2.0, 3.0], "low"), ([3.0, 2.0, 1.0], "high"),
                                          ([2.0, 1.0, 3.0], None), ([float("nan"), 2.0, 1.0], "high"),
                                          ([2.0, 1.0, float("nan")], None)])
def test_grid_edge_flags_a_best_lr_on_the_edge(losses, edge):
    assert grid_edge([1e-4, 1e-3, 1e-2], losses) == edge
    assert grid_edge([1e-3], [1.0]) == "single point"


def test_loss_targets_run_from_the_first_evaluation_down_to_the_common_target():
    runs = [curve("adamw", 0, [3.0, 2.0]), curve("lion", 0, [2.5, 2.2, 2.4])]
    assert loss_targets(runs, (0.5, 1.0)) == pytest.approx([2.6, 2.2])
    rows = speedups_at(runs[:1], [curve("adamw", 0, [2.5, 2.2])], [2.6, 2.2])
    assert [r["seeds_reached"] for r in rows] == [1, 1] and rows[0]["step_ratio_mean"] == pytest.approx(14.0 / 10.0)


def test_widen_moves_an_edge_best_lr_inside_its_grid():
    kwargs = regression_setup()
    model_fn = lambda: LinearRegression(8, 1)  # noqa: E731
    train = dict(steps=30, eval_every=10, **kwargs)
    sweep = lr_sweep(model_fn, [OptimizerSpec("adamw", lr) for lr in (1e-4, 3e-4)], seed=0, **train)
    assert sweep_edges(sweep) == {"adamw": "high"}  # both too small: the larger wins
    widened = widen_to_interior(model_fn, sweep, seed=0, factor=30.0, max_rounds=3, **train)
    lrs = [c.spec.lr for c in widened["adamw"]]
    assert lrs == sorted(lrs) and max(lrs) > 3e-4 and len(lrs) > 2
    assert sweep_edges(widened)["adamw"] is None or len(lrs) == 5
    assert len(sweep["adamw"]) == 2  # the input sweep is left as it was
