"""Memory per rank: model states under data parallel / ZeRO 1-2-3 with offload, activations, buffers.

Model states follow the ZeRO paper (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations
Toward Training Trillion Parameter Models", sec. 3.1 and 5): with mixed precision every
parameter costs 2 (16-bit weight) + 2 (16-bit gradient) + K bytes of optimizer state, K = 12
for Adam (fp32 master weight, momentum, variance). DeepSpeed's own estimators
(``estimate_zero2_model_states_mem_needs``, ``estimate_zero3_model_states_mem_needs``) add the
fp32 copy of the gradient partition the optimizer steps on (4 B/param), count the largest
layer gathered in 16-bit (weights + gradients, 4 B/param of that layer) under stage 3, and
multiply CPU memory by a 1.5 buffer factor. This model counts the same terms, named; with
``AS_DEEPSPEED`` (two fields) the "peak" accounting reproduces both estimators to the byte, GPU
and CPU per node, on every case they cover: 1e8-1e11 parameters, 1-512 GPUs as nodes x GPUs
per node, every offload case, zero_init on and off, small and large largest layers
(tests/test_plan.py, against DeepSpeed's functions). Without it this model differs in three
places, each one where the estimator is wrong or incomplete and this model is right:
  * stage 3 keeps the reduced 16-bit gradient partition in ``grad_partitions_flat_buffer``
    (deepspeed/runtime/zero/stage3.py), 2 B/param/rank that DeepSpeed's stage-3 estimator
    leaves out; here it is the component ``grads`` (on the optimizer's device), and
    ``stage3_grad_partition=False`` drops it to reproduce the estimator;
  * stage 2 with optimizer offload: DeepSpeed's CPU per node is ``max(4 x all GPUs, 16)``
    B/param, a formula that does not scale with nodes. A node holds the fp32 init copies of
    its own ranks only (4 B/param x GPUs per node, as its stage-3 and no-offload estimates
    count them) and its share of the offloaded states (fp32 master, Adam's m and v, fp32
    gradients: 16 B/param split over the nodes, as its stage-3 estimate splits them). Here:
    ``max(4 x GPUs per node, 16 / nodes)`` B/param, equal to DeepSpeed's on one node; at 8
    nodes of 8 GPUs DeepSpeed asks 8x the RAM a node uses, at 64 nodes 64x.
    ``cpu_as_deepspeed=True`` counts every GPU of the job on each node, as it does;
  * stage 3 with offload under ``zero_init``: DeepSpeed's CPU per node is the offloaded states
    alone, yet its no-offload ``zero_init`` estimate counts an init load of 4 B/param of the
    largest layer per rank on the CPU. The node's peak is the larger of the two phases:
    counting the init load as DeepSpeed does, this model takes the max, equal to DeepSpeed's
    while the offloaded share is larger, above it when many nodes make that share small (64
    nodes of 8 GPUs, largest layer P/50: 0.64 against 0.25 B/param per node).
    ``cpu_as_deepspeed=True`` leaves the init load out, as it does.
The estimators know only fp16/bf16 + Adam; this model also takes fp32 / autocast (where
DeepSpeed's ZeRO optimizers still keep an fp32 master partition and flatten an fp32 gradient
copy for the step), Lion and SGD.

Three accountings (``MemoryPlan.accounting``), because "the memory of ZeRO-1" depends on when
one looks (deepspeed/runtime/zero/stage_1_and_2.py, stage3.py, DeepSpeed 0.19):
  paper        the ZeRO paper's figure 1: 2 + 2 + K bytes/param, stage 1 keeps full gradients;
               no fp32 gradient copy, no gathered layer.
  peak         (default) what DeepSpeed's estimators sum: the paper's terms + the fp32 copy of the
               gradient partition + (stage 3) the largest layer gathered whole. An upper bound
               of the step: stage 1's full gradients live only at the end of backward, the fp32
               gradient copy only inside ``step()``.
  before_step  what DeepSpeed holds between ``backward()`` and ``step()`` (what chapter 05
               measures). At the accumulation boundary ZeRO-1 reduces every gradient into this
               rank's partition (``reduce_gradients`` -> ``grads_in_partition``) and frees the full
               ones, exactly like ZeRO-2: stages 1 and 2 then hold the same bytes (they differ
               only between micro-steps under gradient accumulation, and at the end of backward).
               The fp32 gradient copy does not exist yet (``step()`` flattens the partition and
               frees it after the update), except under optimizer offload, where gradients are
               reduced straight into a persistent fp32 partition on the CPU. Stage 3 has released
               its gathered layer.
All sizes are bytes; "device" is the accelerator, or the CPU RAM of a rank in CPU-only runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from dslib.configs import Strict

OptimizerKind = Literal["adamw", "adam", "lion", "sgd", "sgd_momentum"]
PrecisionRecipe = Literal["fp32", "amp", "mixed"]
OffloadDevice = Literal["none", "cpu", "nvme"]
Accounting = Literal["paper", "peak", "before_step"]
ACCOUNTINGS: tuple[str, ...] = ("paper", "peak", "before_step")
# the fields that make the "peak" accounting DeepSpeed's estimators, to the byte (module doc)
AS_DEEPSPEED: dict[str, bool] = {"stage3_grad_partition": False, "cpu_as_deepspeed": True}

# fp32 state tensors each optimizer keeps per parameter (Adam/AdamW: m, v; Lion: m; SGD+momentum: buf)
OPTIMIZER_STATE_TENSORS: dict[str, int] = {"adamw": 2, "adam": 2, "lion": 1, "sgd": 0, "sgd_momentum": 1}


class MemoryPlan(Strict):
    """The inputs of the model-state memory model; a bad value raises a ValidationError naming it."""

    n_params: int = Field(gt=0, description="total parameters (shared ones counted once)")
    optimizer: OptimizerKind = "adamw"
    precision: PrecisionRecipe = Field("mixed", description="fp32; amp = fp32 weights + autocast; "
                                 "mixed = 16-bit weights/grads + fp32 master (DeepSpeed fp16/bf16)")
    zero_stage: Literal[0, 1, 2, 3] = 0
    gpus_per_node: int = Field(1, gt=0)
    num_nodes: int = Field(1, gt=0)
    offload_optimizer: OffloadDevice = "none"
    offload_param: OffloadDevice = "none"
    largest_layer_params: int = Field(0, ge=0, description="params of the largest module (stage 3)")
    zero_init: bool = Field(True, description="stage 3: build the model already partitioned")
    cpu_buffer_factor: float = Field(1.5, ge=1.0, description="DeepSpeed's additional_buffer_factor")
    stage3_grad_partition: bool = Field(True, description="count stage 3's 16-bit gradient "
                                        "partition; False reproduces DeepSpeed's estimator")
    cpu_as_deepspeed: bool = Field(False, description="CPU per node as DeepSpeed's estimators "
                                   "count it: stage 1-2 offload on every GPU of the job, stage 3 "
                                   "offload under zero_init without the init load (module doc)")
    accounting: Accounting = Field("peak", description="paper | peak (DeepSpeed's estimators) | "
                                   "before_step (held between backward and step); see the module doc")

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> "MemoryPlan":
        if self.offload_optimizer != "none" and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage >= 1 (ZeRO-Offload)")
        if self.offload_optimizer == "nvme" and self.zero_stage != 3:
            raise ValueError(f"offload_optimizer 'nvme' needs zero_stage 3 (ZeRO-Infinity), got {self.zero_stage}")
        if self.offload_param != "none" and self.zero_stage != 3:
            raise ValueError(f"offload_param needs zero_stage 3, got zero_stage {self.zero_stage}")
        if self.largest_layer_params > self.n_params:
            raise ValueError("largest_layer_params cannot exceed n_params")
        return self

    @property
    def world_size(self) -> int:
        return self.gpus_per_node * self.num_nodes


@dataclass(frozen=True)
class ModelStateMemory:
    """Bytes of model states: per rank on the accelerator, per node in CPU RAM and on NVMe."""

    plan: MemoryPlan
    device: dict[str, float] = field(default_factory=dict)   # per rank, by component
    offloaded: dict[str, float] = field(default_factory=dict)  # per rank, by component
    cpu_per_node: float = 0.0    # peak CPU RAM per node (x cpu_buffer_factor, like DeepSpeed)
    nvme_per_node: float = 0.0

    @property
    def device_total(self) -> float:
        return sum(self.device.values())


def state_bytes_per_param(optimizer: str, precision: str, zero_stage: int = 0,
                          offload_optimizer: bool = False, accounting: str = "peak") -> dict[str, int]:
    """Bytes per parameter of each model-state component before any partitioning.

    Mixed precision: 16-bit weights and gradients, fp32 master weights, and the fp32 copy of the
    gradient partition the optimizer steps on. fp32 and amp (autocast casts weights per forward:
    a buffer) keep fp32 weights and gradients; DeepSpeed's ZeRO optimizers (stages 1-3) still
    clone an fp32 master partition (``single_partition_of_fp32_groups``,
    ``fp32_partitioned_groups_flat``: a separate storage in chapter 05's runs) and flatten an fp32
    gradient copy for the step. ``accounting`` (see the module doc): "paper" drops DeepSpeed's
    copies; "before_step" drops the fp32 gradient copy unless the optimizer is offloaded.
    """
    if optimizer not in OPTIMIZER_STATE_TENSORS:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZER_STATE_TENSORS)}")
    if accounting not in ACCOUNTINGS:
        raise ValueError(f"unknown accounting {accounting!r}; known: {', '.join(ACCOUNTINGS)}")
    optimizer_bytes = 4 * OPTIMIZER_STATE_TENSORS[optimizer]
    zero = zero_stage >= 1
    # the fp32 gradient copy (of 16-bit gradients, or of ZeRO's partition): built inside step(),
    # persistent only as ZeRO-Offload's CPU partition
    copies = zero or precision == "mixed"
    grads_fp32 = 4 if copies and (accounting == "peak" or (accounting == "before_step" and offload_optimizer)) else 0
    if precision == "mixed":
        return {"params": 2, "grads": 2, "grads_fp32": grads_fp32, "master": 4, "optimizer": optimizer_bytes}
    if precision not in ("fp32", "amp"):
        raise ValueError(f"unknown precision {precision!r}; known: fp32, amp, mixed")
    master = 4 if zero and accounting != "paper" else 0
    return {"params": 4, "grads": 4, "grads_fp32": grads_fp32, "master": master, "optimizer": optimizer_bytes}


def _partitioned(component: str, plan: MemoryPlan) -> bool:
    """ZeRO stage 1 shards optimizer states (with master + fp32 grads), 2 adds gradients, 3 weights.

    Before the step, stage 1 has reduced its gradients into its partition like stage 2.
    """
    level = {"optimizer": 1, "master": 1, "grads_fp32": 1, "grads": 2, "params": 3}[component]
    return _grads_stage(plan) >= level if component == "grads" else plan.zero_stage >= level


def _grads_stage(plan: MemoryPlan) -> int:
    """The stage whose gradient layout applies: stage 1 holds stage 2's right before the step."""
    return 2 if plan.zero_stage == 1 and plan.accounting == "before_step" else plan.zero_stage


def _placement(component: str, plan: MemoryPlan) -> str:
    if component == "params":
        return plan.offload_param
    if component == "grads":
        # stage 3 keeps its 16-bit gradient partition next to the optimizer; stage 1/2 on the device
        return plan.offload_optimizer if plan.zero_stage == 3 else "none"
    return plan.offload_optimizer


def model_states(n_params: int, **plan_fields) -> ModelStateMemory:
    """Model-state memory of one rank for ``n_params`` parameters; see MemoryPlan for the fields.

    Example: ``model_states(10**9, zero_stage=3, gpus_per_node=8).device_total`` bytes per GPU.
    """
    plan = MemoryPlan(n_params=n_params, **plan_fields)
    world = plan.world_size
    per_param = state_bytes_per_param(plan.optimizer, plan.precision, plan.zero_stage,
                                      plan.offload_optimizer != "none", plan.accounting)
    device: dict[str, float] = {}
    offloaded: dict[str, float] = {}
    nvme = 0.0
    for name, nbytes in per_param.items():
        if nbytes == 0 or (name == "grads" and plan.zero_stage == 3 and not plan.stage3_grad_partition):
            continue
        total = nbytes * n_params / world if _partitioned(name, plan) else nbytes * n_params
        where = _placement(name, plan)
        if name == "grads" and _grads_stage(plan) == 2 and plan.offload_optimizer != "none":
            continue  # stage 2 offload reduces gradients straight into the offloaded fp32 partition
        if where == "none":
            device[name] = total
        else:
            offloaded[name] = total
            nvme += total if where == "nvme" else 0.0
    if plan.zero_stage == 3 and plan.accounting == "peak":
        # the layer being computed is gathered whole: its 16-bit (fp32: 32-bit) weights + gradients
        device["working_layer"] = (per_param["params"] + per_param["grads"]) * plan.largest_layer_params
    node_ranks = plan.gpus_per_node
    # without zero.Init every rank first builds the whole model in fp32 on CPU
    init_load = 4 * (plan.largest_layer_params if plan.zero_stage == 3 and plan.zero_init else n_params)
    cpu_ranks = node_ranks  # the ranks whose CPU memory one node holds
    if plan.cpu_as_deepspeed and offloaded:  # DeepSpeed's estimators, oddities included (module doc)
        if plan.zero_stage < 3:
            cpu_ranks = world
        elif plan.zero_init:
            init_load = 0
    offloaded_cpu = (sum(offloaded.values()) - nvme) * cpu_ranks
    cpu = max(init_load * cpu_ranks, offloaded_cpu) * plan.cpu_buffer_factor
    return ModelStateMemory(plan=plan, device=device, offloaded=offloaded,
                            cpu_per_node=cpu, nvme_per_node=nvme * node_ranks)


class ActivationShape(Strict):
    """The shape inputs of the activation formula (one rank, no tensor/sequence parallelism)."""

    seq_len: int = Field(gt=0)
    micro_batch: int = Field(gt=0)
    hidden: int = Field(gt=0)
    heads: int = Field(gt=0)
    layers: int = Field(gt=0)
    memory_length: int = Field(0, ge=0, description="Transformer-XL cached positions per layer")
    vocab_size: int = Field(0, ge=0, description="0 leaves out the logits")
    element_bytes: int = Field(2, gt=0, description="2 for fp16/bf16 activations, 4 for fp32")
    dropout: bool = True
    checkpointing: bool = False


def layer_activation_bytes(shape: ActivationShape) -> float:
    """Bytes one transformer layer keeps for backward (Korthikanti et al. 2022, eq. 1, generalised).

    Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models", sec. 4.1:
    34*s*b*h + 5*a*s^2*b bytes per layer with 16-bit activations and 1-byte dropout masks:
    16 saved s*b*h tensors (2 B each) + 2 dropout masks (1 B), and per head the softmax output
    (2 B) + its dropout mask (1 B) + dropout output (2 B) over s x s scores. Written here for any
    element size e: (16e + 2 masks)*s*b*h + (2e + 1)*a*s*k*b, k = keys per query. Transformer-XL
    attends over k = s + mem keys and saves the memory rows of its K/V-projection input, K and V
    (3 tensors of mem*b*h); the relative-position terms (no batch dimension) are left out.
    """
    s, b, h, a, m, e = (shape.seq_len, shape.micro_batch, shape.hidden, shape.heads,
                        shape.memory_length, shape.element_bytes)
    keys = s + m
    masks = 1 if shape.dropout else 0
    hidden_terms = (16 * e + 2 * masks) * s * b * h + 3 * e * m * b * h
    score_terms = ((2 * e + masks) if shape.dropout else e) * a * s * keys * b
    return float(hidden_terms + score_terms)


def activation_memory(**shape_fields) -> dict[str, float]:
    """Activation bytes of one rank's micro-batch, by component (see layer_activation_bytes).

    With full activation checkpointing each layer keeps only its input (e*s*b*h) and one layer's
    full activations live again while it is recomputed in backward.
    """
    shape = ActivationShape(**shape_fields)
    s, b, h, e = shape.seq_len, shape.micro_batch, shape.hidden, shape.element_bytes
    per_layer = layer_activation_bytes(shape)
    if shape.checkpointing:
        parts = {"layer_inputs": float(e * s * b * h * shape.layers), "recompute_layer": per_layer}
    else:
        parts = {"layers": per_layer * shape.layers}
    if shape.memory_length:  # the cached hidden states themselves (no gradient), every layer
        parts["memory_cache"] = float(e * shape.memory_length * b * h * shape.layers)
    if shape.vocab_size:  # logits in e bytes + the fp32 softmax of the cross-entropy
        parts["logits"] = float((e + 4) * s * b * shape.vocab_size)
    return parts


def buffer_bytes(n_params: int, zero_stage: int, element_bytes: int = 2,
                 reduce_bucket: float = 5e8, prefetch_bucket: float = 5e7,
                 overlap_comm: bool | None = None) -> dict[str, float]:
    """Temporary communication buffers per rank, as DDP and DeepSpeed allocate them by default.

    DDP (stage 0) copies all gradients into flat buckets (unless gradient_as_bucket_view).
    DeepSpeed with contiguous_gradients allocates a full ``reduce_bucket_size`` (elements, 5e8)
    gradient bucket whatever the model size (stage_1_and_2.py / stage3.py), twice with
    overlap_comm (default on for stage 3 only); stage 3 also prefetches up to
    ``stage3_prefetch_bucket_size`` (5e7) parameters ahead of the layer being computed.
    """
    if n_params <= 0:
        raise ValueError(f"n_params must be positive, got {n_params}")
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage}")
    if zero_stage == 0:
        return {"ddp_buckets": float(n_params * element_bytes)}
    overlap = zero_stage == 3 if overlap_comm is None else overlap_comm
    buffers = {"reduce_bucket": reduce_bucket * element_bytes * (2 if overlap else 1)}
    if zero_stage == 3:
        buffers["prefetch_bucket"] = min(prefetch_bucket, n_params) * element_bytes
    return buffers


def rank_memory(states: ModelStateMemory, activations: dict[str, float],
                buffers: dict[str, float]) -> dict[str, float]:
    """One rank's accelerator memory stack: model-state components + activations + buffers."""
    stack = dict(states.device)
    stack["activations"] = sum(activations.values())
    stack["buffers"] = sum(buffers.values())
    return stack


def stage_stacks(n_params: int, activations: dict[str, float], element_bytes: int = 2,
                 **plan_fields) -> dict[str, dict[str, float]]:
    """The memory stack of one rank under DP and each ZeRO stage, other plan fields held fixed."""
    stacks = {}
    for stage in (0, 1, 2, 3):
        states = model_states(n_params, zero_stage=stage, **plan_fields)
        label = "DP" if stage == 0 else f"ZeRO-{stage}"
        stacks[label] = rank_memory(states, activations, buffer_bytes(n_params, stage, element_bytes))
    return stacks


def compare_with_deepspeed(n_params: int, largest_layer_params: int, gpus_per_node: int = 1,
                           num_nodes: int = 1) -> list[dict[str, Any]]:
    """This model next to DeepSpeed's own estimators, for every offload case they cover (bytes):
    ``ours_*`` as this model counts, ``ours_as_deepspeed_*`` with ``AS_DEEPSPEED``."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    layout = dict(gpus_per_node=gpus_per_node, num_nodes=num_nodes)
    ds_layout = dict(num_gpus_per_node=gpus_per_node, num_nodes=num_nodes)
    rows = []
    for offload in (False, True):
        ds_cpu, ds_gpu = estimate_zero2_model_states_mem_needs(n_params, cpu_offload=offload, **ds_layout)
        fields = dict(zero_stage=2, offload_optimizer="cpu" if offload else "none", **layout)
        ours, as_ds = model_states(n_params, **fields), model_states(n_params, **fields, **AS_DEEPSPEED)
        rows.append({"stage": 2, "offload": "optimizer" if offload else "none", "ours_gpu": ours.device_total,
                     "ours_as_deepspeed_gpu": as_ds.device_total, "deepspeed_gpu": ds_gpu,
                     "ours_cpu_per_node": ours.cpu_per_node, "ours_as_deepspeed_cpu": as_ds.cpu_per_node,
                     "deepspeed_cpu": ds_cpu})
    for optimizer_offload, param_offload in [(False, False), (True, False), (True, True)]:
        ds_cpu, ds_gpu, _ = estimate_zero3_model_states_mem_needs(
            n_params, largest_layer_params, cpu_offload=optimizer_offload,
            cpu_offload_params=param_offload, zero_init=True, **ds_layout)
        fields = dict(zero_stage=3, largest_layer_params=largest_layer_params, **layout,
                      offload_optimizer="cpu" if optimizer_offload else "none",
                      offload_param="cpu" if param_offload else "none")
        ours = model_states(n_params, **fields)
        as_ds = model_states(n_params, **fields, **AS_DEEPSPEED)
        rows.append({"stage": 3, "offload": "optimizer+param" if param_offload else
                     ("optimizer" if optimizer_offload else "none"), "ours_gpu": ours.device_total,
                     "ours_as_deepspeed_gpu": as_ds.device_total, "deepspeed_gpu": ds_gpu,
                     "ours_cpu_per_node": ours.cpu_per_node, "ours_as_deepspeed_cpu": as_ds.cpu_per_node,
                     "deepspeed_cpu": ds_cpu})
    return rows


def accounting_rows(n_params: int, **plan_fields) -> list[dict[str, Any]]:
    """Per stage, one rank's device model-state bytes under each accounting (see the module doc)."""
    return [{"stage": stage, **{acc: model_states(n_params, zero_stage=stage, accounting=acc, **plan_fields).device_total
                                for acc in ACCOUNTINGS}} for stage in (0, 1, 2, 3)]
