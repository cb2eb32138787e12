"""Chapter 13's FP8 measurements: quantisation error per layer of per-tensor against fine-grained
scaling on the real activations, gradients and weights of the DeepSeek-style model, and training
over the same batches in FP32, BF16 (autocast), FP8 per-tensor and FP8 fine-grained, per seed.

The FP8 runs convert the model's Linear layers and its routed experts' two stacked GEMMs with
dslib.train.fp8.apply_fp8 and keep the rest (embedding, head, norms, router, attention core) in
FP32; BF16 is the chapter 07 autocast. Every step is the book's one step (dslib.train.step.train_step) with AdamW on FP32
master weights. Step times are reported, never asserted.
"""
from __future__ import annotations

import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from dslib.data import sources, tokenizer
from dslib.data.loader import StreamLoader
from dslib.data.shards import build_shards
from dslib.env import synchronize
from dslib.model import DeepSeekConfig, build_model, load_deepseek_config
from dslib.model.moe import RoutedExperts
from dslib.train.fp8 import E4M3_MAX, E4M3_RELATIVE_ERROR, FP8Recipe, Scaled, apply_fp8, fp8_exclusion, quantise_per_tensor
from dslib.train.step import Batch, OptimizerStepper, train_step
from dslib.viz import new_figure

# mode -> (autocast precision of the non-FP8 parts, FP8 scaling or None)
MODES: dict[str, tuple[str, str | None]] = {
    "fp32": ("fp32", None), "bf16": ("bf16", None),
    "fp8_tensorwise": ("fp32", "tensorwise"), "fp8_blockwise": ("fp32", "blockwise"),
}


def text_batches(model_config: str, source_names: list[str], docs_per_source: int, batch_size: int, steps: int,
                 device: torch.device, **overrides: Any) -> tuple[DeepSeekConfig, list[Batch]]:
    """The model config (its vocabulary sized to the tokenizer) and ``steps`` training batches of real text."""
    docs = sources.load_many(source_names, docs_per_source)
    tok = tokenizer.get_tokenizer(docs["text"], overrides.pop("vocab_size", 512))
    config = load_deepseek_config(model_config, vocab_size=tok.vocab_size, **overrides)
    loader = StreamLoader(build_shards(docs["text"], tok).tokens("train"), batch_size, config.seq_len, device=device)
    return config, [loader.next_batch() for _ in range(steps)]


def _relative_error(q: Scaled, x: torch.Tensor) -> float:
    return float((q.dequantise() - x).norm() / x.norm().clamp(min=1e-30))


def _worst_tile_error(q: Scaled, x: torch.Tensor) -> float:
    """Largest |error| in a tile over that tile's amax (E4M3 bounds it by 2^-4)."""
    tile_amax = Scaled(torch.ones_like(x), q.scale * E4M3_MAX, q.block).dequantise()
    return float(((q.dequantise() - x).abs() / tile_amax.clamp(min=1e-30)).max())


class _KeepingExperts(RoutedExperts):
    """RoutedExperts that keeps its two GEMMs' inputs and outputs (gradients retained) for one
    capture; its class is swapped in for the capture only."""

    kept: dict[str, list[torch.Tensor]]

    def _grouped(self, xs: torch.Tensor, gates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return self._keep(super()._grouped, xs, gates, counts)

    def _loop(self, xs: torch.Tensor, gates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return self._keep(super()._loop, xs, gates, counts)

    def _keep(self, run, xs: torch.Tensor, gates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        self.kept["gate_up_in"].append(xs)
        ys = run(xs, gates, counts)
        ys.retain_grad()
        self.kept["down_out"].append(ys)
        return ys

    def _activation(self, gate_up: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        gate_up.retain_grad()  # one call for grouped_mm, one per expert for the loop: in expert order
        self.kept["gate_up_out"].append(gate_up)
        out = RoutedExperts._activation(gate_up, gates)
        self.kept["down_in"].append(out)
        return out

    def tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """Per stacked GEMM: activation [assignments, K], output gradient [assignments, N], weight [E, K, N]."""
        cat = lambda key, grad=False: torch.cat([t.grad if grad else t for t in self.kept[key]]).detach()  # noqa: E731
        return {"gate_up": {"weight": self.gate_up.detach().clone(), "activation": cat("gate_up_in"),
                            "gradient": cat("gate_up_out", grad=True)},
                "down": {"weight": self.down.detach().clone(), "activation": cat("down_in"),
                         "gradient": cat("down_out", grad=True)}}


def capture_gemm_tensors(model: nn.Module, batch: Batch) -> dict[str, dict[str, torch.Tensor]]:
    """One FP32 forward and backward: per GEMM that apply_fp8 would convert (each Linear, and
    the gate_up and down GEMMs of each RoutedExperts, all experts' slices together), its input
    (activation [tokens, K]), output gradient ([tokens, N]) and weight ([N, K]; [E, K, N] for
    the experts' stacked weights)."""
    captured: dict[str, dict[str, torch.Tensor]] = {}
    handles = []
    experts = {name: m for name, m in model.named_modules()
               if type(m) is RoutedExperts and fp8_exclusion(name) is None}

    def hook(name: str):
        def record(module: nn.Linear, inputs: tuple, output: torch.Tensor) -> None:
            entry = captured.setdefault(name, {"weight": module.weight.detach().clone()})
            entry["activation"] = inputs[0].detach().reshape(-1, module.in_features).clone()
            output.register_hook(lambda g: entry.__setitem__("gradient", g.detach().reshape(-1, module.out_features)))
        return record

    for name, module in model.named_modules():
        if type(module) is nn.Linear and fp8_exclusion(name) is None:
            handles.append(module.register_forward_hook(hook(name)))
    try:
        for module in experts.values():
            module.__class__, module.kept = _KeepingExperts, defaultdict(list)
        model.zero_grad(set_to_none=True)
        idx, targets = batch
        out = model(idx, targets=targets)
        (out.loss + out.aux_loss).backward()
        model.zero_grad(set_to_none=True)
        for name, module in experts.items():
            captured.update({f"{name}.{gemm}": t for gemm, t in module.tensors().items()})
    finally:
        for h in handles:
            h.remove()
        for module in experts.values():
            module.__class__ = RoutedExperts
            vars(module).pop("kept", None)
    return captured


def layer_errors(model: nn.Module, batch: Batch, tile: int = 128) -> list[dict[str, Any]]:
    """Per converted GEMM and tensor (activation, gradient, weight): the relative error
    ||x_hat - x|| / ||x|| of per-tensor and of fine-grained E4M3, their ratio, the worst tile's
    error over its amax, and the tensor's dynamic range amax / median |x|. The routed experts'
    rows are "<experts>.gate_up" and "<experts>.down", all experts' tokens together; their weight
    is fine-grained in 128 x 128 blocks per expert, per-tensor with one scale for the stack."""
    fine = FP8Recipe("blockwise", tile)
    rows = []
    for layer, tensors in capture_gemm_tensors(model, batch).items():
        for kind, x in tensors.items():
            q = fine.weight(x) if kind == "weight" else fine.activation(x, 1)  # tiles along the GEMM's K
            per_tensor, blockwise = _relative_error(quantise_per_tensor(x), x), _relative_error(q, x)
            rows.append({"layer": layer, "tensor": kind, "shape": "x".join(map(str, x.shape)),
                         "per_tensor_error": per_tensor, "fine_grained_error": blockwise,
                         "error_ratio": per_tensor / max(blockwise, 1e-30), "worst_tile_error": _worst_tile_error(q, x),
                         "dynamic_range": float(x.abs().max() / x.abs().median().clamp(min=1e-30))})
    return rows


@dataclass
class ModeRun:
    """One training run: its mode, seed, per-step loss and seconds (and the trained model)."""
    mode: str
    seed: int
    loss: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    model: nn.Module | None = field(default=None, repr=False)

    def rows(self) -> list[dict[str, Any]]:
        return [{"mode": self.mode, "seed": self.seed, "step": i + 1, "loss": loss, "step_s": t}
                for i, (loss, t) in enumerate(zip(self.loss, self.step_s))]


def train_mode(config: DeepSeekConfig, batches: Iterable[Batch], mode: str, seed: int, device: torch.device,
               lr: float = 1e-3, tile: int = 128) -> ModeRun:
    """Train a fresh model (weights from ``seed``) over ``batches`` in ``mode`` (a key of MODES)."""
    precision, scaling = MODES[mode]
    model = build_model(config, seed=seed, device=device)
    if scaling is not None:
        apply_fp8(model, FP8Recipe(scaling, tile))
    stepper = OptimizerStepper(torch.optim.AdamW(model.parameters(), lr=lr))
    run = ModeRun(mode, seed, model=model)
    model.train()
    for batch in batches:
        start = time.perf_counter()
        result = train_step(model, batch, stepper, precision=precision)
        loss = result.loss.item()  # the host sync ends the step
        synchronize(device)
        run.step_s.append(time.perf_counter() - start)
        run.loss.append(loss)
    return run


def compare_modes(config: DeepSeekConfig, batches: list[Batch], modes: list[str], seeds: list[int],
                  device: torch.device, lr: float = 1e-3, tile: int = 128) -> list[ModeRun]:
    """Every mode for every seed over the same batches (the same initial weights per seed)."""
    return [train_mode(config, batches, mode, seed, device, lr, tile) for seed in seeds for mode in modes]


def loss_gaps(runs: list[ModeRun], references: tuple[str, ...] = ("bf16", "fp32"), window: int = 5
              ) -> list[dict[str, Any]]:
    """Per FP8 mode and reference: the relative gap (loss - reference) / reference of the mean
    loss over the last ``window`` steps, paired by seed, with its mean, spread and worst |gap|."""
    final = {(r.mode, r.seed): statistics.fmean(r.loss[-window:]) for r in runs}
    rows = []
    for mode in sorted({r.mode for r in runs if MODES[r.mode][1] is not None}):
        for ref in references:
            seeds = sorted(s for m, s in final if m == mode and (ref, s) in final)
            if not seeds:
                continue
            gaps = [(final[mode, s] - final[ref, s]) / final[ref, s] for s in seeds]
            rows.append({"mode": mode, "reference": ref, "seeds": len(seeds), "window": window,
                         "mean_gap": statistics.fmean(gaps), "std_gap": statistics.stdev(gaps) if len(gaps) > 1 else 0.0,
                         "max_abs_gap": max(abs(g) for g in gaps), "gaps": [round(g, 6) for g in gaps]})
    return rows


def step_times(runs: list[ModeRun]) -> list[dict[str, Any]]:
    """Median seconds per step per mode (the first step of each run left out: kernel selection),
    and the ratio to fp32 where it ran."""
    per_mode: dict[str, list[float]] = {}
    for r in runs:
        per_mode.setdefault(r.mode, []).extend(r.step_s[1:] or r.step_s)
    median = {m: statistics.median(t) for m, t in per_mode.items()}
    return [{"mode": m, "median_step_ms": 1e3 * t, "time_vs_fp32": t / median["fp32"] if "fp32" in median else None}
            for m, t in median.items()]


def outlier_sweep(magnitudes: Iterable[float], rows: int = 64, cols: int = 512, tile: int = 128,
                  seed: int = 0) -> list[dict[str, Any]]:
    """Gaussian activations [rows, cols] with one outlier of each magnitude: the relative error of
    every element outside the outlier's 1 x tile tile, per-tensor against fine-grained. Per-tensor
    breaks once the rest falls under E4M3's normal range: magnitude > 448 x 2^6 x typical |x|."""
    clean = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    outside = torch.ones_like(clean, dtype=torch.bool)
    outside[0, :tile] = False
    out = []
    for magnitude in magnitudes:
        x = clean.clone()
        x[0, 0] = magnitude
        per_tensor, fine = quantise_per_tensor(x), FP8Recipe("blockwise", tile).activation(x, 1)
        errors = [float((q.dequantise() - x)[outside].norm() / x[outside].norm()) for q in (per_tensor, fine)]
        out.append({"outlier": magnitude, "per_tensor_error": errors[0], "fine_grained_error": errors[1]})
    return out


def plot_layer_errors(rows: list[dict[str, Any]], sweep: list[dict[str, Any]]) -> Any:
    """Left: per-tensor error / fine-grained error per layer and tensor; right: both errors
    against the size of one synthetic outlier."""
    fig, axes = new_figure(ncols=2, height=0.09 * len(rows) + 1.5)
    ax_layers, ax_sweep = axes.flat
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    for offset, kind in zip((-0.27, 0.0, 0.27), ("activation", "gradient", "weight")):
        ratio = {r["layer"]: r["error_ratio"] for r in rows if r["tensor"] == kind}
        ax_layers.barh([i + offset for i in range(len(layers))], [ratio[l] for l in layers], height=0.27, label=kind)
    ax_layers.axvline(1.0, color="grey", ls=":")
    ax_layers.set(yticks=range(len(layers)), yticklabels=layers, xlabel="per-tensor error / fine-grained error",
                  title="real tensors of one training step")
    ax_layers.legend(fontsize=7)
    magnitudes = [r["outlier"] for r in sweep]
    ax_sweep.loglog(magnitudes, [r["per_tensor_error"] for r in sweep], marker="o", label="per-tensor")
    ax_sweep.loglog(magnitudes, [r["fine_grained_error"] for r in sweep], marker="s", label="fine-grained (1x128)")
    ax_sweep.axhline(E4M3_RELATIVE_ERROR, color="grey", ls=":", label="2^-4")
    ax_sweep.set(xlabel="outlier magnitude (rest ~ N(0, 1))", ylabel="relative error outside the outlier's tile",
                 title="one synthetic outlier")
    ax_sweep.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_losses(runs: list[ModeRun], gaps: list[dict[str, Any]]) -> Any:
    """Left: loss per step per mode (mean over seeds); right: each FP8 mode's relative gap per seed."""
    fig, axes = new_figure(ncols=2)
    ax_loss, ax_gap = axes.flat
    for mode in dict.fromkeys(r.mode for r in runs):
        curves = [r.loss for r in runs if r.mode == mode]
        ax_loss.plot(range(1, len(curves[0]) + 1), [statistics.fmean(c) for c in zip(*curves)], label=mode)
    ax_loss.set(xlabel="step", ylabel="training loss (mean over seeds)", title="same batches, same initial weights")
    ax_loss.legend()
    for i, row in enumerate(gaps):
        ax_gap.scatter([i] * len(row["gaps"]), [100 * g for g in row["gaps"]], label=f"{row['mode']} vs {row['reference']}")
    ax_gap.axhspan(-0.25, 0.25, color="green", alpha=0.15, label="+-0.25% (V3's bound)")
    ax_gap.set(xticks=[], ylabel="relative loss gap, % (per seed)", title="final-window loss gap")
    ax_gap.legend(fontsize=7)
    return fig
