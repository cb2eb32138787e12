"""Studies chapter 06 runs on N ranks: tensor/sequence parallel against one process.

`*_rank` functions are launch entries (they run inside each rank); the plain functions
launch them through dslib.dist.launch and return plain dicts for the notebook.
Every rank builds the same seeded model, so the reference (unsplit) run is computed
in-rank on a copy, with the same inputs: the diffs compare like with like.
"""
from __future__ import annotations

import copy
import time
from typing import Any

import torch
import torch.distributed as dist

from dslib.env import device, synchronize
from dslib.model import TransformerXL, load_config
from dslib.parallel import tensor
from dslib.parallel.grid import build_grid, validate_grid
from dslib.dist.launch import launch


def _model_and_batches(model: str, batch_size: int, segments: int, seed: int,
                       overrides: dict | None = None) -> tuple[TransformerXL, list]:
    """The same seeded model and token batches on every rank (built on CPU, then moved)."""
    torch.manual_seed(seed)
    config = load_config(model, **(overrides or {}))
    net = TransformerXL(config).to(device())
    batches = [tuple(torch.randint(config.vocab_size, (batch_size, config.seq_len)).to(device()) for _ in "xy")
               for _ in range(segments)]
    return net, batches


def forward_backward(net: torch.nn.Module, batches: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Segments in order with Transformer-XL memory; returns (last logits, summed loss)
    after backward, so the memory path (cached states from the previous segment) is checked."""
    mems, total = None, 0.0
    for idx, targets in batches:
        out = net(idx, mems, targets)
        mems, total = out.mems, total + out.loss
    total.backward()
    return out.logits.detach(), total.detach()


def max_abs_diffs(reference: torch.nn.Module, ref_logits, logits, full_params, full_grads) -> dict[str, float]:
    ref = dict(reference.named_parameters())
    return {
        "logits": (ref_logits - logits).abs().max().item(),
        "params": max((ref[n].detach() - p).abs().max().item() for n, p in full_params.items()),
        "grads": max((ref[n].grad - g).abs().max().item() for n, g in full_grads.items()),
        "grad_max": max(g.abs().max().item() for g in full_grads.values()),
        "grads_compared": len(full_grads),
    }


def _tp_equality_one(path: str, model: str, batch_size: int, segments: int, seed: int,
                     overrides: dict | None) -> dict[str, Any]:
    reference, batches = _model_and_batches(model, batch_size, segments, seed, overrides)
    ref_logits, ref_loss = forward_backward(reference, batches)
    net = copy.deepcopy(reference)
    net.zero_grad(set_to_none=True)
    grid = build_grid(dp=1, pp=1, tp=dist.get_world_size(), config=net.config)
    if path == "explicit":
        tensor.parallelize_tensor(net, grid.tp_group)
    elif path == "dtensor":
        tensor.parallelize_tensor_dtensor(net, grid.mesh["tp"])
    else:
        raise ValueError(f"path must be 'explicit' or 'dtensor', got {path!r}")
    # COMM_* count the explicit ops only. torch's CommDebugMode, which would count DTensor's
    # collectives, raised IndexError in its module tracker on this model (torch 2.13).
    tensor.reset_comm()
    logits, loss = forward_backward(net, batches)
    comm, calls = dict(tensor.COMM_BYTES), dict(tensor.COMM_CALLS)
    diffs = max_abs_diffs(reference, ref_logits, logits, tensor.gather_full(net, grid.tp_group),
                          tensor.gather_full(net, grid.tp_group, grads=True))
    return {"path": path, "tp": dist.get_world_size(), "tp_group": dist.get_process_group_ranks(grid.tp_group),
            "loss": loss.item(), "loss_diff": abs(loss - ref_loss).item(),
            **{f"max_abs_diff_{k}": v for k, v in diffs.items()},
            "comm_bytes": comm, "comm_bytes_total": sum(comm.values()), "comm_calls": calls,
            "comm_ring_bytes_total": sum(tensor.COMM_RING_BYTES.values()),
            "comm_bytes_formula": tensor.predicted_comm_bytes(net.config, batch_size, segments, dist.get_world_size())
            if path == "explicit" else None}


def tp_equality_rank(paths: tuple[str, ...] = ("explicit", "dtensor"), model: str = "tiny",
                     batch_size: int = 2, segments: int = 2, seed: int = 0,
                     overrides: dict | None = None) -> list[dict[str, Any]]:
    """Forward/backward over `segments` segments split across all ranks vs. one process, per path."""
    return [_tp_equality_one(path, model, batch_size, segments, seed, overrides) for path in paths]


def tp_equality(nprocs: int = 2, paths: tuple[str, ...] = ("explicit", "dtensor"), model: str = "tiny",
                batch_size: int = 2, segments: int = 2, overrides: dict | None = None,
                timeout: float = 180) -> list[dict[str, Any]]:
    validate_grid(nprocs, 1, 1, nprocs, load_config(model, **(overrides or {})))  # before any rank starts
    return launch("dslib.parallel.tp_study:tp_equality_rank", nprocs,
                  dict(paths=tuple(paths), model=model, batch_size=batch_size, segments=segments,
                       overrides=overrides), timeout=timeout)


def step_time(net: torch.nn.Module, batches: list, steps: int) -> float:
    """Mean seconds of one forward+backward after a warm-up step."""
    forward_backward(net, batches)
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        forward_backward(net, batches)
    synchronize()  # CUDA runs asynchronously: wait before reading the clock
    return (time.perf_counter() - start) / steps


def single_process_step_time(model: str = "tiny", batch_size: int = 2, steps: int = 3,
                             overrides: dict | None = None) -> dict[str, Any]:
    """The tp=1 baseline in this process, on one thread (as each launched rank runs)."""
    net, batches = _model_and_batches(model, batch_size, 1, 0, overrides)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seconds = step_time(net, batches, steps)
    finally:
        torch.set_num_threads(threads)
    return {"tp": 1, "step_s": seconds, "comm_ring_bytes_per_step": 0,
            "params_per_rank": sum(p.numel() for p in net.parameters())}


def tp_step_time_rank(model: str = "tiny", batch_size: int = 2, steps: int = 3,
                      overrides: dict | None = None) -> dict[str, Any]:
    """Mean forward+backward time per step, explicit tensor parallel over all ranks."""
    net, batches = _model_and_batches(model, batch_size, 1, 0, overrides)
    tensor.parallelize_tensor(net, dist.group.WORLD)
    dist.barrier()
    tensor.reset_comm()
    seconds = step_time(net, batches, steps)
    return {"tp": dist.get_world_size(), "step_s": seconds,
            "comm_ring_bytes_per_step": sum(tensor.COMM_RING_BYTES.values()) / (steps + 1),
            "params_per_rank": sum(p.numel() for p in net.parameters())}


def saved_activation_bytes(net: torch.nn.Module, batches: list) -> tuple[int, tuple]:
    """forward_backward, counting the bytes of distinct tensors autograd saved for backward
    (storages, so views count once; parameters excluded). Returns (bytes, its result)."""
    from dslib.parallel.sequence import SAVED_OBSERVERS

    param_storages = {p.untyped_storage().data_ptr() for p in net.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    SAVED_OBSERVERS.append(pack)  # sees what sequence parallel's own hooks keep
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            result = forward_backward(net, batches)
    finally:
        SAVED_OBSERVERS.remove(pack)
    return sum(saved.values()), result


def sp_study_rank(model: str = "tiny", batch_size: int = 2, segments: int = 2, seed: int = 0,
                  overrides: dict | None = None) -> dict[str, Any]:
    """Saved activations per rank for 1 process, tensor parallel and tensor + sequence
    parallel over all ranks; the sequence-parallel run's diffs against the single process."""
    from dslib.parallel.sequence import parallelize_sequence

    reference, batches = _model_and_batches(model, batch_size, segments, seed, overrides)
    single_bytes, (ref_logits, ref_loss) = saved_activation_bytes(reference, batches)
    grid = build_grid(dp=1, pp=1, tp=dist.get_world_size(), config=reference.config)
    runs = {}
    modes = (("tp", tensor.parallelize_tensor), ("tp+sp", parallelize_sequence),
             ("tp+sp keep gathered", lambda net, group: parallelize_sequence(net, group, regather_in_backward=False)))
    for name, apply in modes:
        net = copy.deepcopy(reference)
        net.zero_grad(set_to_none=True)
        apply(net, grid.tp_group)
        tensor.reset_comm()
        nbytes, (logits, loss) = saved_activation_bytes(net, batches)
        per_rank = [None] * dist.get_world_size()
        dist.all_gather_object(per_rank, nbytes)
        runs[name] = {"saved_bytes_per_rank": per_rank, "comm_bytes": dict(tensor.COMM_BYTES),
                      "comm_bytes_total": sum(tensor.COMM_BYTES.values()),
                      "comm_ring_bytes_total": sum(tensor.COMM_RING_BYTES.values()),
                      "loss_diff": abs(loss - ref_loss).item(),
                      **{f"max_abs_diff_{k}": v for k, v in max_abs_diffs(
                          reference, ref_logits, logits, tensor.gather_full(net, grid.tp_group),
                          tensor.gather_full(net, grid.tp_group, grads=True)).items()}}
    return {"group_size": dist.get_world_size(), "single_process_saved_bytes": single_bytes, **runs}


def sp_study(sizes: list[int], model: str = "tiny", batch_size: int = 2, segments: int = 2,
             overrides: dict | None = None, timeout: float = 240) -> list[dict[str, Any]]:
    """sp_study_rank for each group size (each a separate launch)."""
    from dslib.parallel.sequence import check_sequence_parallel

    config = load_config(model, **(overrides or {}))
    for size in sizes:  # every shape checked before the first rank starts
        validate_grid(size, 1, 1, size, config)
        check_sequence_parallel(config, size)
    return [launch("dslib.parallel.tp_study:sp_study_rank", size,
                   dict(model=model, batch_size=batch_size, segments=segments, overrides=overrides),
                   timeout=timeout) for size in sizes]


def chapter_rank(model: str = "tiny", overrides: dict | None = None, batch_size: int = 2, segments: int = 2,
                 timing_steps: int = 3) -> dict[str, Any]:
    """Everything chapter 06 measures on one group size, in one launch (ranks start slowly)."""
    return {"equality": tp_equality_rank(("explicit", "dtensor"), model, batch_size, segments, 0, overrides),
            "sequence": sp_study_rank(model, batch_size, segments, 0, overrides),
            "timing": tp_step_time_rank(model, batch_size, timing_steps, overrides)}


def chapter_studies(sizes: list[int], model: str = "tiny", overrides: dict | None = None, batch_size: int = 2,
                    segments: int = 2, timing_steps: int = 3, timeout: float = 300) -> dict[int, dict[str, Any]]:
    """chapter_rank per group size (one launch each); every shape is checked first."""
    from dslib.parallel.sequence import check_sequence_parallel

    config = load_config(model, **(overrides or {}))
    for size in sizes:
        validate_grid(size, 1, 1, size, config)
        check_sequence_parallel(config, size)
    return {size: launch("dslib.parallel.tp_study:chapter_rank", size,
                         dict(model=model, overrides=overrides, batch_size=batch_size, segments=segments,
                              timing_steps=timing_steps), timeout=timeout)
            for size in sizes}
