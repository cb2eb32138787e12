"""The 3D grid layout: rank <-> (dp, pp, tp), groups, and shapes refused before any process starts."""
from __future__ import annotations


import pytest

from dslib.model import load_config
from dslib.parallel.grid import GridLayout, validate_grid
from dslib.dist.launch import launch


@pytest.mark.parametrize("dp, pp, tp", [(1, 1, 2), (2, 1, 2), (1, 2, 2), (2, 2, 2), (3, 2, 4), (2, 4, 1)])
def test_coordinates_round_trip_and_groups_partition_the_world(dp, pp, tp):
    layout = GridLayout(dp=dp, pp=pp, tp=tp)
    assert layout.world_size == dp * pp * tp
    for rank in range(layout.world_size):
        assert layout.rank(**layout.coord(rank)._asdict()) == rank
    for axis, size in (("tp", tp), ("pp", pp), ("dp", dp)):
        groups = layout.groups(axis)
        assert all(len(g) == size for g in groups)
        assert sorted(r for g in groups for r in g) == list(range(layout.world_size))


def test_tensor_parallel_ranks_are_neighbours_and_pipelines_cross_nodes():
    layout = GridLayout(dp=2, pp=2, tp=2)
    assert layout.groups("tp") == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert layout.groups("dp") == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert layout.groups("pp") == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert layout.coord(5) == (0, 1, 1)  # (dp, pp, tp): stage 1 of the first replica
    nodes = {row["rank"]: row["node"] for row in layout.table(ranks_per_node=4)}
    assert all(len({nodes[r] for r in g}) == 1 for g in layout.groups("tp"))
    assert all(len({nodes[r] for r in g}) == 2 for g in layout.groups("pp"))


def test_layout_matches_deepspeed_pipeline_topology():
    pytest.importorskip("deepspeed")
    layout = GridLayout(dp=3, pp=2, tp=4)
    ds = layout.deepspeed_topology()
    for rank in range(layout.world_size):
        c, d = layout.coord(rank), ds.get_coord(rank)
        assert (c.pp, c.dp, c.tp) == (d.pipe, d.data, d.model)
    assert layout.groups("tp") == sorted(ds.get_axis_comm_lists("model"))


@pytest.mark.parametrize("world, dp, pp, tp, overrides, message", [
    (8, 2, 2, 1, {}, "world_size=8 != dp*pp*tp"),
    (3, 1, 1, 3, {}, "tp=3 does not divide the model's num_attention_heads=4"),
    (4, 1, 1, 4, {"intermediate_size": 66}, "tp=4 does not divide the model's intermediate_size=66"),
    (4, 1, 4, 1, {}, "pp=4 is greater than the model's num_layers=2"),
    (0, 0, 1, 1, {}, "dp must be a positive integer"),
])
def test_invalid_shapes_are_refused_naming_the_field(world, dp, pp, tp, overrides, message):
    config = load_config("tiny", **overrides)
    with pytest.raises(ValueError) as error:
        validate_grid(world, dp, pp, tp, config)
    assert message in str(error.value)


def test_build_grid_on_4_ranks_creates_the_layout_groups():
    """One launch of 4 ranks (~15-25 s on 2 loaded cores): dp=1, pp=2, tp=2."""
    layout = GridLayout(dp=1, pp=2, tp=2)
    ranks = launch("dslib.parallel.grid:grid_ranks_rank", 4, dict(dp=1, pp=2, tp=2), timeout=120)
    for row in ranks:
        assert row["coord"] == tuple(layout.coord(row["rank"]))
        for axis in ("tp", "pp", "dp"):
            assert row[axis] == layout.group_of(row["rank"], axis)
