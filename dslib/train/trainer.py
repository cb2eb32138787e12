"""The single-process training loop every chapter uses.

It trains any ``nn.Module`` with the Transformer-XL interface
``model(idx, mems=None, targets=None) -> out`` where ``out.loss`` is the mean cross-entropy,
``out.aux_loss`` an extra term to minimise (the gate's compute penalty, already weighted),
``out.mems`` the next memories and ``out.stats`` a dict of 0-dim tensors to log.

Each step is ``dslib.train.step.train_step`` with an ``OptimizerStepper`` (the optimizer, the
fp16 gradient scaler, clipping and the warmup + cosine schedule). The loop adds no host
synchronisation per step: losses, gradient norms and stats stay on
the device and are read once every ``log_every`` steps (fp16 is the exception: its gradient
scaler checks for inf each step). ``precision`` bf16/fp16 runs the forward under autocast.
Same seed, same losses; a run resumed from a checkpoint continues exactly as if it had not
stopped: weights, losses, evaluations and the logged history (a checkpoint taken inside a
log window carries the window's first step and its partial stat sums), all but the timing.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from dslib.data.loader import StreamLoader
from dslib.env import device as default_device, seed_everything, synchronize
from dslib.io import write_json_atomic
from dslib.progress import progress_bar
from dslib.train import checkpoint as ckpt
from dslib.train import precision
from dslib.train.recipe import OptimizerFactory, TrainConfig, adamw, lr_at, param_groups
from dslib.train.step import OptimizerStepper, carried_memory, forward, train_step

RESULT_FILE = "result.json"


class Recorder(Protocol):
    """Where a finished fit reports its history and figures (a notebook's ``jobs.Run`` is one)."""

    def table(self, name: str, rows: Any) -> Any: ...

    def metric(self, name: str, value: Any, unit: str = "", note: str = "") -> Any: ...


@torch.no_grad()
def validation_loss(model: nn.Module, loader: StreamLoader, batches: int, use_memory: bool = True) -> float:
    """Mean loss over the first ``batches`` segments of ``loader`` (from its start), segment
    after segment with memory when ``use_memory``. The model's train/eval mode is restored;
    batches move to the model's device if the loader's lanes live elsewhere."""
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    loader.rewind()
    batches = min(batches, loader.steps_per_epoch)
    total, mems = None, None
    for _ in range(batches):
        out = forward(model, tuple(t.to(device) for t in loader.next_batch()), mems)
        mems = out.mems if use_memory else None
        total = out.loss if total is None else total + out.loss
    loader.rewind()
    model.train(was_training)
    return float(total) / batches


@dataclass
class TrainResult:
    losses: list[float]  # training loss (out.loss) of every step, from step 0
    # every log_every steps: step, loss and model stats (window means), lr and grad_norm (when
    # clipping, before it) of the window's last step, tokens_per_s (window), elapsed_s (no eval)
    history: list[dict[str, float]]
    evals: list[dict[str, float]]  # step, val_loss
    tokens_per_s: float  # over the steps this process ran, evaluation excluded
    resumed_from: int | None = None  # checkpoint step this process started from

    @property
    def final_val_loss(self) -> float | None:
        return self.evals[-1]["val_loss"] if self.evals else None


class Trainer:
    """Owns the optimizer, schedule, data position, memories and step; ``fit`` runs the loop."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, train_tokens: np.ndarray,
                 val_tokens: np.ndarray | None = None, make_optimizer: OptimizerFactory | None = None,
                 run: Recorder | None = None, device: torch.device | str | None = None) -> None:
        self.cfg, self.run = cfg, run
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device)
        self.loader = StreamLoader(train_tokens, cfg.batch_size, cfg.seq_len, self.device)
        self.val_loader = (StreamLoader(val_tokens, cfg.batch_size, cfg.seq_len, self.device)
                           if val_tokens is not None and len(val_tokens) else None)
        self.optimizer = (make_optimizer or adamw(cfg))(param_groups(model, cfg.weight_decay))
        for group in self.optimizer.param_groups:  # cfg.lr is the peak for every optimizer
            group["lr"] = cfg.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_at(s, cfg) / cfg.lr)
        # fp16 gradients underflow without loss scaling; for fp32/bf16 the scaler is a pass-through
        self.scaler = precision.make_grad_scaler(self.device, cfg.precision)
        self.stepper = OptimizerStepper(self.optimizer, self.scaler, cfg.grad_clip, self.scheduler,
                                        self.model.parameters())
        self.step = 0
        self.mems: list[torch.Tensor] | None = None
        self.losses = torch.zeros(cfg.steps, device=self.device)
        self.grad_norms = torch.zeros(cfg.steps, device=self.device)
        self.evals: list[dict[str, float]] = []
        self.history: list[dict[str, float]] = []
        self._window_first = 0  # first step of the current log window
        self._stat_sums: dict[str, torch.Tensor] = {}  # model stats summed over the log window

    # ---- checkpoint state -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": ckpt.rng_state(),
                "loader": self.loader.state_dict(), "mems": self.mems,
                "losses": self.losses[:self.step].cpu(), "grad_norms": self.grad_norms[:self.step].cpu(),
                "evals": self.evals, "history": self.history, "config": self.cfg.model_dump(mode="json"),
                "log_window": {"first": self._window_first,
                               "stat_sums": {k: v.cpu() for k, v in self._stat_sums.items()}}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        if self.step > self.cfg.steps:
            raise ValueError(f"checkpoint is at step {self.step}, past steps={self.cfg.steps}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.loader.load_state_dict(state["loader"])
        self.mems = [m.to(self.device) for m in state["mems"]] if state["mems"] is not None else None
        self.losses[:self.step] = state["losses"].to(self.device)
        self.grad_norms[:self.step] = state["grad_norms"].to(self.device)
        self.evals, self.history = list(state["evals"]), list(state["history"])
        # checkpoints from before the window was saved restart it here, as they used to
        window = state.get("log_window", {"first": self.step, "stat_sums": {}})
        self._window_first = int(window["first"])
        self._stat_sums = {k: v.to(self.device) for k, v in window["stat_sums"].items()}
        ckpt.set_rng_state(state["rng"])

    def save(self) -> Path:
        if self.cfg.out_dir is None:
            raise ValueError("TrainConfig.out_dir is not set: nowhere to save a checkpoint")
        return ckpt.save_checkpoint(self.state_dict(), self.cfg.out_dir, self.step, self.cfg.keep_checkpoints)

    def resume(self) -> int | None:
        """Load the newest checkpoint in out_dir, if any; returns its step."""
        if self.cfg.out_dir is None:
            return None
        ckpt.remove_temp_files(self.cfg.out_dir)
        path = ckpt.latest_checkpoint(self.cfg.out_dir)
        if path is None:
            return None
        self.load_state_dict(ckpt.load_checkpoint(path, map_location=self.device))
        return self.step

    # ---- the loop ---------------------------------------------------------------------
    def advance(self) -> None:
        """One optimizer step on the next segment; everything stays on the device."""
        cfg = self.cfg
        mems = carried_memory(self.mems, self.loader.at_start, cfg.use_memory)
        result = train_step(self.model, self.loader.next_batch(), self.stepper, mems, cfg.precision)
        out = result.out
        if result.grad_norm is not None:
            self.grad_norms[self.step] = result.grad_norm
        self.mems = out.mems if cfg.use_memory else None
        self.losses[self.step] = result.loss
        for name, value in out.stats.items():
            self._stat_sums[name] = self._stat_sums.get(name, 0.0) + value.detach()
        self.step += 1

    def evaluate(self) -> float | None:
        if self.val_loader is None:
            return None
        val_loss = validation_loss(self.model, self.val_loader, self.cfg.eval_batches, self.cfg.use_memory)
        self.evals.append({"step": self.step, "val_loss": val_loss})
        return val_loss

    def fit(self, resume: bool = False) -> TrainResult:
        """Train to ``cfg.steps``: from the newest checkpoint when ``resume`` and one exists,
        else from scratch after seeding every RNG with ``cfg.seed``."""
        cfg = self.cfg
        resumed_from = self.resume() if resume else None
        if resumed_from is None:
            seed_everything(cfg.seed)
            self._window_first, self._stat_sums = self.step, {}
        self.model.train()
        start_step, tokens_per_step = self.step, cfg.batch_size * cfg.seq_len
        bar = progress_bar(total=cfg.steps, initial=self.step, desc=cfg.name, disable=not cfg.progress, leave=False)
        run_start = window_start = time.perf_counter()
        timed_first, paused_seconds = self.step, 0.0  # the window's steps this process ran and timed
        while self.step < cfg.steps:
            self.advance()
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self._log(timed_first, window_start, run_start + paused_seconds)
                bar.set_postfix(loss=f"{self.history[-1]['loss']:.3f}", lr=f"{self.history[-1]['lr']:.2e}")
                window_start, timed_first = time.perf_counter(), self.step
            eval_now = self.step == cfg.steps or (cfg.eval_every and self.step % cfg.eval_every == 0)
            checkpoint_now = cfg.out_dir is not None and (
                self.step == cfg.steps or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0))
            if eval_now or checkpoint_now:  # timed apart: tokens/s counts training only
                synchronize(self.device)
                paused = time.perf_counter()
                if eval_now and self.evaluate() is not None:  # an eval may come before the first log
                    bar.set_postfix(val=f"{self.evals[-1]['val_loss']:.3f}",
                                    **({"loss": f"{self.history[-1]['loss']:.3f}"} if self.history else {}))
                if checkpoint_now:
                    self.save()
                paused_seconds += time.perf_counter() - paused
                window_start += time.perf_counter() - paused
        bar.close()
        losses = self.losses.tolist()  # synchronizes
        train_seconds = time.perf_counter() - run_start - paused_seconds
        ran = self.step - start_step
        result = TrainResult(losses=losses, history=self.history, evals=self.evals,
                             tokens_per_s=ran * tokens_per_step / train_seconds if ran else 0.0,
                             resumed_from=resumed_from)
        self._record(result)
        return result

    def _log(self, timed_first: int, window_start: float, clock_zero: float) -> None:
        """Host syncs once per window: mean loss, last grad norm, mean model stats."""
        first, timed = self._window_first, self.step - timed_first
        loss, n = self.losses[first:self.step].mean().item(), self.step - first  # waits for the window
        now = time.perf_counter()
        entry = {"step": self.step, "loss": loss, "lr": lr_at(self.step - 1, self.cfg),
                 "tokens_per_s": timed * self.cfg.batch_size * self.cfg.seq_len / max(now - window_start, 1e-9),
                 "elapsed_s": now - clock_zero}
        if self.cfg.grad_clip > 0:
            entry["grad_norm"] = self.grad_norms[self.step - 1].item()  # before clipping
        entry.update({name: float(total) / n for name, total in self._stat_sums.items()})
        self._window_first, self._stat_sums = self.step, {}
        self.history.append(entry)

    def _record(self, result: TrainResult) -> None:
        if self.cfg.out_dir is not None:
            write_json_atomic(Path(self.cfg.out_dir) / RESULT_FILE,
                              {"losses": result.losses, "history": result.history, "evals": result.evals,
                               "tokens_per_s": result.tokens_per_s, "resumed_from": result.resumed_from})
        if self.run is not None:
            name = self.cfg.name
            self.run.table(f"{name}_history", result.history)
            if result.evals:
                self.run.table(f"{name}_evals", result.evals)
                self.run.metric(f"{name}_final_val_loss", result.final_val_loss, unit="nats/token")
            self.run.metric(f"{name}_tokens_per_s", result.tokens_per_s, unit="tok/s",
                            note=f"{self.step} steps, batch {self.cfg.batch_size} x {self.cfg.seq_len}")


def train(model: nn.Module, cfg: TrainConfig, train_tokens: np.ndarray, val_tokens: np.ndarray | None = None,
          make_optimizer: OptimizerFactory | None = None, run: Recorder | None = None,
          device: torch.device | str | None = None, resume: bool = False) -> TrainResult:
    """Build a ``Trainer`` and ``fit`` it (see ``Trainer`` for the arguments)."""
    return Trainer(model, cfg, train_tokens, val_tokens, make_optimizer, run, device).fit(resume=resume)
