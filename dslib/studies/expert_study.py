"""Chapter 13's expert-parallel runs: equality with one process (dp x ep, and pp x ep under 1F1B)
and the all-to-all bytes, node-limited routing's traffic against its loss and balance, and DeepSpeed's MoE layer.

`*_rank` functions are launch entries (they run inside each rank); the plain functions launch
them through dslib.dist.launch and return plain dicts for the notebook. Every rank builds the
same seeded model and the same global batches, runs the one-process reference on the whole
batch in-rank, and its expert-parallel copy on its own rows: the diffs compare like with like.
"""
from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dslib.data.synthetic import markov_tokens
from dslib.dist.launch import launch
from dslib.env import device
from dslib.model.deepseek import DeepSeekModel
from dslib.model.deepseek_config import load_deepseek_config
from dslib.model.moe import Router
from dslib.parallel import expert, pipeline_expert
from dslib.parallel.schedules import StageModule, schedule_config, split_layers
from dslib.train.step import OptimizerStepper, train_step
from dslib.viz import new_figure

EXPERT_WEIGHTS = ("experts.gate_up", "experts.down")


def global_batches(vocab_size: int, seq_len: int, rows: int, steps: int, seed: int) -> list[tuple]:
    """`steps` batches of `rows` windows of a Markov stream: (idx, targets), each [rows, seq_len]."""
    stream = torch.from_numpy(markov_tokens(vocab_size, steps * rows * (seq_len + 1) + 1, seed=seed).astype(np.int64))
    windows = stream[: steps * rows * (seq_len + 1)].view(steps, rows, seq_len + 1).to(device())
    return [(w[:, :-1].contiguous(), w[:, 1:].contiguous()) for w in windows]


def capture_routing(model: torch.nn.Module) -> tuple[list[torch.Tensor], list]:
    """Forward hooks appending every router call's chosen experts [N, k] (in call order)."""
    calls: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: calls.append(out.experts.detach()))
               for m in model.modules() if isinstance(m, Router)]
    return calls, handles


def expected_a2a_bytes(calls: list[torch.Tensor], ep_ranks: list[int], me: int, n_local: int,
                       world: int, hidden: int, element_size: int) -> dict[str, int]:
    """From the one-process routing of the global batch (token rows split over the world in
    order), the bytes this rank sends in each direction by the formula: what its tokens send
    to other ranks' experts (dispatch forward, combine backward) and what other ranks' tokens
    send to its experts (combine forward, dispatch backward)."""
    out, incoming = 0, 0
    mine = ep_ranks.index(me)
    for experts in calls:
        per_rank = experts.size(0) // world
        for j, rank in enumerate(ep_ranks):
            rows = experts[rank * per_rank:(rank + 1) * per_rank]
            owners = rows // n_local
            if rank == me:
                out += expert.dispatch_bytes_formula(per_rank, rows.size(1), hidden, element_size,
                                                     int((owners == mine).sum()))
            else:
                incoming += int((owners == mine).sum()) * hidden * element_size
    return {"dispatch(forward)": out, "combine(backward)": out,
            "combine(forward)": incoming, "dispatch(backward)": incoming}


def _global_mean(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


def _grad_diffs(reference: torch.nn.Module, net: torch.nn.Module, ep_rank: int, n_local: int) -> dict:
    ref = dict(reference.named_parameters())
    worst, compared, grad_max = 0.0, 0, 0.0
    for name, p in net.named_parameters():
        r = ref[name].grad
        if name.endswith(EXPERT_WEIGHTS):
            r = r[ep_rank * n_local:(ep_rank + 1) * n_local]
        worst = max(worst, (p.grad - r).abs().max().item())
        grad_max = max(grad_max, r.abs().max().item())
        compared += 1
    return {"max_abs_diff_grads": worst, "grad_max": grad_max, "grads_compared": compared}


WEIGHT_ROUNDOFF = 1e-4  # a weight further off than this after the steps counts as "off"


def _param_diff(reference: torch.nn.Module, net: torch.nn.Module, ep_rank: int, n_local: int) -> dict[str, float]:
    """The largest weight difference, and the share of weights off by more than WEIGHT_ROUNDOFF.

    Both runs differ by round-off from the first step (the k expert outputs are summed in another
    order), and round-off can flip a token's top-k choice where two affinities nearly tie; the
    flipped token then trains another expert, moving a few weights by ~lr. A bug moves many."""
    ref = dict(reference.named_parameters())
    worst, off, total = 0.0, 0, 0
    for name, p in net.named_parameters():
        r = ref[name].detach()
        if name.endswith(EXPERT_WEIGHTS):
            r = r[ep_rank * n_local:(ep_rank + 1) * n_local]
        diff = (p.detach() - r).abs()
        worst, off, total = max(worst, diff.max().item()), off + int((diff > WEIGHT_ROUNDOFF).sum()), total + diff.numel()
    return {"max_abs_diff_params_after": worst, "weights_off_share": off / total}


def ep_equality_rank(ep: int, steps: int = 20, batch_size: int = 2, seed: int = 0, lr: float = 3e-3,
                     overrides: dict | None = None, fail_rank: int | None = None) -> dict[str, Any]:
    """dp x ep on all ranks (dp = world / ep) against one process on the global batch: logits,
    loss and every gradient after one forward/backward (and the all-to-all bytes against the
    formula), then the losses of `steps` AdamW steps with bias balancing, and the final weights."""
    world, rank = dist.get_world_size(), dist.get_rank()
    groups = expert.expert_groups(ep)
    ep_ranks, ep_rank = dist.get_process_group_ranks(groups.ep_group), dist.get_rank(groups.ep_group)
    torch.manual_seed(seed)
    config = load_deepseek_config("deepseek_tiny", **(overrides or {}))
    initial = DeepSeekModel(config).to(device())
    n_local = config.moe.n_routed_experts // ep
    batches = global_batches(config.vocab_size, config.seq_len, batch_size * world, steps + 1, seed)
    mine = slice(rank * batch_size, (rank + 1) * batch_size)
    local = [(idx[mine], targets[mine]) for idx, targets in batches]

    reference, net = copy.deepcopy(initial), expert.parallelize_experts(copy.deepcopy(initial), groups.ep_group)
    if rank == fail_rank:  # a rank that dies while its peers wait in the counts all-to-all
        raise RuntimeError(f"expert-parallel rank {rank} failed on purpose")
    calls, handles = capture_routing(reference)
    ref_out = reference(*batches[0][:1], targets=batches[0][1])
    (ref_out.loss + ref_out.aux_loss).backward()
    for h in handles:
        h.remove()
    expert.reset_a2a()
    out = net(local[0][0], targets=local[0][1])
    (out.loss + out.aux_loss).backward()
    expert.all_reduce_gradients(net, groups)
    measured = dict(expert.A2A_BYTES)
    result = {"rank": rank, "ep_group": ep_ranks,
              "max_abs_diff_logits": (out.logits - ref_out.logits[mine]).abs().max().item(),
              "loss_diff": (_global_mean(out.loss) - ref_out.loss).abs().item(),
              "aux_loss_diff": (_global_mean(out.aux_loss) - ref_out.aux_loss).abs().item(),
              **_grad_diffs(reference, net, ep_rank, n_local),
              "a2a_bytes": measured, "a2a_calls": dict(expert.A2A_CALLS),
              "a2a_bytes_formula": expected_a2a_bytes(calls, ep_ranks, rank, n_local, world,
                                                      config.hidden_size, initial.embed.weight.element_size())}

    reference, net = copy.deepcopy(initial), expert.parallelize_experts(copy.deepcopy(initial), groups.ep_group)
    ref_stepper = OptimizerStepper(torch.optim.AdamW(reference.parameters(), lr=lr))
    ep_stepper = expert.ExpertParallelStepper(net, torch.optim.AdamW(net.parameters(), lr=lr), groups)
    ref_losses, ep_losses = [], []
    for global_batch, own in zip(batches[1:], local[1:]):
        ref_losses.append(train_step(reference, global_batch, ref_stepper).loss.item())
        ep_losses.append(_global_mean(train_step(net, own, ep_stepper).loss).item())
    ref_bias = torch.cat([m.bias for m in reference.modules() if isinstance(m, Router)])
    ep_bias = torch.cat([m.bias for m in net.modules() if isinstance(m, Router)])
    result.update(ref_losses=ref_losses, ep_losses=ep_losses,
                  max_abs_diff_losses=max(abs(a - b) for a, b in zip(ref_losses, ep_losses)),
                  **_param_diff(reference, net, ep_rank, n_local),
                  max_abs_diff_router_bias=(ref_bias - ep_bias).abs().max().item(),
                  router_bias_moved=ref_bias.abs().max().item())
    everyone = [None] * world
    dist.all_gather_object(everyone, result)
    return {"world": world, "ep": ep, "dp": world // ep, "ranks": everyone,
            **{key: max(r[key] for r in everyone) for key in result
               if key.startswith("max_abs_diff") or key == "weights_off_share"},
            "loss_diff": max(r["loss_diff"] for r in everyone), "ref_losses": ref_losses, "ep_losses": ep_losses}


def ep_equality(nprocs: int = 2, ep: int | None = None, steps: int = 20, batch_size: int = 2,
                overrides: dict | None = None, fail_rank: int | None = None, timeout: float = 300) -> dict[str, Any]:
    """Launch `ep_equality_rank` on `nprocs` gloo/nccl ranks (ep defaults to all of them)."""
    ep = ep or nprocs
    config = load_deepseek_config("deepseek_tiny", **(overrides or {}))
    if nprocs % ep or config.moe.n_routed_experts % ep:  # refused before any rank starts
        raise ValueError(f"ep={ep} must divide nprocs={nprocs} and n_routed_experts={config.moe.n_routed_experts}")
    return launch("dslib.studies.expert_study:ep_equality_rank", nprocs,
                  dict(ep=ep, steps=steps, batch_size=batch_size, overrides=overrides, fail_rank=fail_rank),
                  timeout=timeout)


def _fail_in_second_micro_batch(rank: int):
    """A forward pre-hook raising on the stage's second micro-batch: its peers are then waiting
    inside the schedule (in the all-to-all and the pipeline's receives)."""
    calls = []

    def hook(_module, _inputs):
        calls.append(None)
        if len(calls) == 2:
            raise RuntimeError(f"pipeline x expert rank {rank} failed on purpose in micro-batch 2")
    return hook


def pp_ep_equality_rank(pp: int = 2, ep: int = 2, steps: int = 20, micro_batch: int = 1, micro_batches: int = 4,
                        num_layers: int = 4, seed: int = 0, lr: float = 3e-3,
                        fail_rank: int | None = None) -> dict[str, Any]:
    """pp x dp x ep (parallel.pipeline_expert) against one process on the global batch, as ep_equality_rank:
    logits, loss and every gradient after one 1F1B forward/backward, the all-to-all bytes against
    the formula, then `steps` AdamW steps with bias balancing. The model is the chapter 12 one as
    the pipeline runs it (schedule_config: MTP and balance losses off), `num_layers` deep."""
    world, rank = dist.get_world_size(), dist.get_rank()
    groups = pipeline_expert.pipeline_expert_groups(pp, ep)
    ep_rank, last = dist.get_rank(groups.experts.ep_group), groups.stage == pp - 1
    torch.manual_seed(seed)
    config = schedule_config(num_layers=num_layers)
    initial = DeepSeekModel(config).to(device())
    n_local = config.moe.n_routed_experts // ep
    rows = micro_batch * micro_batches
    batches = global_batches(config.vocab_size, config.seq_len, rows * groups.pipelines, steps + 1, seed)
    mine = slice(groups.pipeline * rows, (groups.pipeline + 1) * rows)
    local = [(idx[mine], targets[mine]) for idx, targets in batches]

    reference = copy.deepcopy(initial)
    module, stage = pipeline_expert.build_stage(copy.deepcopy(initial), groups, micro_batch, device())
    if rank == fail_rank:
        module.register_forward_pre_hook(_fail_in_second_micro_batch(rank))
    calls, handles = capture_routing(StageModule(reference, groups.stage, pp))  # this stage's routers
    ref_out = reference(batches[0][0], targets=batches[0][1])
    (ref_out.loss + ref_out.aux_loss).backward()
    for h in handles:
        h.remove()
    expert.reset_a2a()
    out = pipeline_expert.pipeline_expert_step(pipeline_expert.schedule_1f1b(stage, micro_batches), module, None,
                                               groups, local[0])
    expert.all_reduce_gradients(module, groups.experts)
    ep_pipelines = [groups.pipeline - ep_rank + j for j in range(ep)]  # the batch slices of the ep group
    result = {"rank": rank, "stage": groups.stage, "pipeline": groups.pipeline,
              "ep_group": dist.get_process_group_ranks(groups.experts.ep_group),
              "pp_group": dist.get_process_group_ranks(groups.pp_group),
              "logits_diff": (out.logits - ref_out.logits[mine]).abs().max().item() if last else None,
              "loss": out.loss.item() if last else None,
              **_grad_diffs(reference, module, ep_rank, n_local),
              "a2a_bytes_formula": expected_a2a_bytes(calls, ep_pipelines, groups.pipeline, n_local,
                                                      groups.pipelines, config.hidden_size,
                                                      initial.embed.weight.element_size())}
    # a stage without MoE layers sends nothing: its directions count 0
    result.update(a2a_bytes={**dict.fromkeys(result["a2a_bytes_formula"], 0), **expert.A2A_BYTES},
                  a2a_calls=dict(expert.A2A_CALLS))

    reference = copy.deepcopy(initial)
    module, stage = pipeline_expert.build_stage(copy.deepcopy(initial), groups, micro_batch, device())
    schedule = pipeline_expert.schedule_1f1b(stage, micro_batches)
    ref_stepper = OptimizerStepper(torch.optim.AdamW(reference.parameters(), lr=lr))
    stepper = expert.ExpertParallelStepper(module, torch.optim.AdamW(module.parameters(), lr=lr), groups.experts)
    ref_losses, losses = [], []
    for global_batch, own in zip(batches[1:], local[1:]):
        ref_losses.append(train_step(reference, global_batch, ref_stepper).loss.item())
        step = pipeline_expert.pipeline_expert_step(schedule, module, stepper, groups, own)
        losses.append(step.loss.item() if last else None)
    ref_bias = [m.bias for m in StageModule(reference, groups.stage, pp).modules() if isinstance(m, Router)]
    bias = [m.bias for m in module.modules() if isinstance(m, Router)]  # none on a dense-only stage
    result.update(losses=losses, **_param_diff(reference, module, ep_rank, n_local),
                  max_abs_diff_router_bias=max(((a - b).abs().max().item() for a, b in zip(ref_bias, bias)),
                                               default=0.0),
                  router_bias_moved=max((b.abs().max().item() for b in ref_bias), default=None))
    everyone = [None] * world
    dist.all_gather_object(everyone, result)
    ends = [r for r in everyone if r["stage"] == pp - 1]  # one per pipeline: its losses and logits
    pp_losses = [float(np.mean(step)) for step in zip(*(r["losses"] for r in ends))]
    return {"world": world, "pp": pp, "ep": ep, "dp": world // (pp * ep), "micro_batches": micro_batches,
            "ranks": everyone, "ref_losses": ref_losses, "ep_losses": pp_losses,
            "max_abs_diff_logits": max(r["logits_diff"] for r in ends),
            "loss_diff": abs(float(np.mean([r["loss"] for r in ends])) - ref_out.loss.item()),
            "max_abs_diff_grads": max(r["max_abs_diff_grads"] for r in everyone),
            "max_abs_diff_losses": max(abs(a - b) for a, b in zip(ref_losses, pp_losses)),
            **{key: max(r[key] for r in everyone)
               for key in ("max_abs_diff_params_after", "weights_off_share", "max_abs_diff_router_bias")}}


def pp_ep_equality(nprocs: int = 4, pp: int = 2, ep: int = 2, steps: int = 20, micro_batches: int = 4,
                   num_layers: int = 4, fail_rank: int | None = None, timeout: float = 300) -> dict[str, Any]:
    """Launch `pp_ep_equality_rank` on `nprocs` ranks: pp x dp x ep, dp = nprocs / (pp ep)."""
    config = schedule_config(num_layers=num_layers)
    if nprocs % (pp * ep) or config.moe.n_routed_experts % ep:  # refused before any rank starts
        raise ValueError(f"pp={pp} x ep={ep} must divide nprocs={nprocs} and ep n_routed_experts="
                         f"{config.moe.n_routed_experts}")
    split_layers(num_layers, pp)
    return launch("dslib.studies.expert_study:pp_ep_equality_rank", nprocs,
                  dict(pp=pp, ep=ep, steps=steps, micro_batches=micro_batches, num_layers=num_layers,
                       fail_rank=fail_rank), timeout=timeout)


# ---- node-limited routing -----------------------------------------------------------------

def cross_node_traffic(experts: torch.Tensor, n_nodes: int, n_experts: int) -> dict[str, int]:
    """One router call's chosen experts [N, k], tokens split over `n_nodes` nodes in row order and
    the experts' groups one per node: assignments leaving their token's node (what a per-assignment
    all-to-all sends across nodes) and (token, remote node) pairs (what V3's dispatch sends across
    nodes: one copy per node, fanned out to its experts inside the node)."""
    n = experts.size(0)
    token_node = (torch.arange(n, device=experts.device) * n_nodes // n)[:, None]
    expert_node = experts // (n_experts // n_nodes)
    reached = torch.zeros(n, n_nodes, dtype=torch.bool, device=experts.device).scatter_(1, expert_node, True)
    reached.scatter_(1, token_node, False)
    return {"tokens": n, "remote_assignments": int((expert_node != token_node).sum()),
            "remote_nodes": int(reached.sum())}


def node_limited_routing(topk_groups: tuple[int, ...] = (4, 2, 1), steps: int = 40, batch_size: int = 8,
                         n_experts: int = 16, n_group: int = 4, top_k: int = 4, lr: float = 3e-3,
                         seed: int = 0) -> list[dict[str, Any]]:
    """Train the tiny model (one process) with routing limited to topk_group of n_group expert
    groups (a group = the experts of one node), for each topk_group; the largest is unrestricted.
    Per run: cross-node bytes per token and MoE layer over the whole run (fp32 rows of d), the loss
    (mean of the last quarter of the steps) and MaxVio (the same steps), against the unrestricted run."""
    rows = []
    for topk_group in topk_groups:
        torch.manual_seed(seed)
        config = load_deepseek_config("deepseek_tiny", moe={"n_routed_experts": n_experts, "n_group": n_group,
                                                            "topk_group": topk_group, "top_k": top_k})
        model = DeepSeekModel(config).to(device())
        stepper = OptimizerStepper(torch.optim.AdamW(model.parameters(), lr=lr))
        calls, handles = capture_routing(model)
        losses, maxvio = [], []
        for batch in global_batches(config.vocab_size, config.seq_len, batch_size, steps, seed):
            result = train_step(model, batch, stepper)
            losses.append(result.loss.item())
            maxvio.append(result.out.stats["moe_maxvio"].item())
        for h in handles:
            h.remove()
        traffic = [cross_node_traffic(c, n_group, n_experts) for c in calls]
        tokens = sum(t["tokens"] for t in traffic)
        row_bytes = config.hidden_size * model.embed.weight.element_size()
        tail = max(1, steps // 4)
        rows.append({"topk_group": topk_group, "n_group": n_group, "top_k": top_k,
                     "per_assignment_cross_node_bytes_per_token": sum(t["remote_assignments"] for t in traffic)
                     * row_bytes / tokens,
                     "per_node_cross_node_bytes_per_token": sum(t["remote_nodes"] for t in traffic) * row_bytes / tokens,
                     "loss": float(np.mean(losses[-tail:])), "maxvio": float(np.mean(maxvio[-tail:]))})
    base = max(rows, key=lambda r: r["topk_group"])
    for r in rows:
        r["per_node_bytes_saved"] = 1 - r["per_node_cross_node_bytes_per_token"] / base["per_node_cross_node_bytes_per_token"]
        r["loss_gap_vs_unrestricted"] = r["loss"] - base["loss"]
    return rows


# ---- DeepSpeed's MoE layer beside this one ------------------------------------------------

# read in deepspeed/moe/{layer,sharded_moe,experts}.py of 0.19.8
DEEPSPEED_MOE_LACKS = ("sigmoid routing (the gates are softmax, top-1/top-2/top-k), bias (aux-loss-free) "
                       "balancing (only its l_aux loss), shared experts (use_residual mixes ONE dense MLP "
                       "by a learned coefficient), group/node-limited routing, dropless dispatch (a capacity "
                       "C per expert: tokens over it are dropped, slots under it are padded and still sent); "
                       "fine-grained experts run, each a module called in a loop")


def _fwd_bwd_seconds(layer: torch.nn.Module, x: torch.Tensor, steps: int) -> float:
    """Mean seconds of one forward + backward of `layer` on x, after one warm-up."""
    def once() -> None:
        out = layer(x)
        (out[0] if isinstance(out, tuple) else out).float().square().mean().backward()
    once()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        once()
    dist.barrier()
    return (time.perf_counter() - start) / steps


def deepspeed_moe_rank(n_experts: int = 8, top_k: int = 2, hidden: int = 64, expert_hidden: int = 32,
                       tokens: int = 256, capacity_factor: float = 1.25, steps: int = 5) -> dict[str, Any]:
    """deepspeed.moe.layer.MoE with ep = world on this process group, beside DeepSeekMoE with
    expert parallel on the same ranks, same E, k, d and tokens: runs or the exact error, seconds
    per forward+backward, all-to-all bytes this rank sends per direction, and tokens dropped."""
    from dslib.dist.ops import skip_shm_comm
    from dslib.model.deepseek_config import MoEConfig
    from dslib.model.moe import DeepSeekMoE, SwiGLU

    ep, rank = dist.get_world_size(), dist.get_rank()
    torch.manual_seed(seed := 0)
    x = torch.randn(tokens * ep, hidden, device=device())[rank * tokens:(rank + 1) * tokens][None]
    groups = expert.expert_groups(ep)
    config = MoEConfig(n_routed_experts=n_experts, n_shared_experts=0, top_k=top_k, moe_intermediate_size=expert_hidden,
                       score_func="softmax", norm_topk_prob=False)
    ours = DeepSeekMoE(hidden, config).to(device())
    for p in ours.parameters():
        torch.nn.init.normal_(p, std=0.02)
    ours.experts = expert.ExpertParallelExperts(ours.experts, groups.ep_group)
    expert.reset_a2a()
    row = {"layer": "dslib ExpertParallelExperts", "ep": ep, "runs": True, "error": "",
           "seconds_per_fwd_bwd": _fwd_bwd_seconds(ours, x, steps), "dropped_share": 0.0}
    row["a2a_bytes_sent_per_direction"] = expert.A2A_BYTES["dispatch(forward)"] / (steps + 1)
    rows = [row]
    ds_row = {"layer": "deepspeed.moe.layer.MoE", "ep": ep, "runs": False, "error": "",
              "seconds_per_fwd_bwd": None, "dropped_share": None, "a2a_bytes_sent_per_direction": None}
    try:
        import deepspeed
        from deepspeed.moe.layer import MoE

        skip_shm_comm()
        deepspeed.init_distributed(dist_backend=dist.get_backend(), verbose=False)
        torch.manual_seed(seed)
        layer = MoE(hidden, SwiGLU(hidden, expert_hidden), num_experts=n_experts, ep_size=ep, k=top_k,
                    capacity_factor=capacity_factor, drop_tokens=True, use_rts=False,
                    top2_2nd_expert_sampling=False).to(device())
        layer.set_deepspeed_parallelism()
        capacity: list[int] = []  # the experts' input after the first all-to-all: [ep, E/ep, C, d]
        layer.deepspeed_moe.experts.register_forward_hook(lambda _m, i, _o: capacity.append(i[0].size(-2)))
        seconds = _fwd_bwd_seconds(layer, x, steps)
        _, _, counts = layer(x)
        kept = counts.clamp(max=capacity[-1]).sum().item()
        ds_row.update(runs=True, seconds_per_fwd_bwd=seconds, dropped_share=1 - kept / (tokens * top_k),
                      a2a_bytes_sent_per_direction=n_experts * capacity[-1] * hidden * x.element_size() * (ep - 1) / ep)
    except Exception as error:  # recorded, not hidden: the row says it failed and why
        ds_row["error"] = f"{type(error).__name__}: {error}"
    rows.append(ds_row)
    for r in rows:
        r["lacks"] = DEEPSPEED_MOE_LACKS if r["layer"].startswith("deepspeed") else ""
    return rows


def deepspeed_moe_comparison(nprocs: int = 2, tokens: int = 256, steps: int = 5, timeout: float = 300) -> list[dict]:
    """Rows of `deepspeed_moe_rank` launched on `nprocs` ranks (rank 0's view)."""
    return launch("dslib.studies.expert_study:deepspeed_moe_rank", nprocs, dict(tokens=tokens, steps=steps),
                  timeout=timeout)


# ---- what the notebook shows -------------------------------------------------------------

def ep_equality_runs(layouts: list[list[int]], steps: int = 20) -> list[dict[str, Any]]:
    """`ep_equality` for each [ranks, ep] layout, e.g. [[2, 2], [4, 4], [4, 2]] (the last dp2 x ep2),
    `pp_ep_equality` for each [ranks, ep, pp] one, e.g. [4, 2, 2] (pp2 x ep2, 1F1B)."""
    return [pp_ep_equality(nprocs=layout[0], ep=layout[1], pp=layout[2], steps=steps) if len(layout) == 3
            else ep_equality(nprocs=layout[0], ep=layout[1], steps=steps) for layout in layouts]


def equality_summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    """The worst of every diff over the layouts, and all ranks' all-to-all bytes, measured and formula."""
    table = equality_table(runs)
    return {key: max(row[key] for row in table) if key.startswith(("max", "loss", "weights")) else sum(row[key] for row in table)
            for key in table[0] if key not in ("layout", "ranks")}


def layout_name(run: dict[str, Any]) -> str:
    """'dp2 x ep2', or 'pp2 x dp1 x ep2' for a pipeline x expert run."""
    return (f"pp{run['pp']} x " if "pp" in run else "") + f"dp{run['dp']} x ep{run['ep']}"


def equality_table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per layout of `ep_equality` or `pp_ep_equality`: max diffs against one process, bytes vs formula."""
    return [{"layout": layout_name(r), "ranks": r["world"],
             **{k: r[k] for k in r if k.startswith("max_abs_diff")}, "loss_diff": r["loss_diff"],
             "weights_off_share": r["weights_off_share"],
             "a2a_bytes_measured": sum(sum(x["a2a_bytes"].values()) for x in r["ranks"]),
             "a2a_bytes_formula": sum(sum(x["a2a_bytes_formula"].values()) for x in r["ranks"])} for r in runs]


def traffic_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The last run without a pipeline: its ranks all hold MoE layers, so every bar has both layers."""
    return [run for run in runs if "pp" not in run][-1]


def traffic_figure(run: dict[str, Any], node_rows: list[dict[str, Any]]):
    """Left: all-to-all bytes each rank sent in one step, by direction, measured and by the formula.
    Right: cross-node bytes per token and MoE layer against topk_group, per assignment and per node."""
    fig, axes = new_figure(ncols=2, width=5.5, height=3.6)
    left, right = axes[0]
    names = list(run["ranks"][0]["a2a_bytes"])
    for i, rank in enumerate(run["ranks"]):
        xs = np.arange(len(names)) + i / (len(run["ranks"]) + 1)
        left.bar(xs, [rank["a2a_bytes"][n] / 1024 for n in names], width=0.8 / (len(run["ranks"]) + 1),
                 label=f"rank {rank['rank']} measured")
        left.scatter(xs, [rank["a2a_bytes_formula"][n] / 1024 for n in names], color="k", marker="_", s=200,
                     label="formula" if i == 0 else None)
    left.set_xticks(np.arange(len(names)) + 0.25, names, rotation=20, fontsize=7)
    left.set_ylabel("KiB sent to other ranks")
    left.set_title(f"{layout_name(run)}: one step, all MoE layers", fontsize=9)
    left.legend(fontsize=7)
    groups = [r["topk_group"] for r in node_rows]
    right.plot(groups, [r["per_assignment_cross_node_bytes_per_token"] for r in node_rows], "o-",
               label="per assignment (this all_to_all)")
    right.plot(groups, [r["per_node_cross_node_bytes_per_token"] for r in node_rows], "s-",
               label="one copy per node (V3 dispatch)")
    right.set_xlabel(f"topk_group (nodes a token may reach, of {node_rows[0]['n_group']})")
    right.set_ylabel("cross-node bytes / token / layer")
    right.set_xticks(groups)
    right.legend(fontsize=7)
    return fig
