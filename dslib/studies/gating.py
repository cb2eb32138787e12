"""Chapter 04's study of the dynamic gate: why the article's gate cannot train, and what a
trainable one skips, saves and costs.

- `ArgmaxGate` is the article's `DynamicGate` as written: `argmax` of a small MLP. Its
  decision is an integer; no gradient reaches the MLP (`gate_gradient_norms` shows it next
  to the straight-through gate of gate.py).
- `train_gated` fine-tunes a gated copy of a trained ungated model at one compute penalty.
- `penalty_sweep` fine-tunes and measures every (penalty, seed); `seed_spread` gives each
  penalty's mean and seed-to-seed range, set beside the claim's loss tolerance.
- `measure_inference` reads a validation stream once per mode and reports the loss, the
  skipped fraction of layer computations and the wall time per token: rejected rows
  skipped (`set_skip_compute(True)`), computed and masked (`False`), and the ungated model.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import pandas as pd
import torch
from torch import nn

from dslib.claims import load_claims
from dslib.data.loader import StreamLoader
from dslib.env import synchronize
from dslib.model.config import GateConfig
from dslib.model.gate import DynamicGate
from dslib.model.transformer_xl import TransformerXL
from dslib.train import TrainConfig, Trainer, TrainResult, seed_everything


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


def penalty_sweep(base: TransformerXL, reference: TransformerXL, penalties: list[float], seeds: list[int],
                  cfg: TrainConfig, train_tokens: np.ndarray, val_loader: StreamLoader, eval_batches: int,
                  repeats: int, granularity: str = "sequence", init_keep_logit: float = 1.0,
                  log=print) -> pd.DataFrame:
    """One row per (penalty, seed): a gated copy of `base` fine-tuned under that seed (gate
    initialisation, Gumbel noise), measured against the same ungated reference."""
    rows = []
    for penalty in penalties:
        for seed in seeds:
            seed_everything(seed)
            run_cfg = cfg.model_copy(update={"seed": seed})
            gated, _ = train_gated(base, penalty, run_cfg, train_tokens, granularity, init_keep_logit)
            row = measure_inference(gated, reference, val_loader, eval_batches, repeats)
            rows.append({"penalty": penalty, "seed": seed, **row})
            log(f"penalty {penalty:g} seed {seed}: {row['skip_fraction']:.0%} skipped, "
                f"loss cost {row['loss_cost']:+.3f}, time {row['time_ratio_vs_ungated']:.2f}x ungated")
    return pd.DataFrame(rows)


def seed_spread(sweep: pd.DataFrame, loss_tolerance: float) -> pd.DataFrame:
    """Per penalty: mean skip fraction and loss cost over the seeds, the loss cost's
    seed-to-seed range (max - min) and that range as a share of the claim's tolerance
    (a share near or above 1 means one seed cannot tell a pass from a fail)."""
    sweep = sweep.assign(masked_ratio_vs_ungated=sweep["us_per_token_masked"] / sweep["us_per_token_ungated"])
    grouped = sweep.groupby("penalty")
    out = pd.DataFrame({
        "seeds": grouped.size(),
        "skip_fraction": grouped["skip_fraction"].mean(),
        "skip_fraction_range": grouped["skip_fraction"].max() - grouped["skip_fraction"].min(),
        "loss_cost": grouped["loss_cost"].mean(),
        "loss_cost_min": grouped["loss_cost"].min(),
        "loss_cost_max": grouped["loss_cost"].max(),
        "time_ratio_vs_ungated": grouped["time_ratio_vs_ungated"].mean(),
        "masked_ratio_vs_ungated": grouped["masked_ratio_vs_ungated"].mean(),
    }).reset_index()
    out["loss_cost_range"] = out["loss_cost_max"] - out["loss_cost_min"]
    out["range_over_tolerance"] = out["loss_cost_range"] / loss_tolerance
    return out


def claimed_loss_tolerance(claim_id: str = "gate_skips_30_50") -> float:
    """The largest loss cost (nats/token) at which the claim counts skipping: configs/claims.yaml."""
    return next(q.value for q in load_claims()[claim_id].quantities if q.name == "loss_cost")
