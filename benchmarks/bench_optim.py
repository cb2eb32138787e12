"""Optimizer step time for ~50M parameters, and fp32 vs bf16/fp16 training step time.

Side by side in one run, rounds interleaved so machine noise hits every optimizer alike:
dslib Lion (fused, foreach), torch AdamW (foreach, fused), DeepSpeed's CPU Lion op
(compiles ~90 s on first use), the article's sign-Adam. Writes outputs/bench/optim.json
and outputs/bench/optim.md.

    PYTHONPATH=$PWD python benchmarks/bench_optim.py [--params 50e6] [--rounds 15]
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch

from dslib.env import outputs_dir
from dslib.optim import ArticleSignAdam, Lion, state_bytes_per_param
from dslib.train.precision import Precision, autocast, cpu_precision_support


def gpt_like_shapes(n_params: float, d_model: int = 768, vocab: int = 16000) -> list[tuple[int, ...]]:
    """Tensor shapes of a GPT-style model with about n_params parameters (many small tensors too)."""
    shapes: list[tuple[int, ...]] = [(vocab, d_model)]
    while sum(torch.Size(s).numel() for s in shapes) + 12 * d_model**2 <= n_params:
        shapes += [(d_model,), (d_model,), (3 * d_model, d_model), (3 * d_model,), (d_model, d_model),
                   (d_model,), (d_model,), (d_model,), (4 * d_model, d_model), (4 * d_model,),
                   (d_model, 4 * d_model), (d_model,)]
    return shapes


def optimizer_factories(lion_lr: float = 1e-4, adam_lr: float = 1e-3) -> dict:
    factories = {
        "dslib Lion (fused, torch.compile)": lambda ps: Lion(ps, lr=lion_lr, weight_decay=0.1, fused=True),
        "dslib Lion (foreach)": lambda ps: Lion(ps, lr=lion_lr, weight_decay=0.1, foreach=True),
        "torch AdamW (foreach)": lambda ps: torch.optim.AdamW(ps, lr=adam_lr, weight_decay=0.01, foreach=True),
        "torch AdamW (fused)": lambda ps: torch.optim.AdamW(ps, lr=adam_lr, weight_decay=0.01, fused=True),
        "article sign-Adam (foreach)": lambda ps: ArticleSignAdam(ps, lr=1e-5),
    }
    try:
        from deepspeed.ops.lion import DeepSpeedCPULion

        factories["DeepSpeedCPULion (C++ op)"] = lambda ps: DeepSpeedCPULion(
            ps, lr=lion_lr, betas=(0.9, 0.99), weight_decay=0.1)
    except ImportError:
        pass
    return factories


def time_optimizer_steps(n_params: float, rounds: int, warmup: int = 3) -> list[dict]:
    shapes = gpt_like_shapes(n_params)
    factories = optimizer_factories()
    setups = {}
    for name, make in factories.items():
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) * 1e-3
        opt = make(params)
        for _ in range(warmup):  # state allocation, torch.compile, op build
            opt.step()
        setups[name] = (params, opt, [])
    for _ in range(rounds):
        for name, (_, opt, times) in setups.items():
            start = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - start)
    n = sum(torch.Size(s).numel() for s in shapes)
    rows = []
    for name, (params, opt, times) in setups.items():
        rows.append({"optimizer": name, "params": n, "tensors": len(shapes),
                     "step_ms_median": 1e3 * statistics.median(times),
                     "step_ms_min": 1e3 * min(times),
                     "state_bytes_per_param": state_bytes_per_param(opt)["total"]})
    del setups
    gc.collect()
    return rows


def add_ratios(rows: list[dict], subject: str = "dslib Lion (fused, torch.compile)") -> dict[str, float]:
    """How many times faster the dslib Lion step is than each other optimizer (>1: Lion faster)."""
    ours = next(r["step_ms_median"] for r in rows if r["optimizer"] == subject)
    for r in rows:
        r["time_vs_dslib_lion"] = r["step_ms_median"] / ours
    return {r["optimizer"]: r["step_ms_median"] / ours for r in rows if r["optimizer"] != subject}


def time_training_steps(rounds: int, d_model: int = 256, n_layers: int = 2, seq: int = 128,
                        batch: int = 8, vocab: int = 2048) -> list[dict]:
    """fp32 vs autocast bf16/fp16 fwd+bwd+step of a small torch Transformer, interleaved."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model, 4, 4 * d_model, dropout=0.0, batch_first=True,
                                             norm_first=True)
    model = torch.nn.Sequential(torch.nn.Embedding(vocab, d_model),
                                torch.nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False),
                                torch.nn.Linear(d_model, vocab))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, vocab, (batch, seq))
    device = torch.device("cpu")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**15)
    times: dict[str, list[float]] = {p.value: [] for p in Precision}

    def train_step(precision: Precision) -> None:
        with autocast(device, precision):
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.view(-1, vocab), x.view(-1))
        opt.zero_grad(set_to_none=True)
        if precision is Precision.FP16:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    for precision in Precision:
        train_step(precision)  # warm-up (kernel selection, cast caches)
    for _ in range(rounds):
        for precision in Precision:
            start = time.perf_counter()
            train_step(precision)
            times[precision.value].append(time.perf_counter() - start)
    fp32 = statistics.median(times["fp32"])
    return [{"precision": name, "step_ms_median": 1e3 * statistics.median(ts),
             "time_vs_fp32": statistics.median(ts) / fp32,
             "model": f"{n_layers} layers d{d_model} T{seq} B{batch} V{vocab}"}
            for name, ts in times.items()]


def to_markdown(result: dict) -> str:
    support = result["cpu_precision_support"]
    lines = [f"# Optimizer and precision benchmark ({result['threads']} threads, torch {result['torch']})", "",
             f"Optimizer step, {result['optimizer_rows'][0]['params'] / 1e6:.1f}M parameters in "
             f"{result['optimizer_rows'][0]['tensors']} tensors, median of {result['rounds']} interleaved rounds.", "",
             "| optimizer | step ms (median) | step ms (min) | x dslib Lion time | state bytes/param |",
             "|---|---:|---:|---:|---:|"]
    for r in result["optimizer_rows"]:
        lines.append(f"| {r['optimizer']} | {r['step_ms_median']:.1f} | {r['step_ms_min']:.1f} | "
                     f"{r['time_vs_dslib_lion']:.2f} | {r['state_bytes_per_param']:.2f} |")
    lines += ["", f"CPU: {support['cpu']}; native bf16 instructions: {support['native_bf16']} "
              f"(flags: {', '.join(support['bf16_flags']) or 'none'}); native fp16: {support['native_fp16']}.", "",
              "| precision | train step ms (median) | x fp32 time | model |", "|---|---:|---:|---|"]
    for r in result["precision_rows"]:
        lines.append(f"| {r['precision']} | {r['step_ms_median']:.1f} | {r['time_vs_fp32']:.2f} | {r['model']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=50e6)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    optimizer_rows = time_optimizer_steps(args.params, args.rounds)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rounds": args.rounds,
              "optimizer_rows": optimizer_rows, "dslib_lion_speedup": add_ratios(optimizer_rows),
              "cpu_precision_support": cpu_precision_support(),
              "precision_rows": time_training_steps(max(3, args.rounds // 3))}
    out = outputs_dir() / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "optim.json").write_text(json.dumps(result, indent=2))
    (out / "optim.md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
