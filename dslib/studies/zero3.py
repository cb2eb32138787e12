"""DeepSpeed ZeRO runs of the chapter-03 model on several ranks, measured (chapter 05).

``run_zero("zero3", nprocs=2, steps=8)`` validates configs/deepspeed/zero3.json in this process,
then launches ``train_measured_rank`` on every rank through dslib.dist.launch. Each rank builds the
same model from the same seed, trains it with ``deepspeed.initialize`` on its slice of the same
token batches, and measures, on the last step between backward and optimizer step, its
model-state bytes from DeepSpeed's own tensors (dslib.parallel.zero_memory), its RSS, and what
NVMe offload wrote to the swap folder. Rank 0 returns a ``ZeroResult`` with every rank's numbers.

Checkpoints use DeepSpeed's own format (``engine.save_checkpoint`` / ``load_checkpoint``):
``save_dir`` + ``save_every`` write them, ``resume=True`` continues from the latest one, and
``kill_at_step`` makes ``kill_rank`` SIGKILL itself right after that step's checkpoint (the
launcher then stops every rank and names the dead one).
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from dslib.data.loader import random_windows
from dslib.data.shards import corpus_shards, load_shards
from dslib.dist.ds_config import DeepSpeedConfig, load_ds_config
from dslib.dist.launch import LaunchError, launch
from dslib.dist.ops import initialize_engine
from dslib.env import device
from dslib.model import build_model, load_config
from dslib.parallel.zero import release_engine
from dslib.parallel.zero_memory import folder_bytes, model_state_bytes, process_memory
from dslib.train.step import EngineStepper, train_step


@dataclass
class ZeroResult:
    config: str
    stage: int
    offload_optimizer: str
    offload_param: str
    world_size: int
    n_params: int
    largest_layer_params: int
    losses: list[float]                      # global-batch mean loss of each step run here
    step_times: list[float]                  # seconds per step (rank 0)
    memory: list[dict[str, int]]             # per rank: model-state components (bytes)
    process: list[dict[str, int]]            # per rank: rss, rss_peak (bytes)
    nvme_bytes: list[int]                    # per rank: bytes in its swap folder after the run
    first_step: int = 0                      # 0, or the step a resumed run started from
    ds_config: dict[str, Any] = field(default_factory=dict)

    @property
    def model_state_bytes(self) -> int:
        """Rank 0's model states in memory (excluding what lives on NVMe)."""
        return sum(v for k, v in self.memory[0].items() if k != "params_nvme")

    @property
    def step_time(self) -> float:
        """Median step time after the first (warm-up) step."""
        times = sorted(self.step_times[1:] or self.step_times)
        return times[len(times) // 2]


def _largest_module_params(model: torch.nn.Module) -> int:
    """Parameters of the largest leaf module: what stage 3 gathers whole at one time."""
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())


def train_measured_rank(ds_config: dict, model: str, model_overrides: dict, shards: str, steps: int,
               seed: int = 0, nvme_dir: str | None = None, save_dir: str | None = None,
               save_every: int = 0, resume: bool = False, kill_at_step: int = -1,
               kill_rank: int = 1, config_name: str = "") -> ZeroResult:
    """One rank of a ZeRO run (called by dslib.dist.worker with torch.distributed up)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = DeepSpeedConfig(**ds_config)
    swap_dir = None
    if cfg.offload_device("param") == "nvme" or cfg.offload_device("optimizer") == "nvme":
        swap_dir = Path(nvme_dir) / f"rank{rank}"  # one folder per rank, so each counts its own bytes
        for section in ("offload_param", "offload_optimizer"):
            if ds_config["zero_optimization"].get(section, {}).get("device") == "nvme":
                ds_config["zero_optimization"][section]["nvme_path"] = str(swap_dir)
    model_cfg = load_config(model, **model_overrides)
    net = build_model(model_cfg, seed, device())  # identical initial weights on every rank and every stage
    n_params = sum(p.numel() for p in net.parameters())
    largest = _largest_module_params(net)
    engine = initialize_engine(net, ds_config)
    first_step = 0
    if resume:
        load_path, _ = engine.load_checkpoint(save_dir)
        if load_path is None:
            raise FileNotFoundError(f"resume=True but no DeepSpeed checkpoint in {save_dir}")
        first_step = engine.global_steps
    tokens = torch.from_numpy(load_shards(shards).tokens("train").astype("int64"))
    micro = cfg.train_micro_batch_size_per_gpu
    losses, step_times, memory, stepper = [], [], {}, EngineStepper(engine)

    def measure_model_states() -> None:  # between backward and step: what chapter 02's model predicts
        memory.update(model_state_bytes(engine))

    for step in range(first_step, steps):
        start = time.perf_counter()
        x, y = random_windows(tokens, step, micro * world, model_cfg.seq_len, seed)
        batch = tuple(t[rank * micro:(rank + 1) * micro].to(engine.device) for t in (x, y))
        last = step == steps - 1
        result = train_step(engine, batch, stepper, after_backward=measure_model_states if last else None)
        loss = result.loss.clone()
        dist.all_reduce(loss)
        losses.append(loss.item() / world)
        step_times.append(time.perf_counter() - start)
        if save_dir and save_every and (step + 1) % save_every == 0:
            engine.save_checkpoint(save_dir, tag=f"step{step + 1}")
        if step + 1 == kill_at_step:
            dist.barrier()  # the checkpoint is complete on every rank
            if rank == kill_rank:
                os.kill(os.getpid(), signal.SIGKILL)
    per_rank = [None] * world
    dist.all_gather_object(per_rank, (memory, process_memory(), folder_bytes(swap_dir)))
    release_engine(engine)
    return ZeroResult(config=config_name, stage=cfg.stage, offload_optimizer=cfg.offload_device("optimizer"),
                      offload_param=cfg.offload_device("param"), world_size=world, n_params=n_params,
                      largest_layer_params=largest, losses=losses, step_times=step_times,
                      memory=[r[0] for r in per_rank], process=[r[1] for r in per_rank],
                      nvme_bytes=[r[2] for r in per_rank], first_step=first_step, ds_config=ds_config)


def run_zero(config: str = "zero3", nprocs: int = 2, model: str = "tiny", steps: int = 8,
             micro_batch: int = 4, seed: int = 0, model_overrides: dict | None = None,
             ds_overrides: dict | None = None, nvme_dir: str | Path | None = None,
             token_source: str = "kjv", token_docs: int = 20000, timeout: float = 600,
             **checkpointing: Any) -> ZeroResult:
    """Validate the DeepSpeed config here, then train on ``nprocs`` ranks; returns rank 0's result.

    ``checkpointing``: save_dir, save_every, resume, kill_at_step, kill_rank (see train_measured_rank).
    """
    overrides = {"train_micro_batch_size_per_gpu": micro_batch, **(ds_overrides or {})}
    cfg = load_ds_config(config, overrides)  # a bad field fails here, before any process starts
    model_cfg = load_config(model, **(model_overrides or {}))
    needs_nvme = "nvme" in (cfg.offload_device("param"), cfg.offload_device("optimizer"))
    if needs_nvme and nvme_dir is None:
        raise ValueError(f"config {config!r} offloads to NVMe: pass nvme_dir (a folder on a local disk)")
    kwargs = dict(ds_config=cfg.as_dict(), model=model, model_overrides=model_overrides or {},
                  shards=str(corpus_shards(model_cfg.vocab_size, token_source, token_docs)),
                  steps=steps, seed=seed, nvme_dir=str(nvme_dir) if nvme_dir else None,
                  config_name=config, **{k: str(v) if k == "save_dir" else v for k, v in checkpointing.items()})
    return launch(entry="dslib.studies.zero3:train_measured_rank", nprocs=nprocs, kwargs=kwargs, timeout=timeout)


def ops_needed(config: str, ds_overrides: dict | None = None) -> list[str]:
    """The compiled DeepSpeed ops a config needs (dslib.dist.ops builds them)."""
    cfg = load_ds_config(config, ds_overrides)
    needed = []
    if cfg.offload_device("optimizer") != "none" or cfg.offload_device("param") != "none":
        needed.append("cpu_adam")  # DeepSpeedCPUAdam steps on the offloaded fp32 partition
    if "nvme" in (cfg.offload_device("optimizer"), cfg.offload_device("param")):
        needed += ["pin_memory", "async_io"]  # async_io links against pin_memory
    return needed


@dataclass
class ResumeCheck:
    uninterrupted: list[float]   # losses of steps 1..steps without a stop
    killed_message: str          # what the launcher reported when the rank died
    killed_rank: int | None
    resumed: ZeroResult          # the run restarted from the last checkpoint

    @property
    def max_loss_difference(self) -> float:
        tail = self.uninterrupted[self.resumed.first_step:]
        return max(abs(a - b) for a, b in zip(tail, self.resumed.losses))


def kill_and_resume(config: str, save_dir: str | Path, steps: int, kill_at_step: int,
                    uninterrupted: list[float] | None = None, **run_kwargs: Any) -> ResumeCheck:
    """Train with checkpoints every ``kill_at_step`` steps, SIGKILL rank 1 after the first one, resume.

    ``uninterrupted``: the losses of the same run without a stop (run here when not given).
    """
    if uninterrupted is None:
        uninterrupted = run_zero(config, steps=steps, **run_kwargs).losses
    try:
        run_zero(config, steps=steps, save_dir=save_dir, save_every=kill_at_step, kill_at_step=kill_at_step,
                 kill_rank=1, **run_kwargs)
        raise RuntimeError(f"the run was expected to die at step {kill_at_step} but finished")
    except LaunchError as error:
        message, rank = str(error).splitlines()[0], error.rank
    resumed = run_zero(config, steps=steps, save_dir=save_dir, resume=True, **run_kwargs)
    return ResumeCheck(uninterrupted, message, rank, resumed)
