"""The 3D process grid: world = pp x dp x tp ranks, and which ranks talk to which.

Rank order (the same as Megatron-LM's and DeepSpeed's PipeModelDataParallelTopology):
tensor parallel varies fastest, then data parallel, then pipeline parallel:

    rank = (pp_index * dp + dp_index) * tp + tp_index

Why this order: tensor parallel all-reduces activations twice per layer in forward and
twice in backward, so its ranks should be neighbours, which a launcher places on one
node (NVLink). Pipeline stages exchange one activation per micro-batch and tolerate the
slow links between nodes, so pipeline parallel is the slowest-varying axis; data parallel
all-reduces gradients once per step and sits between the two.

Sequence parallel (dslib.parallel.sequence) is Megatron-style: it reuses the tensor
parallel group (the sequence is split across the same tp ranks in the LayerNorm/dropout
regions), so it needs no axis of its own. Ulysses-style sequence parallel, which would
need a separate axis, is not built here.

`GridLayout` is pure Python (usable before any process starts, and for drawings);
`build_grid` creates the torch.distributed groups inside a launched rank.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from dslib.env import device
from dslib.model.config import ModelConfig
from dslib.viz import new_figure

AXES = ("pp", "dp", "tp")  # slowest to fastest


class Coord(NamedTuple):
    dp: int
    pp: int
    tp: int


@dataclass(frozen=True)
class GridLayout:
    dp: int
    pp: int
    tp: int

    def __post_init__(self) -> None:
        for name in ("dp", "pp", "tp"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @property
    def world_size(self) -> int:
        return self.dp * self.pp * self.tp

    def rank(self, dp: int, pp: int, tp: int) -> int:
        return (pp * self.dp + dp) * self.tp + tp

    def coord(self, rank: int) -> Coord:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside a world of {self.world_size}")
        tp, rest = rank % self.tp, rank // self.tp
        return Coord(dp=rest % self.dp, pp=rest // self.dp, tp=tp)

    def groups(self, axis: str) -> list[list[int]]:
        """Every group of `axis` ('tp', 'pp' or 'dp'): the ranks that differ only along it."""
        if axis not in AXES:
            raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
        sizes = {"dp": self.dp, "pp": self.pp, "tp": self.tp}
        others = [a for a in AXES if a != axis]
        result = []
        for i in range(sizes[others[0]]):
            for j in range(sizes[others[1]]):
                fixed = {others[0]: i, others[1]: j}
                result.append([self.rank(**fixed, **{axis: k}) for k in range(sizes[axis])])
        return sorted(result)

    def group_of(self, rank: int, axis: str) -> list[int]:
        return next(g for g in self.groups(axis) if rank in g)

    def deepspeed_topology(self):
        """The same layout as DeepSpeed's PipeModelDataParallelTopology (for PipelineModule)."""
        from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

        return PipeModelDataParallelTopology(num_pp=self.pp, num_mp=self.tp, num_dp=self.dp)

    def table(self, ranks_per_node: int | None = None) -> list[dict[str, int]]:
        """One row per rank: its coordinates (and node, given ranks_per_node)."""
        rows = []
        for rank in range(self.world_size):
            row = {"rank": rank, **self.coord(rank)._asdict()}
            if ranks_per_node:
                row["node"] = rank // ranks_per_node
            rows.append(row)
        return rows


def validate_grid(world_size: int, dp: int, pp: int, tp: int,
                  config: ModelConfig | None = None) -> GridLayout:
    """The layout, or a ValueError naming the field, before any process starts."""
    layout = GridLayout(dp=dp, pp=pp, tp=tp)
    if layout.world_size != world_size:
        raise ValueError(f"world_size={world_size} != dp*pp*tp = {dp}*{pp}*{tp} = {layout.world_size}")
    if config is not None:
        for field in ("num_attention_heads", "hidden_size", "intermediate_size"):
            if getattr(config, field) % tp:
                raise ValueError(f"tp={tp} does not divide the model's {field}={getattr(config, field)}")
        if pp > config.num_layers:
            raise ValueError(f"pp={pp} is greater than the model's num_layers={config.num_layers}")
    return layout


@dataclass
class ProcessGrid:
    """This rank's place in the grid and its torch.distributed groups."""

    layout: GridLayout
    rank: int
    coord: Coord
    mesh: Any  # torch DeviceMesh with dims ("pp", "dp", "tp")
    tp_group: Any
    pp_group: Any
    dp_group: Any


def build_grid(dp: int, pp: int, tp: int, config: ModelConfig | None = None) -> ProcessGrid:
    """Create the tp/pp/dp groups inside a launched rank (every rank must call it).

    The groups come from a DeviceMesh of shape (pp, dp, tp) (row-major, so its layout is
    GridLayout's); the same mesh serves the DTensor path (mesh["tp"]).
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    layout = validate_grid(dist.get_world_size(), dp, pp, tp, config)
    mesh = init_device_mesh(device().type, (pp, dp, tp), mesh_dim_names=AXES)
    rank = dist.get_rank()
    groups = {axis: mesh.get_group(axis) for axis in AXES}
    for axis, group in groups.items():  # the mesh and the pure layout must agree
        assert dist.get_process_group_ranks(group) == layout.group_of(rank, axis), axis
    return ProcessGrid(layout, rank, layout.coord(rank), mesh,
                       tp_group=groups["tp"], pp_group=groups["pp"], dp_group=groups["dp"])


def grid_ranks_rank(dp: int, pp: int, tp: int) -> list[dict]:
    """Launch entry: build the grid and return every rank's coordinates and group members."""
    import torch.distributed as dist

    grid = build_grid(dp, pp, tp)
    mine = {"rank": grid.rank, "coord": tuple(grid.coord),
            **{axis: dist.get_process_group_ranks(getattr(grid, f"{axis}_group")) for axis in AXES}}
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return everyone


def draw_grid(layout: GridLayout, ranks_per_node: int | None = None):
    """Boxes for ranks, grouped into nodes; colour = pipeline stage, outline = tp group.

    With ranks_per_node = tp (or a multiple), each tp group stays inside one node and
    the pipeline's stages land on different nodes: the article's topology advice.
    """
    from matplotlib.patches import FancyBboxPatch, Rectangle

    per_node = ranks_per_node or layout.world_size
    nodes = -(-layout.world_size // per_node)
    fig, ax = new_figure(width=max(7.0, 0.9 * nodes * (per_node + 1)), height=2.6)
    colours = [f"C{i % 10}" for i in range(layout.pp)]
    for node in range(nodes):
        ax.add_patch(Rectangle((node * (per_node + 1) - 0.6, -0.7), per_node + 0.2, 1.9,
                               fill=False, linestyle="--", edgecolor="grey"))
        ax.text(node * (per_node + 1) + per_node / 2 - 0.5, 1.0, f"node {node}", ha="center", color="grey")
    x_of = {r: (r // per_node) * (per_node + 1) + r % per_node for r in range(layout.world_size)}
    for rank in range(layout.world_size):
        c = layout.coord(rank)
        ax.add_patch(Rectangle((x_of[rank] - 0.4, -0.4), 0.8, 0.8, color=colours[c.pp], alpha=0.6))
        ax.text(x_of[rank], 0, f"r{rank}\ndp{c.dp} pp{c.pp}\ntp{c.tp}", ha="center", va="center", fontsize=7)
    for group in layout.groups("tp"):
        xs = [x_of[r] for r in group]
        crosses = len({r // per_node for r in group}) > 1
        ax.add_patch(FancyBboxPatch((min(xs) - 0.48, -0.48), max(xs) - min(xs) + 0.96, 0.96,
                                    boxstyle="round,pad=0.02", fill=False, linewidth=2,
                                    edgecolor="red" if crosses else "black"))
    for group in layout.groups("pp"):  # one pipeline: stage 0 -> 1 -> ...
        xs = [x_of[r] for r in group]
        ax.plot(xs, [-0.55 - 0.03 * group[0]] * len(xs), marker=".", linewidth=1, alpha=0.7)
    ax.set_xlim(-1, nodes * (per_node + 1) - 0.5)
    ax.set_ylim(-1.0, 1.4)
    ax.set_axis_off()
    ax.set_title(f"dp={layout.dp} pp={layout.pp} tp={layout.tp}, {per_node} ranks/node. Colour: pipeline "
                 "stage; box: tp group (red if it crosses nodes); lines: pipelines", fontsize=9)
    return fig
