"""Chapter 04's study of the dynamic gate: why the article's gate cannot train, and what a
trainable one skips, saves and costs.

- `ArgmaxGate` is the article's `DynamicGate` as written: `argmax` of a small MLP. Its
  decision is an integer; no gradient reaches the MLP (`gate_gradient_norms` shows it next
  to the straight-through gate of gate.py).
- `train_gated` fine-tunes a gated copy of a trained ungated model at one compute penalty.
- `measure_inference` reads a validation stream once per mode and reports the loss, the
  skipped fraction of layer computations and the wall time per token: rejected rows
  skipped (`set_skip_compute(True)`), computed and masked (`False`), and the ungated model.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn

from dslib.data.loader import StreamLoader
from dslib.env import synchronize
from dslib.model.config import GateConfig
from dslib.model.gate import DynamicGate
from dslib.model.transformer_xl import TransformerXL
from dslib.train import TrainConfig, Trainer, TrainResult


class ArgmaxGate(nn.Module):
    """The article's gate: two logits (skip, run) from a small MLP, decision = argmax."""

    def __init__(self, hidden_size: int, gate_hidden: int = 32):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(hidden_size, gate_hidden), nn.ReLU(), nn.Linear(gate_hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x.mean(dim=1)).argmax(dim=-1)  # [B] int64: 1 = run the block


def gate_gradient_norms(hidden_size: int = 16, batch: int = 4, seq_len: int = 8, seed: int = 0) -> dict:
    """Gradient norm reaching each gate's parameters through `keep * block(x) + (1-keep) * x`.

    None means no gradient at all (the parameter is not in the autograd graph).
    """
    torch.manual_seed(seed)
    x = torch.randn(batch, seq_len, hidden_size)
    block = nn.Linear(hidden_size, hidden_size)
    gates = {"argmax (article)": ArgmaxGate(hidden_size),
             "straight-through (dslib)": DynamicGate(hidden_size, GateConfig(enabled=True, init_keep_logit=0.0))}
    norms = {}
    for name, gate in gates.items():
        keep = gate(x) if isinstance(gate, ArgmaxGate) else gate.decide(gate(x))
        keep = keep.float()[:, None, None]
        loss = (keep * block(x) + (1 - keep) * x).pow(2).mean()
        if loss.requires_grad:
            loss.backward()
        grads = [p.grad for p in gate.parameters() if p.grad is not None]
        norms[name] = float(torch.stack([g.norm() for g in grads]).norm()) if grads else None
    return norms


def gated_copy(base: TransformerXL, penalty: float, granularity: str, init_keep_logit: float = 1.0) -> TransformerXL:
    """A gated model holding the base model's weights; the gates start by keeping (keep
    probability sigmoid(init_keep_logit)), close enough to the edge for a short fine-tune to move."""
    gate = GateConfig(enabled=True, penalty=penalty, granularity=granularity, init_keep_logit=init_keep_logit)
    model = TransformerXL(base.config.model_copy(update={"gate": gate}))
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(".gate." in k for k in missing), (missing, unexpected)
    return model


def train_gated(base: TransformerXL, penalty: float | None, cfg: TrainConfig, train_tokens: np.ndarray,
                granularity: str = "sequence", init_keep_logit: float = 1.0) -> tuple[TransformerXL, TrainResult]:
    """Fine-tune from the base weights: gated at `penalty`, or ungated when penalty is None
    (the reference that gets the same extra steps)."""
    model = copy.deepcopy(base) if penalty is None else gated_copy(base, penalty, granularity, init_keep_logit)
    result = Trainer(model, cfg, train_tokens).fit()
    return model, result


def _timed_forward(model: TransformerXL, idx, targets, mems) -> tuple[float, object]:
    start = time.perf_counter()
    out = model(idx, mems=mems, targets=targets)
    synchronize(idx.device)
    return time.perf_counter() - start, out


@torch.no_grad()
def measure_inference(model: TransformerXL, reference: TransformerXL, loader: StreamLoader, batches: int,
                      repeats: int = 3) -> dict:
    """Loss, skipped fraction and time per token of a gated model (skipping and masking)
    and of the ungated reference, reading the same segments with memory.

    The three modes take turns on every segment, `repeats` times each, and a segment's
    time is its fastest run: on a shared machine, load bursts then hit all modes alike.
    """
    batches = min(batches, loader.steps_per_epoch)
    device = next(model.parameters()).device
    model.eval(), reference.eval()
    modes = {"skipping": (model, True), "masked": (model, False), "ungated": (reference, None)}
    mems = dict.fromkeys(modes)
    seconds, losses = dict.fromkeys(modes, 0.0), dict.fromkeys(modes, 0.0)
    skipped = 0.0
    loader.rewind()
    for _ in range(batches):
        idx, targets = (t.to(device) for t in loader.next_batch())
        for mode, (net, skip) in modes.items():
            if skip is not None:
                net.set_skip_compute(skip)
            runs = [_timed_forward(net, idx, targets, mems[mode]) for _ in range(repeats)]
            out = runs[-1][1]
            seconds[mode] += min(t for t, _ in runs)
            losses[mode] += float(out.loss)
            mems[mode] = out.mems
            if mode == "skipping":
                skipped += float(out.stats["gate_skip_fraction"])
    loader.rewind()
    model.set_skip_compute(True)
    tokens = batches * loader.batch_size * loader.seq_len
    us = {mode: 1e6 * s / tokens for mode, s in seconds.items()}
    loss, ref_loss = losses["skipping"] / batches, losses["ungated"] / batches
    return {"val_loss": loss, "ungated_val_loss": ref_loss, "loss_cost": loss - ref_loss,
            "skip_fraction": skipped / batches, "us_per_token_skipping": us["skipping"],
            "us_per_token_masked": us["masked"], "us_per_token_ungated": us["ungated"],
            "time_ratio_vs_ungated": us["skipping"] / us["ungated"],
            "time_ratio_vs_masked": us["skipping"] / us["masked"]}
