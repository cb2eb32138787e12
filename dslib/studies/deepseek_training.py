"""Chapter 12's training measurements: load balancing of DeepSeekMoE, multi-token prediction,
and the DeepSeek-style model against a dense GPT and the book's Transformer-XL at equal FLOPs.

Every run is the book's trainer (dslib.train.Trainer, whose step is dslib.train.step.train_step:
it calls `update_router_biases` after each update) on the same token shards.

MaxVio (arXiv 2408.15664, section 4.1): max_i load_i / mean load - 1 of one MoE layer, where
load_i counts the tokens routed to expert i.
  training MaxVio_batch   per training batch, averaged over the main model's MoE layers (the
                          model's `moe_maxvio` stat), then over the trainer's log window
  MaxVio_global           over the whole validation stream: the loads summed over all
                          validation batches first, then the ratio; averaged over MoE layers
Training FLOPs come from named formulas: dslib.model.deepseek_flops.deepseek_flops_per_token
(DeepSeek models: 6 x activated matmul weights + attention, MTP included when present) and
dslib.model.flops.flops_per_token (Transformer-XL with its memory).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dslib.data.loader import StreamLoader
from dslib.env import device as default_device
from dslib.model.config import ModelConfig
from dslib.model.decode import greedy_decode, speculative_decode
from dslib.model.deepseek import DeepSeekModel
from dslib.model.deepseek_config import DeepSeekConfig
from dslib.model.deepseek_flops import count_deepseek_parameters, deepseek_flops_per_token
from dslib.model.flops import count_parameters, flops_per_token, matmul_parameters
from dslib.model.moe import maxvio as moe_maxvio
from dslib.model.transformer_xl import TransformerXL
from dslib.plan.measure import interleaved_seconds
from dslib.train import TrainConfig, Trainer
from dslib.train.memory import peak_memory
from dslib.train.step import OptimizerStepper, train_step

_LOAD_STAT = re.compile(r"^moe_load_layer(\d+)_e(\d+)$")


def maxvio(load: np.ndarray | torch.Tensor | list[float]) -> float:
    """model.moe.maxvio of per-expert loads given as a list, an array or a tensor."""
    return float(moe_maxvio(torch.as_tensor(np.asarray(load, dtype=np.float64))))


def balancing_variants(alphas: list[float], gammas: list[float]) -> dict[str, dict[str, Any]]:
    """MoE overrides for each routing variant of the balancing comparison (no group limit, so
    only the balancing differs): no balancing (sigmoid, nothing steering it), the batch-wise
    auxiliary loss (softmax router, DeepSeekMoE / GShard style) at each alpha, and
    auxiliary-loss-free bias balancing (sigmoid, arXiv 2408.15664) at each gamma."""
    off = {"n_group": 1, "topk_group": 1, "aux_loss_alpha": 0.0, "seq_aux_loss_alpha": 0.0, "bias_update_speed": 0.0}
    variants = {"none": {**off, "score_func": "sigmoid"}}
    variants.update({f"aux_loss_{a:g}": {**off, "score_func": "softmax", "aux_loss_alpha": a} for a in alphas})
    variants.update({f"loss_free_{g:g}": {**off, "score_func": "sigmoid", "bias_update_speed": g} for g in gammas})
    return variants


def with_moe(config: DeepSeekConfig, **moe: Any) -> DeepSeekConfig:
    """The config with its MoE section updated and validated again."""
    return DeepSeekConfig(**config.model_copy(update={"moe": config.moe.model_copy(update=moe)}).model_dump())


def with_mtp_depth(config: DeepSeekConfig, depth: int) -> DeepSeekConfig:
    return config.model_copy(update={"mtp": config.mtp.model_copy(update={"depth": depth})})


def training_flops_per_token(model: nn.Module) -> float:
    """Training FLOPs per token by the named formula of the model's kind (module docstring)."""
    if isinstance(model, DeepSeekModel):
        return sum(deepseek_flops_per_token(model.config).values())
    return flops_per_token(model.config, with_memory=True)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total (MTP modules included) and activated parameters per token (see deepseek_flops)."""
    if isinstance(model, DeepSeekModel):
        c = count_deepseek_parameters(model.config)
        return {"total_params": c["total"] + c["mtp_total"], "activated_params": c["activated"] + c["mtp_activated"]}
    return {"total_params": count_parameters(model.config), "activated_params": matmul_parameters(model.config)}


@torch.no_grad()
def validation_balance(model: DeepSeekModel, loader: StreamLoader, batches: int) -> dict[str, float]:
    """Main-token validation loss and MaxVio_global (loads summed over the batches, then the
    ratio, averaged over the main model's MoE layers)."""
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    loader.rewind()
    batches = min(batches, loader.steps_per_epoch)
    loss, loads = 0.0, {}
    for _ in range(batches):
        idx, targets = (t.to(device) for t in loader.next_batch())
        out = model(idx, targets=targets)
        loss += float(out.loss)
        for name, share in out.stats.items():  # equal tokens per batch: summed shares ~ summed loads
            match = _LOAD_STAT.match(name)
            if match:
                loads.setdefault(int(match[1]), {})[int(match[2])] = loads.get(int(match[1]), {}).get(
                    int(match[2]), 0.0) + float(share)
    loader.rewind()
    model.train(was_training)
    vios = [maxvio([per[e] for e in sorted(per)]) for per in loads.values()]
    return {"val_loss": loss / batches, "maxvio_global": float(np.mean(vios)) if vios else float("nan")}


@dataclass
class Corpus:
    """The tokenised shards every run of the chapter trains and validates on."""

    train: np.ndarray
    val: np.ndarray
    vocab_size: int


def train_config(steps: int, batch_size: int, seq_len: int, lr: float, seed: int, name: str,
                 use_memory: bool = False, log_every: int = 5, evals: int = 4) -> TrainConfig:
    """The chapter's one recipe: AdamW, warmup then cosine to lr/10, `evals` validations."""
    return TrainConfig(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, min_lr=lr / 10,
                       warmup_steps=min(20, steps // 5), eval_every=max(1, steps // evals), log_every=log_every,
                       seed=seed, use_memory=use_memory, progress=False, name=name)


def train_model(model: nn.Module, corpus: Corpus, cfg: TrainConfig, val_batches: int) -> dict[str, Any]:
    """Train with the book's trainer; returns its result, the training FLOPs per token and the
    per-window history with the cumulative training FLOPs of each logged step."""
    trainer = Trainer(model, cfg.model_copy(update={"eval_batches": val_batches}), corpus.train, corpus.val)
    result = trainer.fit()
    per_token = training_flops_per_token(model)
    tokens_per_step = cfg.batch_size * cfg.seq_len
    evals = [{**e, "flops": e["step"] * tokens_per_step * per_token} for e in result.evals]
    return {"result": result, "flops_per_token": per_token, "evals": evals,
            "train_flops": cfg.steps * tokens_per_step * per_token}


def balancing_run(config: DeepSeekConfig, variant: str, moe: dict[str, Any], corpus: Corpus, steps: int,
                  batch_size: int, lr: float, seed: int, val_batches: int) -> tuple[dict[str, Any], list[dict]]:
    """One routing variant at one seed: (summary row, per-window history with load shares)."""
    torch.manual_seed(seed)
    model = DeepSeekModel(with_moe(config, **moe))
    cfg = train_config(steps, batch_size, config.seq_len, lr, seed, f"{variant}_s{seed}")
    run = train_model(model, corpus, cfg, val_batches)
    history = run["result"].history
    late = [h["moe_maxvio"] for h in history[len(history) // 2:]]  # the second half of training
    balance = validation_balance(model, StreamLoader(corpus.val, batch_size, config.seq_len), val_batches)
    row = {"variant": variant, "seed": seed, **balance, "train_maxvio_batch": float(np.mean(late)),
           "tokens_per_s": run["result"].tokens_per_s}
    return row, [{"variant": variant, "seed": seed, **h} for h in history]


def load_heatmap(history: list[dict], layer: int) -> tuple[list[int], np.ndarray]:
    """(logged steps, [windows, experts] load shares) of one MoE layer from a run's history."""
    experts = sorted(int(m[2]) for k in history[0] if (m := _LOAD_STAT.match(k)) and int(m[1]) == layer)
    shares = np.array([[h[f"moe_load_layer{layer}_e{e}"] for e in experts] for h in history])
    return [int(h["step"]) for h in history], shares


def equal_flop_steps(budget_flops: float, flops_per_token: float, tokens_per_step: int) -> int:
    """Steps that spend `budget_flops` at `flops_per_token` (rounded to the nearest step)."""
    return max(1, round(budget_flops / (flops_per_token * tokens_per_step)))


def measure_peak_memory(model: nn.Module, corpus: Corpus, batch_size: int, seq_len: int, steps: int = 2) -> int:
    """Peak bytes above the process's memory at entry over `steps` training steps of a fresh
    AdamW (dslib.train.memory.peak_memory: RSS that follows the live tensors on a CPU)."""
    device = default_device()
    loader = StreamLoader(corpus.train, batch_size, seq_len, device)
    with peak_memory(device) as peak:
        model.to(device)
        stepper = OptimizerStepper(torch.optim.AdamW(model.parameters(), lr=1e-4))
        for _ in range(steps):
            train_step(model, loader.next_batch(), stepper)
        return peak()


def speculative_stats(model: DeepSeekModel, corpus: Corpus, prompts: int, prompt_len: int, new_tokens: int,
                      rounds: int = 2) -> dict[str, Any]:
    """Self-speculative decoding with the MTP draft over `prompts` validation prompts: the
    acceptance rate, whether the tokens equal greedy decoding's, the share of distinct tokens
    among the new ones (a looping continuation makes drafting easy), main-model forwards per token,
    and the wall-time speed-up over greedy decoding (both cached and absorbed, timed side by side)."""
    starts = np.linspace(0, len(corpus.val) - prompt_len - 1, prompts).astype(int)
    device = next(model.parameters()).device
    batch = [torch.tensor(corpus.val[s:s + prompt_len], dtype=torch.long, device=device)[None] for s in starts]
    results = [speculative_decode(model, p, new_tokens) for p in batch]
    same = [bool(torch.equal(r.tokens, greedy_decode(model, p, new_tokens))) for r, p in zip(results, batch)]
    seconds = interleaved_seconds({"greedy": lambda: [greedy_decode(model, p, new_tokens) for p in batch],
                                   "speculative": lambda: [speculative_decode(model, p, new_tokens) for p in batch]},
                                  rounds, 1)
    drafted, accepted = sum(r.drafted for r in results), sum(r.accepted for r in results)
    # share of distinct tokens among the new ones: low when greedy decoding loops on a few tokens
    distinct = np.mean([r.tokens[0, prompt_len:].unique().numel() / new_tokens for r in results])
    return {"acceptance_rate": accepted / max(drafted, 1), "drafted": drafted, "same_tokens_as_greedy": np.mean(same),
            "distinct_new_tokens": float(distinct),
            "main_forwards_per_token": sum(r.main_forwards for r in results) / (prompts * new_tokens),
            "greedy_s": seconds["greedy"], "speculative_s": seconds["speculative"],
            "speedup": seconds["greedy"] / seconds["speculative"]}


def balancing_study(config: DeepSeekConfig, corpus: Corpus, alphas: list[float], gammas: list[float],
                    seeds: list[int], steps: int, batch_size: int, lr: float, val_batches: int
                    ) -> tuple[list[dict], list[dict]]:
    """Every routing variant at every seed, without MTP (its MoE block would add a second
    router to the comparison): (summary rows, histories)."""
    rows, histories = [], []
    base = with_mtp_depth(config, 0)
    for variant, moe in balancing_variants(alphas, gammas).items():
        for seed in seeds:
            row, history = balancing_run(base, variant, moe, corpus, steps, batch_size, lr, seed, val_batches)
            rows.append(row)
            histories += history
    return rows, histories


def seed_summary(rows: list[dict], by: str, columns: list[str]) -> list[dict]:
    """Mean and standard deviation over seeds of `columns`, per value of `by`."""
    out = []
    for key in dict.fromkeys(r[by] for r in rows):
        group = [r for r in rows if r[by] == key]
        entry = {by: key, "seeds": len(group)}
        for c in columns:
            values = np.array([r[c] for r in group], dtype=float)
            entry[c], entry[f"{c}_std"] = float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def run_row(arm: str, seed: int, model: nn.Module, run: dict[str, Any]) -> dict[str, Any]:
    """One finished run as a table row: final validation loss, FLOPs, time and parameters."""
    result = run["result"]
    return {"arm": arm, "seed": seed, "val_loss": result.final_val_loss, "train_flops": run["train_flops"],
            "flops_per_token": run["flops_per_token"], "steps": len(result.losses),
            "tokens_per_s": result.tokens_per_s, **parameter_counts(model)}


def curve_rows(arm: str, seed: int, run: dict[str, Any], tokens_per_step: int) -> list[dict]:
    """Validation loss at each evaluation, with its training FLOPs and wall seconds (training only)."""
    seconds_per_step = tokens_per_step / run["result"].tokens_per_s
    return [{"arm": arm, "seed": seed, "step": e["step"], "val_loss": e["val_loss"], "flops": e["flops"],
             "wall_s": e["step"] * seconds_per_step} for e in run["evals"]]


def mtp_study(config: DeepSeekConfig, corpus: Corpus, seeds: list[int], steps: int, batch_size: int, lr: float,
              val_batches: int) -> tuple[list[dict], list[dict], dict[int, DeepSeekModel]]:
    """With MTP for `steps`, without it for the same steps, and without it for the steps that
    spend the MTP run's training FLOPs: (rows, validation curves, the MTP models by seed)."""
    tokens = batch_size * config.seq_len
    no_mtp = with_mtp_depth(config, 0)
    budget = steps * tokens * sum(deepseek_flops_per_token(config).values())
    arms = {"mtp": (config, steps), "no_mtp_equal_steps": (no_mtp, steps),
            "no_mtp_equal_flops": (no_mtp, equal_flop_steps(budget, sum(deepseek_flops_per_token(no_mtp).values()),
                                                            tokens))}
    rows, curves, models = [], [], {}
    for seed in seeds:
        for arm, (cfg, arm_steps) in arms.items():
            torch.manual_seed(seed)
            model = DeepSeekModel(cfg)
            run = train_model(model, corpus, train_config(arm_steps, batch_size, cfg.seq_len, lr, seed,
                                                          f"{arm}_s{seed}"), val_batches)
            rows.append(run_row(arm, seed, model, run))
            curves += curve_rows(arm, seed, run, tokens)
            if arm == "mtp":
                models[seed] = model
    return rows, curves, models


def head_to_head(config: DeepSeekConfig, dense: DeepSeekConfig, txl: ModelConfig, corpus: Corpus,
                 seeds: list[int], steps: int, batch_size: int, lr: float, val_batches: int,
                 deepseek_rows: list[dict], deepseek_curves: list[dict]) -> tuple[list[dict], list[dict]]:
    """The dense GPT and the Transformer-XL trained for the steps that spend the DeepSeek-style
    model's training FLOPs of `steps` steps; the DeepSeek arm is the MTP study's `mtp` runs (the
    same config, steps and seeds), passed in. Peak memory of two training steps of a fresh
    model of each arm is measured once: (rows, validation curves)."""
    tokens = batch_size * config.seq_len
    budget = steps * tokens * sum(deepseek_flops_per_token(config).values())
    build = {"deepseek": lambda: DeepSeekModel(config), "dense_gpt": lambda: DeepSeekModel(dense),
             "transformer_xl": lambda: TransformerXL(txl)}
    memory = {arm: measure_peak_memory(make(), corpus, batch_size, config.seq_len) / 1e6 for arm, make in build.items()}
    rows = [{**r, "arm": "deepseek"} for r in deepseek_rows if r["arm"] == "mtp"]
    curves = [{**c, "arm": "deepseek"} for c in deepseek_curves if c["arm"] == "mtp"]
    for seed in seeds:
        for arm in ("dense_gpt", "transformer_xl"):
            torch.manual_seed(seed)
            model = build[arm]()
            arm_steps = equal_flop_steps(budget, training_flops_per_token(model), tokens)
            cfg = train_config(arm_steps, batch_size, config.seq_len, lr, seed, f"{arm}_s{seed}",
                               use_memory=arm == "transformer_xl")
            run = train_model(model, corpus, cfg, val_batches)
            rows.append(run_row(arm, seed, model, run))
            curves += curve_rows(arm, seed, run, tokens)
    return [{**r, "peak_memory_MB": memory[r["arm"]]} for r in rows], curves


def balancing_evidence(summary: list[dict], alphas: list[float], gammas: list[float]) -> list[dict[str, Any]]:
    """One row per (alpha, gamma) pair for claim aux_free_beats_aux_loss: the auxiliary-loss
    variant's mean validation loss minus the loss-free one's (positive: loss-free is lower) and
    the loss-free MaxVio_global minus the auxiliary loss's (at most 0: equal or lower)."""
    by = {r["variant"]: r for r in summary}
    rows = []
    for a in alphas:
        for g in gammas:
            aux, free = by[f"aux_loss_{a:g}"], by[f"loss_free_{g:g}"]
            rows.append({"value": {"loss_advantage": aux["val_loss"] - free["val_loss"],
                                   "maxvio_excess": free["maxvio_global"] - aux["maxvio_global"]},
                         "conditions": {"alpha": a, "gamma": g}, "seeds": min(aux["seeds"], free["seeds"]),
                         "note": f"val loss {aux['val_loss']:.4f}±{aux['val_loss_std']:.4f} (aux) vs "
                                 f"{free['val_loss']:.4f}±{free['val_loss_std']:.4f} (loss-free)"})
    return rows


def mtp_evidence(summary: list[dict]) -> list[dict[str, Any]]:
    """Claim mtp_improves_main_loss: the no-MTP model's mean validation loss minus the MTP
    model's, at equal steps (the paper's comparison: same tokens) and at equal training FLOPs."""
    by = {r["arm"]: r for r in summary}
    mtp = by["mtp"]
    return [{"value": by[arm]["val_loss"] - mtp["val_loss"], "conditions": {"budget": budget},
             "seeds": min(mtp["seeds"], by[arm]["seeds"]), "default": budget == "equal steps",
             "note": f"{by[arm]['val_loss']:.4f}±{by[arm]['val_loss_std']:.4f} without MTP vs "
                     f"{mtp['val_loss']:.4f}±{mtp['val_loss_std']:.4f} with"}
            for arm, budget in (("no_mtp_equal_steps", "equal steps"), ("no_mtp_equal_flops", "equal FLOPs"))]
