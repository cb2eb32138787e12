"""Pipeline schedules from torch.distributed.pipelining on the chapter 12 model (chapter 13).

The DeepSeek model stays plain; this module cuts it from outside into S = ranks x v stages,
  stage 0: embed + blocks[..]  |  middle: blocks[..]  |  stage S-1: blocks[..] + norm + head
and runs them with one of torch's schedules (``SCHEDULES``). Loop placement puts stage s on rank
s mod p (1F1B: v=1, Interleaved1F1B: v=2); V placement (ZBVZeroBubble, DualPipeV: v=2) puts
stages r and 2p-1-r on rank r, so rank 0 holds both the embedding and the head.

What crosses a stage boundary is one tensor, the hidden state [B, T, d]. So MTP is off (its
module needs the main model's hidden states and the embedding at the last stage) and the MoE
balance losses are off (a second per-stage loss would have to travel with the activations);
the aux-loss-free bias balancing stays on: each stage updates its own routers after the step,
from the loads its experts saw, which is what one process does. Experts stay local to a stage.

Each rank records every compute action of its stages (F forward, B full backward, I backward
for inputs, W backward for weights) with start and end on CLOCK_MONOTONIC (one clock for all
processes of a machine), and the live bytes of the tensors its forwards (and the loss, on the last
stage) saved for backward (dslib.train.memory.SavedActivations): their peak per stage and per rank
is the activation memory, and the bytes one micro-batch leaves saved on a stage turn that peak
into micro-batches in flight, the unit of the schedules' memory formulas (``in_flight_formula``).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dslib.data.loader import random_windows
from dslib.data.shards import corpus_shards, load_shards
from dslib.dist.launch import LaunchError, launch
from dslib.env import device, synchronize
from dslib.model import DeepSeekConfig, DeepSeekModel, load_deepseek_config
from dslib.model.moe import update_router_biases
from dslib.train.memory import SavedActivations

# name -> (torch.distributed.pipelining class, stage placement, stages per rank)
SCHEDULES: dict[str, tuple[str, str, int]] = {
    "1F1B": ("Schedule1F1B", "loop", 1),
    "Interleaved1F1B": ("ScheduleInterleaved1F1B", "loop", 2),
    "ZBVZeroBubble": ("ScheduleZBVZeroBubble", "v", 2),
    "DualPipeV": ("ScheduleDualPipeV", "v", 2),
}


def schedule_config(model: str = "deepseek_tiny", **overrides: Any) -> DeepSeekConfig:
    """The chapter 12 config as the pipeline runs it: MTP and balance losses off (module docstring)."""
    moe = {**overrides.pop("moe", {}), "aux_loss_alpha": 0.0, "seq_aux_loss_alpha": 0.0}
    return load_deepseek_config(model, **{**overrides, "moe": moe, "mtp": {"depth": 0}})


def split_layers(num_layers: int, num_stages: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) blocks per stage, as equal as counts allow (earlier stages get the rest)."""
    if num_layers < num_stages:
        raise ValueError(f"{num_stages} stages need at least {num_stages} layers, the model has {num_layers}")
    base, extra = divmod(num_layers, num_stages)
    bounds = [0]
    for s in range(num_stages):
        bounds.append(bounds[-1] + base + (s < extra))
    return list(zip(bounds, bounds[1:]))


def stages_of_rank(schedule: str, rank: int, ranks: int) -> list[int]:
    """Stage indices a rank holds under a schedule's placement (loop: s mod p; V: r and 2p-1-r)."""
    _, style, v = SCHEDULES[schedule]
    return [rank, 2 * ranks - 1 - rank] if style == "v" else [rank + k * ranks for k in range(v)]


class StageModule(nn.Module):
    """Stage ``index`` of ``num_stages``, holding the model's own modules (names as in DeepSeekModel)."""

    def __init__(self, model: DeepSeekModel, index: int, num_stages: int):
        super().__init__()
        start, end = split_layers(len(model.blocks), num_stages)[index]
        self.embed = model.embed if index == 0 else None
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in range(start, end)})
        last = index == num_stages - 1
        self.norm, self.head = (model.norm, model.head) if last else (None, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """token ids [B, T] (first stage) or hidden [B, T, d] -> hidden [B, T, d] or logits [B, T, V] (last)."""
        if self.embed is not None:
            x = self.embed(x)
        positions = torch.arange(x.size(1), device=x.device)
        for block in self.blocks.values():
            x = block(x, positions)[0]
        return self.head(self.norm(x)) if self.head is not None else x


def stage_io(config: DeepSeekConfig, micro_batch: int, first: bool, last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A stage's example input and output on the meta device, for PipelineStage's static shapes:
    token ids or the hidden state in; the hidden state or the logits out. requires_grad as at run
    time: a stage sends its input's gradient only if its input needs one."""
    shape = (micro_batch, config.seq_len)
    hidden = torch.empty(*shape, config.hidden_size, device="meta", requires_grad=True)
    inputs = torch.empty(shape, dtype=torch.long, device="meta") if first else hidden
    outputs = torch.empty(*shape, config.vocab_size, device="meta", requires_grad=True) if last else hidden
    return inputs, outputs


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def _record_actions(stage, actions: list, meter: SavedActivations) -> None:
    """Wrap a PipelineStage's compute methods to append (stage, kind, micro-batch, start, end);
    forwards count what they save for backward as the stage's."""
    def timed(kind_of, run, saving=None):
        def wrapper(chunk, *args, **kwargs):
            synchronize()  # kernels are async: the clock must see their work
            start = time.monotonic()
            if saving is None:
                out = run(chunk, *args, **kwargs)
            else:
                with saving():
                    out = run(chunk, *args, **kwargs)
            synchronize()
            actions.append((stage.stage_index, kind_of(kwargs), chunk, start, time.monotonic()))
            return out
        return wrapper

    stage.forward_one_chunk = timed(lambda kw: "F", stage.forward_one_chunk, lambda: meter.saving(stage.stage_index))
    stage.backward_one_chunk = timed(lambda kw: "B" if kw.get("full_backward", True) else "I",
                                     stage.backward_one_chunk)
    stage.backward_weight_one_chunk = timed(lambda kw: "W", stage.backward_weight_one_chunk)


@dataclass
class ScheduleRun:
    """One schedule at one micro-batch count; rank 0 returns it with every rank's records."""

    schedule: str
    ranks: int
    micro_batches: int
    stages_per_rank: int
    losses: list[float] = field(default_factory=list)    # per step: mean over micro-batches
    grads: dict[str, torch.Tensor] = field(default_factory=dict)  # after step 1's backward, by parameter name
    actions: list[list[list[tuple]]] = field(default_factory=list)  # [rank][step] -> (stage, kind, mb, start, end)
    peak_activation_bytes: dict[int, int] = field(default_factory=dict)  # stage -> peak saved bytes
    micro_batch_activation_bytes: dict[int, int] = field(default_factory=dict)  # stage -> one micro-batch's (median)
    rank_peak_activation_bytes: list[int] = field(default_factory=list)  # per rank: its stages together
    threads_per_rank: int = 0                             # torch's intra-op threads on each rank
    error: str | None = None                              # the exact error when the schedule cannot run


def _batch(tokens: torch.Tensor, step: int, micro_batch: int, m: int, seq_len: int, seed: int):
    return random_windows(tokens, step, micro_batch * m, seq_len, seed)


def _one_schedule(name: str, m: int, config: DeepSeekConfig, tokens, steps: int, micro_batch: int,
                  seed: int, lr: float) -> ScheduleRun:
    import torch.distributed as dist
    from torch.distributed import pipelining

    rank, ranks, dev = dist.get_rank(), dist.get_world_size(), device()
    cls_name, _, v = SCHEDULES[name]
    run = ScheduleRun(name, ranks, m, v)
    torch.manual_seed(seed)  # every rank builds the whole model: the same initial weights as one process
    model = DeepSeekModel(config).to(dev)
    mine = stages_of_rank(name, rank, ranks)
    modules = [StageModule(model, s, ranks * v) for s in mine]
    # shapes given: torch's shape inference would run an extra forward, counted in the routers' loads
    io = [stage_io(config, micro_batch, s == 0, s == ranks * v - 1) for s in mine]
    stages = [pipelining.PipelineStage(mod, s, ranks * v, dev, input_args=inputs, output_args=outputs)
              for s, mod, (inputs, outputs) in zip(mine, modules, io)]
    params = [p for mod in modules for p in mod.parameters()]
    meter, actions = SavedActivations(params), []
    for stage in stages:
        _record_actions(stage, actions, meter)
    last_stage = ranks * v - 1

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with meter.saving(last_stage, new_micro_batch=False):  # what the loss saves: the last forward's micro-batch
            return lm_loss(logits, targets)

    cls = getattr(pipelining, cls_name)
    try:
        schedule = cls(stages[0] if v == 1 else stages, n_microbatches=m, loss_fn=loss_fn)
    except (ValueError, RuntimeError) as error:  # raised alike on every rank: no rank is left waiting
        run.error = f"{type(error).__name__}: {error}"
        return run
    optimizer = torch.optim.AdamW(params, lr=lr)
    first, last = 0 in mine, last_stage in mine
    per_rank_steps = []
    for step in range(steps):
        x, y = (t.to(dev) for t in _batch(tokens, step, micro_batch, m, config.seq_len, seed))
        losses: list = []
        dist.barrier()  # every rank starts the step together: spans are comparable
        actions.clear()
        schedule.step(*([x] if first else []), target=y if last else None, losses=losses if last else None)
        per_rank_steps.append(list(actions))
        if step == 0:
            run.grads = {n: p.grad.detach().cpu().clone() for mod in modules for n, p in mod.named_parameters()
                         if p.grad is not None}
        optimizer.step()
        optimizer.zero_grad()
        for mod in modules:
            update_router_biases(mod)
        run.losses.append(torch.stack(losses).mean().item() if last else float("nan"))
    gathered = [None] * ranks
    one_micro_batch = {s: meter.micro_batch_bytes(s) for s in meter.per_micro_batch}
    dist.all_gather_object(gathered, (run.losses, run.grads, per_rank_steps, meter.stage_peaks, one_micro_batch,
                                      meter.process_peak, torch.get_num_threads()))
    run.losses = next(l for l in (g[0] for g in gathered) if l and l[0] == l[0])  # the rank with the last stage
    run.grads = {n: t for g in gathered for n, t in g[1].items()}
    run.actions = [g[2] for g in gathered]
    run.peak_activation_bytes = {s: b for g in gathered for s, b in g[3].items()}
    run.micro_batch_activation_bytes = {s: b for g in gathered for s, b in g[4].items()}
    run.rank_peak_activation_bytes = [g[5] for g in gathered]
    run.threads_per_rank = max(g[6] for g in gathered)
    return run


def train_schedules_rank(runs: list[tuple[str, int]], config: dict, steps: int, micro_batch: int, shards: str,
                         seed: int = 0, lr: float = 1e-3) -> list[ScheduleRun]:
    """One rank: each (schedule, micro-batches) trained ``steps`` steps from the same initial weights."""
    tokens = torch.from_numpy(load_shards(shards).tokens("train").astype("int64"))
    cfg = DeepSeekConfig(**config)
    return [_one_schedule(name, m, cfg, tokens, steps, micro_batch, seed, lr) for name, m in runs]


def _error_line(error: LaunchError) -> str:
    """The exception line of the failing rank's traceback (the launcher's message if none)."""
    lines = [l for l in error.stderr_tail.splitlines() if re.match(r"^[\w.]+(Error|Exception)\b", l)]
    return f"rank {error.rank}: {lines[-1]}" if lines else str(error).splitlines()[0]


def run_schedules(runs: list[tuple[str, int]], config: DeepSeekConfig, ranks: int = 2, steps: int = 3,
                  micro_batch: int = 2, seed: int = 0, lr: float = 1e-3, token_docs: int = 2000,
                  timeout: float = 300) -> list[ScheduleRun]:
    """All (schedule, micro-batches) runs in one launch; if that launch fails, each schedule alone,
    so that the one that fails becomes a row with its exact error and the others still run."""
    for name, m in runs:
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; known: {list(SCHEDULES)}")
        split_layers(config.num_layers, ranks * SCHEDULES[name][2])
    kwargs = dict(config=config.model_dump(), steps=steps, micro_batch=micro_batch, seed=seed, lr=lr,
                  shards=str(corpus_shards(config.vocab_size, limit=token_docs)))
    entry = "dslib.parallel.schedules:train_schedules_rank"
    try:
        return launch(entry, nprocs=ranks, kwargs={**kwargs, "runs": runs}, timeout=timeout)
    except LaunchError:
        results = []
        for name in dict.fromkeys(name for name, _ in runs):
            mine = [r for r in runs if r[0] == name]
            try:
                results += launch(entry, nprocs=ranks, kwargs={**kwargs, "runs": mine}, timeout=timeout)
            except LaunchError as error:
                results += [ScheduleRun(name, ranks, m, SCHEDULES[name][2], error=_error_line(error)) for _, m in mine]
        return results


def train_reference(config: DeepSeekConfig, steps: int, micro_batch: int, micro_batches: int, seed: int = 0,
                    lr: float = 1e-3, token_docs: int = 2000) -> tuple[list[float], dict[str, torch.Tensor]]:
    """One process, same initial weights and micro-batches: losses per step and step 1's gradients."""
    tokens = torch.from_numpy(load_shards(corpus_shards(config.vocab_size, limit=token_docs)).tokens("train")
                              .astype("int64"))
    torch.manual_seed(seed)
    model = DeepSeekModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses, grads = [], {}
    for step in range(steps):
        x, y = _batch(tokens, step, micro_batch, micro_batches, config.seq_len, seed)
        micro = [lm_loss(model.logits(model.trunk(xm)[0]), ym)
                 for xm, ym in zip(x.chunk(micro_batches), y.chunk(micro_batches))]
        (torch.stack(micro).mean()).backward()
        if step == 0:
            grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        optimizer.step()
        optimizer.zero_grad()
        model.update_router_biases()
        losses.append(torch.stack(micro).mean().item())
    return losses, grads


# ---- the bubble formulas ------------------------------------------------------------------
def bubble_1f1b(p: int, m: int) -> float:
    """1F1B (and GPipe) idle fraction, equal stages, free communication: (p - 1) / (m + p - 1)."""
    return (p - 1) / (m + p - 1)


def bubble_interleaved(p: int, m: int, v: int) -> float:
    """Interleaved 1F1B with v stages per rank (Megatron, arXiv 2104.04473): (p - 1) / (v m + p - 1)."""
    return (p - 1) / (v * m + p - 1)


def in_flight_formula(schedule: str, p: int, m: int, rank: int) -> tuple[float, str]:
    """Micro-batches whose saved activations a rank holds at its peak, in units of one micro-batch
    through all of the rank's stages (1/p of the model, equal stages), and which formula:
      1F1B: min(m, p - r) (p - r - 1 warm-up forwards, one more before the first backward)
      Interleaved1F1B, v = 2 chunks of 1/(2p): min((v-1) k + 2(p-1-r) + 1, v m) / v chunks, k = m per
        round (p when p divides m; Megatron's p(1 + (p-1)/(pv)) on rank 0), torch's warm-up
      ZBVZeroBubble: min(m, p) on every rank (ZB-V, arXiv 2401.10241: 1F1B's first-rank peak, balanced)
      DualPipeV: (PP + 1) chunks of 1/PP, PP = 2p stages (V3 Table 2, DualPipe's README): p + 1/2."""
    if schedule == "1F1B":
        return min(m, p - rank), "min(m, p-r)"
    if schedule == "Interleaved1F1B":
        v, per_round = 2, m // max(1, m // p)
        return min((v - 1) * per_round + 2 * (p - 1 - rank) + 1, v * m) / v, "min(k+2(p-1-r)+1, 2m)/2"
    if schedule == "ZBVZeroBubble":
        return min(m, p), "min(m, p)"
    if schedule == "DualPipeV":
        return (2 * p + 1) / 2, "(PP+1)/2, PP=2p"
    raise ValueError(f"no activation formula for {schedule!r}")


def table2_bubble_time(method: str, pp: int, f: float, b: float, w: float, fb: float | None = None) -> float:
    """Bubble time per DeepSeek-V3 report Table 2 (arXiv 2412.19437), chunk times f, b (full backward),
    w (weight part of b), fb (overlapped forward+backward; f + b when nothing overlaps):
      1F1B (PP-1)(F+B);  ZB1P (PP-1)(F+B-2W);  DualPipe (PP/2-1)(F&B+B-3W), PP = pipeline stages."""
    if method == "1F1B":
        return (pp - 1) * (f + b)
    if method == "ZB1P":
        return (pp - 1) * (f + b - 2 * w)
    if method == "DualPipe":
        return (pp / 2 - 1) * ((f + b if fb is None else fb) + b - 3 * w)
    raise ValueError(f"Table 2 has 1F1B, ZB1P and DualPipe, not {method!r}")
