"""Measure one rank's model-state memory from the tensors DeepSpeed actually keeps.

Process RSS misleads on CPU (the allocator keeps freed pages; stage 3 RSS can exceed stage
2), so model states are counted from the tensors themselves, by component:
  params     the weights this rank holds: whole tensors under stages 0-2, the ``ds_tensor``
             partitions under stage 3 (those swapped to NVMe are counted in ``params_nvme``)
  grads      gradients this rank keeps: ``.grad`` fields, stage 1/2 ``averaged_gradients`` /
             ``grads_in_partition``, stage 3 ``grad_partitions_flat_buffer``, and the
             ``.grad`` of the optimizer's fp32 partitions (offload)
  master     the fp32 partition the optimizer steps on when it is a separate copy
             (stage 1/2 ``single_partition_of_fp32_groups``, stage 3 ``fp32_partitioned_groups_flat``)
  optimizer  the inner optimizer's state tensors (AdamW: exp_avg, exp_avg_sq)
Tensors that are views of one buffer are counted once, by their storage.
"""
from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Iterable

import psutil
import torch

MASTER_ATTRS = ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat")
GRAD_ATTRS = ("averaged_gradients", "grads_in_partition", "grad_partitions_flat_buffer")


def _tensors(obj) -> Iterable[torch.Tensor]:
    """Every tensor inside obj (a tensor, or nested lists/tuples/dicts of them)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


def _storage_bytes(tensors: Iterable[torch.Tensor], seen: set[int]) -> int:
    """Bytes of the distinct storages behind ``tensors`` not already in ``seen``."""
    total = 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if storage.nbytes() and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def _on_nvme(param: torch.nn.Parameter) -> bool:
    """Whether the partition's home is NVMe: the swapper takes every partition of at least
    MIN_AIO_BYTES (1 MiB). While one is swapped in, it sits in the swapper's I/O buffer (and
    its ``final_location`` is not always set), so the partition size decides, not its state."""
    swapper = getattr(param, "nvme_swapper", None)
    return swapper is not None and swapper.swappable_tensor(numel=param.partition_numel())


def model_state_bytes(engine) -> dict[str, int]:
    """This rank's model-state bytes by component; call between ``backward`` and ``step``."""
    params = list(engine.module.parameters())  # tied weights appear once
    zero_optimizer = engine.optimizer if engine.zero_optimization() else None
    inner = getattr(zero_optimizer, "optimizer", engine.optimizer)
    seen: set[int] = set()
    out = {"params": 0, "params_nvme": 0}
    for p in params:
        if hasattr(p, "ds_tensor"):  # stage 3: only the partition is this rank's
            if _on_nvme(p):  # on disk, or in an I/O buffer (its ds_tensor is a placeholder or a view)
                # as the swap file stores it: the swapper's element size (a swapped-out placeholder
                # need not have the model's dtype), padded to the swapper's I/O alignment
                swapper = p.nvme_swapper
                out["params_nvme"] += swapper._io_aligned_numel(p.partition_numel()) * swapper.swap_element_size
                continue
            out["params"] += p.ds_tensor.numel() * p.ds_tensor.element_size()
            seen.add(p.ds_tensor.untyped_storage().data_ptr())  # a master copy sharing it counts once
    if not any(hasattr(p, "ds_tensor") for p in params):
        out["params"] = _storage_bytes((p.data for p in params), seen)
    masters = [t for attr in MASTER_ATTRS for t in _tensors(getattr(zero_optimizer, attr, None))]
    optimizer_state = [t for state in inner.state.values() for t in _tensors(state)]
    out["optimizer"] = _storage_bytes((t for t in optimizer_state if t.dim() > 0), seen)
    grads = [p.grad for p in params if p.grad is not None] + [m.grad for m in masters if m.grad is not None]
    grads += [t for attr in GRAD_ATTRS for t in _tensors(getattr(zero_optimizer, attr, None))]
    out["grads"] = _storage_bytes(grads, seen)
    out["master"] = _storage_bytes(masters, seen)
    return out


def folder_bytes(folder: str | Path | None) -> int:
    """Total size of the files under folder (the NVMe swap folder): what offload put on disk."""
    if not folder or not Path(folder).exists():
        return 0
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def process_memory() -> dict[str, int]:
    """Resident set now and at its peak (bytes): the OS view, allocator caches included."""
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rss": psutil.Process(os.getpid()).memory_info().rss, "rss_peak": peak_kib * 1024}


def predicted_model_states(n_params: int, stage: int, world_size: int, offload_optimizer: str = "none",
                           offload_param: str = "none", largest_layer_params: int = 0,
                           accounting: str = "before_step") -> dict[str, float]:
    """Chapter 02's model (dslib.plan.memory) for one rank of these runs: fp32 AdamW, no zero.Init.

    ``accounting="before_step"`` is the moment ``train_rank`` measures (between backward and step:
    the gathered layer and the fp32 gradient copy are not there; stage 1 holds stage 2's gradient
    partition); "peak" and "paper" give the other two readings of chapter 02 for comparison.
    Returns bytes in memory (accelerator + CPU-offloaded) and bytes on NVMe.
    """
    from dslib.plan.memory import model_states

    states = model_states(n_params, optimizer="adamw", precision="fp32", zero_stage=stage,
                          gpus_per_node=world_size, offload_optimizer=offload_optimizer,
                          offload_param=offload_param, largest_layer_params=largest_layer_params,
                          zero_init=False, accounting=accounting)
    on_nvme = states.nvme_per_node / world_size
    return {"in_memory": states.device_total + sum(states.offloaded.values()) - on_nvme, "nvme": on_nvme,
            **{f"plan_{k}": v for k, v in {**states.device, **states.offloaded}.items()}}
