"""Pipeline parallel with DeepSpeed (chapter 06): the chapter-03 Transformer-XL as a PipelineModule.

The model becomes a flat list of layer specs, ``embed -> block x L -> norm -> head``, that
``deepspeed.pipe.PipelineModule`` cuts into stages (``partition_method``: ``uniform`` counts
layers, ``parameters`` counts weights, ``type:<regex>`` counts layers whose class matches).
``LayerSpec`` builds a layer only on the stage that owns it. The embedding and the output head
share one weight through ``TiedLayerSpec("embed", ...)``: each end stage holds a copy and
DeepSpeed all-reduces the two copies' gradients after backward, so they stay equal.

Why memory-less (memory_length 0): DeepSpeed's engine sends one activation tensor (or tuple)
from stage to stage per micro-batch, and its 1F1B schedule assumes micro-batches independent.
Transformer-XL's segment memory carries each layer's states of micro-batch k into micro-batch
k+1: a recurrence across micro-batches that the schedule would have to serialise (no overlap
left) and that no stage-to-stage tensor carries. So each segment is attended on its own here.

Every rank records when each pipeline instruction ran (``ForwardPass``, ``SendActivation``, ...);
dslib.studies.pipeline_study turns those timestamps into the load balance per stage and
the measured pipeline bubble, compared with GPipe's ``(p - 1) / (m + p - 1)``.
"""
from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from dslib.data.loader import random_windows
from dslib.data.shards import corpus_shards, load_shards
from dslib.dist.ds_config import load_ds_config
from dslib.dist.launch import launch
from dslib.dist.ops import initialize_engine
from dslib.dist.worker import resolve_entry
from dslib.env import dist_backend, synchronize
from dslib.model import ModelConfig, TransformerXL, load_config, sinusoidal_embedding
from dslib.model.transformer_xl import Block
from dslib.parallel.grid import validate_grid
from dslib.parallel.tensor import check_tensor_parallel, parallelize_block
from dslib.train.memory import SavedActivations


@contextlib.contextmanager
def _seeded(seed: int, layer_index: int):
    """Each layer draws its initial weights from its own seed: the same on every stage that
    builds it, and independent of which other layers that stage builds."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1009 + layer_index)
        yield


class EmbeddingPipe(nn.Embedding):
    """Token ids [B, T] -> vectors [B, T, d]; its weight is also the output head (tied)."""

    def __init__(self, config: ModelConfig, seed: int):
        with _seeded(seed, 0):
            super().__init__(config.vocab_size, config.hidden_size)
            TransformerXL.init_weights(self)
        self.dropout = config.dropout

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.dropout(super().forward(idx), self.dropout, self.training)


def head_forward(embedding: EmbeddingPipe, x: torch.Tensor) -> torch.Tensor:
    """The output head: hidden states times the (tied) embedding matrix -> logits."""
    return F.linear(x, embedding.weight)


class BlockPipe(nn.Module):
    """One Transformer-XL block on its own segment (no memory): [B, T, d] -> [B, T, d]."""

    def __init__(self, config: ModelConfig, index: int, seed: int):
        super().__init__()
        self.config = config
        with _seeded(seed, index + 1):
            self.block = Block(config)
            self.block.apply(TransformerXL.init_weights)
            TransformerXL.init_residual(self.block, config.num_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos_emb = sinusoidal_embedding(x.size(1), x.size(2), device=x.device, dtype=x.dtype)
        return self.block(x, x[:, :0], pos_emb)[0]


def tensor_parallel_stage(module: nn.Module, tp_group) -> None:
    """Megatron-split the blocks this stage holds across tp_group (dslib.parallel.tensor); the
    embedding, final norm and head stay replicated, so every activation a stage sends is whole."""
    import torch.distributed as dist

    blocks = [layer for layer in module.forward_funcs if isinstance(layer, BlockPipe)]
    for block in blocks:
        check_tensor_parallel(block.config, dist.get_world_size(tp_group))
        parallelize_block(block.block, tp_group)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def pipe_config(model: str = "tiny", **overrides: Any) -> ModelConfig:
    """A model config for the pipeline: memory-less (see the module docstring), no gate."""
    config = load_config(model, **{**overrides, "memory_length": 0})
    if config.gate.enabled:
        raise ValueError("the dynamic gate's auxiliary loss is not one activation a stage can pass on: "
                         "gate.enabled must be false for the pipeline")
    return config


def pipe_layers(config: ModelConfig, seed: int) -> list:
    """The model as DeepSpeed layer specs (nothing is built until a stage owns a layer)."""
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    return [TiedLayerSpec("embed", EmbeddingPipe, config, seed),
            *(LayerSpec(BlockPipe, config, i, seed) for i in range(config.num_layers)),
            LayerSpec(nn.LayerNorm, config.hidden_size, eps=config.layer_norm_eps),
            TiedLayerSpec("embed", EmbeddingPipe, config, seed, forward_fn=head_forward)]


def layer_names(config: ModelConfig) -> list[str]:
    """Class names of the layer list, the names ``type:<regex>`` partitioning matches."""
    return ["EmbeddingPipe", *["BlockPipe"] * config.num_layers, "LayerNorm", "EmbeddingPipe(head)"]


def validate_pipeline(config: ModelConfig, nprocs: int, stages: int, partition_methods: list[str],
             micro_batches: list[int], tensor: int = 1) -> None:
    """Refuse a shape the pipeline cannot run, in this process, before any rank starts.
    The grid (dp=1 x pp=stages x tp=tensor) is checked by dslib.parallel.grid."""

    validate_grid(nprocs, dp=1, pp=stages, tp=tensor, config=config)
    if any(m < 1 for m in micro_batches):
        raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
    for method in partition_methods:
        if method.startswith("type:"):
            pattern = re.compile(method[5:], re.IGNORECASE)
            if not any(pattern.search(name) for name in layer_names(config)):
                raise ValueError(f"partition_method {method!r} matches no layer; layers: {layer_names(config)}")
        elif method not in ("uniform", "parameters"):
            raise ValueError(f"partition_method must be 'uniform', 'parameters' or 'type:<regex>', got {method!r}")


def pipe_ds_config(micro_batch: int, micro_batches: int, base: str = "zero0") -> dict:
    """configs/deepspeed/<base>.json for a pipeline: m micro-batches (gradient accumulation) per step.

    No gradient clipping, so a step is the plain AdamW step the single-process reference takes.
    """
    overrides = {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": micro_batches,
                 "gradient_clipping": 0.0}
    return load_ds_config(base, overrides).as_dict()


def micro_batch_stream(tokens: torch.Tensor, micro: int, micro_batches: int, seq_len: int,
                       seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, targets) micro-batches: step s's global batch (dslib.data.loader.random_windows) cut into m pieces."""

    step = 0
    while True:
        x, y = random_windows(tokens, step, micro * micro_batches, seq_len, seed)
        for k in range(micro_batches):
            yield x[k * micro:(k + 1) * micro], y[k * micro:(k + 1) * micro]
        step += 1


def _record_instructions(engine, events: list, meter: SavedActivations | None = None) -> None:
    """Wrap each pipeline instruction of this engine to log (name, start, end) on a clock all
    processes of the machine share (CLOCK_MONOTONIC); with a meter, what each ForwardPass (the
    loss included, on the last stage) saves for backward counts as one micro-batch of the stage."""
    def timed(name, run):
        def wrapper(self, **kwargs):
            synchronize()  # kernels are async: the clock must see their work
            start = time.monotonic()
            with meter.saving(engine.stage_id) if meter and name == "ForwardPass" else contextlib.nullcontext():
                run(self, **kwargs)
            synchronize()
            events.append((name, start, time.monotonic()))
        return wrapper

    engine._INSTRUCTION_MAP = {cls: timed(cls.__name__, run) for cls, run in type(engine)._INSTRUCTION_MAP.items()}


@dataclass
class PipeRun:
    """One pipeline training run; rank 0 returns it with every stage's records."""

    label: str                          # which model layout (a study names its layouts)
    config: dict                        # the ModelConfig it trained
    partition_method: str
    micro_batches: int
    parts: list[int]                    # layer index where each stage starts (+ end)
    stage_params: list[int]             # parameters held per stage (a tied copy counts where it lives)
    losses: list[float]                 # train_batch's loss per step (mean over micro-batches)
    events: list[list[list[tuple]]]     # [stage][step] -> (instruction, start, end)
    tied_max_diff: float                # after training: max |embedding - head| between the two copies
    peak_activation_bytes: list[int] = field(default_factory=list)  # per stage, when measured
    micro_batch_activation_bytes: list[int] = field(default_factory=list)  # per stage: one micro-batch's

    @property
    def stage_layers(self) -> list[list[str]]:
        names = layer_names(ModelConfig(**self.config))
        return [names[a:b] for a, b in zip(self.parts, self.parts[1:])]


def build_pipeline_engine(config: ModelConfig, ds_config: dict, partition_method: str, seed: int, topology=None,
                 stages: int | None = None, transform=None):
    """PipelineModule + DeepSpeed pipeline engine on this rank. ``transform(module)`` may rewrite the
    stage's layers in place before the engine wraps them (tensor parallel does)."""
    import deepspeed
    from deepspeed.pipe import PipelineModule

    deepspeed.init_distributed(dist_backend=dist_backend())  # adopts the launcher's process group
    module = PipelineModule(layers=pipe_layers(config, seed), num_stages=None if topology else stages,
                            topology=topology, loss_fn=lm_loss, partition_method=partition_method)
    if transform is not None:
        transform(module)
    return initialize_engine(module, ds_config, [p for p in module.parameters() if p.requires_grad])


def _collect(run: dict, engine, losses: list[float], events: list, meter: SavedActivations | None) -> PipeRun:
    """Every rank's records of one run gathered into a PipeRun (the first rank of a stage speaks for it)."""
    import torch.distributed as dist

    n_params = sum(p.numel() for p in engine.module.parameters())
    tied = engine.module.tied_modules["embed"].weight.detach().cpu() if "embed" in engine.module.tied_modules else None
    saved = (meter.process_peak, meter.micro_batch_bytes(engine.stage_id)) if meter else ()
    per_rank = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, (engine.stage_id, n_params, events, tied, saved))
    by_stage: dict[int, tuple] = {}
    for stage, *records in per_rank:
        by_stage.setdefault(stage, records)
    stages = sorted(by_stage)
    first, last = by_stage[stages[0]][2], by_stage[stages[-1]][2]
    memory = [by_stage[s][3] for s in stages if by_stage[s][3]]
    return PipeRun(run["label"], run["config"], run["partition_method"], run["micro_batches"],
                   [int(p) for p in engine.module.parts], [by_stage[s][0] for s in stages], losses,
                   [by_stage[s][1] for s in stages], (first - last).abs().max().item(),
                   [peak for peak, _ in memory], [one for _, one in memory])


def train_pipeline_rank(runs: list[dict], ds_config: dict, steps: int, shards: str, seed: int = 0, stages: int = 2,
               topology_dims: dict | None = None, transform: str | None = None,
               measure_activations: bool = False) -> list[PipeRun]:
    """One rank: for each run ({"label", "config", "partition_method", "micro_batches"}) build a
    pipeline and train ``steps`` steps with ``engine.train_batch``, timing every instruction and
    (``measure_activations``) counting what its forwards save for backward (SavedActivations).

    ``topology_dims`` ({"num_pp", "num_mp", "num_dp"}) builds a PipeModelDataParallelTopology;
    ``transform`` ('module:function', called as function(module, tensor_parallel_group)) edits each
    stage before training (tensor parallel).
    """
    import torch.distributed as dist
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    tokens = torch.from_numpy(load_shards(shards).tokens("train").astype("int64"))
    edit = None
    if transform:
        # the tensor-parallel group is DeepSpeed's "slice" group: its "model parallel group"
        # spans pipeline x tensor ranks (what DeepSpeed checks overflow over), not the Megatron group
        edit = lambda module: resolve_entry(transform)(module, module.mpu().get_slice_parallel_group())  # noqa: E731
    # all engines first, then the steps round-robin over them: a burst of load from other
    # processes on the machine then slows every run's samples alike, not one run's all
    engines, streams = [], []
    for run in runs:
        model_cfg, m = ModelConfig(**run["config"]), run["micro_batches"]
        ds_cfg = {**ds_config, "gradient_accumulation_steps": m}
        topology = PipeModelDataParallelTopology(**topology_dims) if topology_dims else None
        engines.append(build_pipeline_engine(model_cfg, ds_cfg, run["partition_method"], seed, topology, stages, edit))
        streams.append(micro_batch_stream(tokens, ds_cfg["train_micro_batch_size_per_gpu"], m,
                                          model_cfg.seq_len, seed))
    events: list = []
    meters = [SavedActivations(engine.module.parameters()) if measure_activations else None for engine in engines]
    for engine, meter in zip(engines, meters):
        _record_instructions(engine, events, meter)
    losses = [[] for _ in runs]
    per_step = [[] for _ in runs]
    for _ in range(steps):
        for i, engine in enumerate(engines):
            dist.barrier()  # every stage starts the step together: spans are comparable
            events.clear()
            losses[i].append(engine.train_batch(streams[i]).item())
            per_step[i].append(list(events))
    return [_collect(*args) for args in zip(runs, engines, losses, per_step, meters)]


def run_pipeline_engines(runs: list[dict], stages: int = 2, micro_batch: int = 2, steps: int = 3, seed: int = 0,
                 tensor: int = 1, transform: str | None = None, token_docs: int = 2000,
                 timeout: float = 300, measure_activations: bool = False) -> list[PipeRun]:
    """Validate every run here, then train them all, step by step in turn, on stages * tensor ranks
    (one launch) with DeepSpeed's pipeline engine. A run: {"config": ModelConfig, "partition_method",
    "micro_batches", "label"}. ``tensor`` > 1 uses PipeModelDataParallelTopology(num_pp=stages,
    num_mp=tensor, num_dp=1) and needs ``transform`` (the tensor-parallel rewrite of each stage)."""

    nprocs = stages * tensor
    for run in runs:
        validate_pipeline(run["config"], nprocs, stages, [run["partition_method"]], [run["micro_batches"]], tensor)
    if tensor > 1 and transform is None:
        raise ValueError("tensor > 1 needs transform='module:function' (the tensor-parallel rewrite)")
    vocab = min(run["config"].vocab_size for run in runs)  # token ids valid for every run's embedding
    kwargs = dict(runs=[{**run, "config": run["config"].model_dump(), "label": run.get("label", "")} for run in runs],
                  ds_config=pipe_ds_config(micro_batch, 1), steps=steps, seed=seed,
                  shards=str(corpus_shards(vocab, limit=token_docs)), stages=stages,
                  topology_dims=dict(num_pp=stages, num_mp=tensor, num_dp=1) if tensor > 1 else None,
                  transform=transform, measure_activations=measure_activations)
    return launch(entry="dslib.parallel.pipeline:train_pipeline_rank", nprocs=nprocs, kwargs=kwargs, timeout=timeout)
