"""Pipeline x expert parallel: torch.distributed.pipelining stages whose routed experts are
sharded over the matching stages of the other pipelines (chapter 13).

The world is a grid pp x dp x ep, ep varying fastest. A pipeline is the pp ranks sharing a
(dp, ep) position; it runs its own slice of the global batch with Schedule1F1B, stages cut by
parallel.schedules.StageModule. The dp x ep ranks of one stage hold the same layers:
  ep group       the ep ranks (ep pipelines) sharding the stage's routed experts and exchanging
                 their tokens with expert.py's all-to-all
  expert dp      the dp ranks holding the same expert shard
  replica group  every rank of the stage: the non-expert parameters are data parallel over it
so 4 ranks give pp2 x ep2 (dp = 1). Gradients as in expert.py: torch's schedule averages the
micro-batches, ExpertParallelStepper averages over the stage's replicas (experts: over expert
dp, their backward all-to-all having brought every pipeline's part) and sums the routers' loads
over the replicas before the bias update.

Deadlock: a stage's MoE forward (and its backward) is a collective over its ep group, called
inside the schedule. Every pipeline runs the same deterministic schedule on micro-batches of
the same size, so the k-th all-to-all of a stage is the same layer and micro-batch on every
member, and the pipeline's point-to-point sends are asynchronous: no member waits for one
that waits on it. The stages' input and output shapes are given (static mode): torch's dynamic
shape inference runs one extra forward (and backward) of each stage before the first
micro-batch, which calls the all-to-all and adds to the routers' loads (measured on pp2 x ep2:
router biases 5e-3 off one process's after 20 steps, against 0 in static mode).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dslib.model import DeepSeekModel
from dslib.model.moe import update_router_biases
from dslib.parallel.expert import ExpertGroups, ExpertParallelStepper, parallelize_experts
from dslib.parallel.schedules import StageModule, lm_loss, stage_io


@dataclass
class PipelineExpertGroups:
    """This rank's place in the pp x dp x ep grid and the groups it belongs to."""

    pp: int
    stage: int
    pipeline: int          # which pipeline (= which slice of the global batch), 0 .. dp*ep-1
    pipelines: int         # dp x ep
    pp_group: Any          # this pipeline's stages
    experts: ExpertGroups  # ep / expert data parallel / replica groups of this stage


def _my_group(rows: torch.Tensor) -> Any:
    """Every row of `rows` [groups, size] becomes a group (all ranks must call); this rank's one."""
    group, _ = dist.new_subgroups_by_enumeration(rows.tolist())
    return group


def pipeline_expert_groups(pp: int, ep: int) -> PipelineExpertGroups:
    """The grid pp x dp x ep over the whole world, dp = world / (pp ep)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % (pp * ep):
        raise ValueError(f"pp={pp} x ep={ep} does not divide the world size {world}")
    dp = world // (pp * ep)
    grid = torch.arange(world).view(pp, dp, ep)
    pp_group = _my_group(grid.permute(1, 2, 0).reshape(-1, pp))
    experts = ExpertGroups(ep_group=_my_group(grid.reshape(-1, ep)),
                           expert_dp_group=_my_group(grid.permute(0, 2, 1).reshape(-1, dp)),
                           replica_group=_my_group(grid.reshape(pp, dp * ep)))
    return PipelineExpertGroups(pp, rank // (dp * ep), rank % (dp * ep), dp * ep, pp_group, experts)


def build_stage(model: DeepSeekModel, groups: PipelineExpertGroups, micro_batch: int,
                device: torch.device) -> tuple[StageModule, Any]:
    """This rank's stage of `model` with its experts sharded over the ep group, and its
    PipelineStage on the pipeline's group, shapes given (module docstring)."""
    from torch.distributed.pipelining import PipelineStage

    module = parallelize_experts(StageModule(model, groups.stage, groups.pp), groups.experts.ep_group)
    inputs, outputs = stage_io(model.config, micro_batch, groups.stage == 0, groups.stage == groups.pp - 1)
    stage = PipelineStage(module, groups.stage, groups.pp, device, input_args=inputs, output_args=outputs,
                          group=groups.pp_group)
    return module, stage


def schedule_1f1b(stage: Any, micro_batches: int) -> Any:
    """Schedule1F1B over the stage's pipeline, the micro-batch losses averaged (torch scales the
    gradients by 1/micro_batches)."""
    from torch.distributed.pipelining import Schedule1F1B

    return Schedule1F1B(stage, n_microbatches=micro_batches, loss_fn=lm_loss)


@dataclass
class PipelineStepResult:
    loss: torch.Tensor | None    # mean over this pipeline's micro-batches (last stage only)
    logits: torch.Tensor | None  # this pipeline's logits [B, T, V] (last stage only)


def pipeline_expert_step(schedule: Any, module: nn.Module, stepper: ExpertParallelStepper | None,
                         groups: PipelineExpertGroups, batch: tuple[torch.Tensor, torch.Tensor]
                         ) -> PipelineStepResult:
    """One step of this pipeline on its own `batch` (idx, targets [B, T]): the 1F1B forward and
    backward; with a stepper, the gradients and router loads synchronised over the stage's
    replicas, the update, and the routers' bias update (what train_step does after its step)."""
    idx, targets = batch
    first, last = groups.stage == 0, groups.stage == groups.pp - 1
    losses: list[torch.Tensor] = []
    logits = schedule.step(*([idx] if first else []), target=targets if last else None,
                           losses=losses if last else None)
    if stepper is not None:
        stepper.step()
        update_router_biases(module)
    return PipelineStepResult(torch.stack(losses).mean().detach() if last else None, logits if last else None)
