"""Overlap of gradient all-reduce with backward in DDP, measured on real ranks.

DDP groups gradients into buckets of ``bucket_cap_mb`` (in reverse layer order) and
all-reduces a bucket as soon as all its gradients are ready, while backward goes on
with earlier layers. A comm hook that records ``time.perf_counter()`` when it is called
(and when its all-reduce completes) gives the timeline relative to the start of
backward. Compared with a forced synchronous all-reduce: backward under ``no_sync``,
then one all-reduce of all gradients after it.
"""
import time
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

from dslib.env import device
from dslib.model import build_model, load_config
from dslib.env import synchronize


class TimelineHook:
    """Comm hook state: per bucket, when its all-reduce starts and ends (s after backward start)."""

    def __init__(self) -> None:
        self.backward_start = 0.0
        self.events: list[dict[str, float]] = []


# no `from __future__ import annotations` in this module: DDP checks the hook's annotations as objects
def timeline_hook(timeline: TimelineHook, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Record the bucket's start (and, on completion, end) time, then DDP's plain all-reduce."""
    buffer = bucket.buffer()
    event = {"bucket": bucket.index(), "bytes": buffer.numel() * buffer.element_size(),
             "start_s": time.perf_counter() - timeline.backward_start}
    timeline.events.append(event)

    def done(fut: torch.futures.Future) -> torch.Tensor:
        event["end_s"] = time.perf_counter() - timeline.backward_start
        return fut.value()

    return default_hooks.allreduce_hook(None, bucket).then(done)


def _batch(config, batch_size: int, step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 * dist.get_rank() + step)
    return torch.randint(0, config.vocab_size, (batch_size, config.seq_len), generator=gen).to(device())


def overlap_timeline(bucket_caps_mb: list[float], steps: int = 5, model: str = "tiny",
                     model_overrides: dict[str, Any] | None = None, batch_size: int = 8) -> dict[str, Any]:
    """Entry for ``launch``: per bucket cap, the last step's bucket timeline, backward time and the
    fastest step; plus the fastest step with one synchronous all-reduce after backward."""
    config = load_config(model, **(model_overrides or {}))
    results = {"buckets": [], "sync": None}
    for cap in bucket_caps_mb:
        ddp = DDP(build_model(config, 0, device()), bucket_cap_mb=cap)
        hook = TimelineHook()
        ddp.register_comm_hook(hook, timeline_hook)
        step_s = []
        for step in range(steps):
            hook.events = []
            idx = _batch(config, batch_size, step)
            start = time.perf_counter()
            loss = ddp(idx, targets=idx).loss
            hook.backward_start = time.perf_counter()
            loss.backward()
            synchronize(idx.device)
            backward_s = time.perf_counter() - hook.backward_start
            step_s.append(time.perf_counter() - start)
            ddp.zero_grad(set_to_none=True)
        results["buckets"].append({"bucket_cap_mb": cap, "events": hook.events, "backward_s": backward_s,
                                   "step_s": min(step_s[1:] or step_s)})
    ddp = DDP(build_model(config, 0, device()))
    step_s = []
    for step in range(steps):
        idx = _batch(config, batch_size, step)
        start = time.perf_counter()
        with ddp.no_sync():  # no bucket all-reduce during backward
            ddp(idx, targets=idx).loss.backward()
        grads = [p.grad for p in ddp.parameters()]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for g in grads:  # averaged back into the gradients, as DDP's buckets do
            g.copy_(flat[offset:offset + g.numel()].view_as(g) / dist.get_world_size())
            offset += g.numel()
        synchronize(idx.device)
        step_s.append(time.perf_counter() - start)
        ddp.zero_grad(set_to_none=True)
    results["sync"] = {"step_s": min(step_s[1:] or step_s)}
    return results


def communication_experiments(powersgd: dict[str, Any], overlap: dict[str, Any]) -> dict[str, Any]:
    """Entry for ``launch``: PowerSGD comparison and overlap timeline on the same ranks (one
    start-up of the ranks instead of two); the kwargs of each entry as dicts."""
    from dslib.tune.powersgd import compare_compression

    return {"powersgd": compare_compression(**powersgd), "overlap": overlap_timeline(**overlap)}
