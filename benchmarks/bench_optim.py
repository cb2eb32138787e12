"""Optimizer step time at 50M and 500M parameters against the machine's memory bandwidth,
and fp32 vs bf16/fp16 training step time.

An optimizer step is memory-bound: per parameter, Lion reads p, g, m and writes p, m (5 streams
of 4 bytes), AdamW and the article's sign-Adam 7; so at the bandwidth floor Lion's step is 5/7
of AdamW's. Side by side in one run, rounds interleaved so machine noise hits every optimizer
alike: dslib Lion (default: the C++ kernel; torch.compile'd; foreach), torch AdamW (foreach,
fused), the article's sign-Adam, DeepSpeed's CPU Lion op (compiles ~90 s on first use). All
optimizers of one size step the same parameters and gradients (the values do not change the
time); above 100M parameters only the three the goals compare, to fit in memory. Memory
bandwidth is measured in the same run (machine.stream_bandwidth). Writes outputs/bench/optim.json
and outputs/bench/optim.md.

    PYTHONPATH=$PWD python benchmarks/bench_optim.py [--params 50e6 500e6] [--rounds 15]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import machine
from dslib.env import outputs_dir
from dslib.optim import ArticleSignAdam, Lion, state_bytes_per_param
from dslib.train.precision import Precision, autocast, low_precision_slowdown

LION = "dslib Lion (default: C++ kernel)"
ADAMW_FUSED = "torch AdamW (fused)"
DEEPSPEED_LION = "DeepSpeedCPULion (C++ op)"
GOAL_SET = (LION, ADAMW_FUSED, DEEPSPEED_LION)
# bytes moved per parameter at the floor: reads p, g and each state, writes p and each state
STREAMS = {"Lion": 5, "AdamW": 7, "sign-Adam": 7}


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
        LION: lambda ps: Lion(ps, lr=lion_lr, weight_decay=0.1),
        "dslib Lion (compiled, torch.compile)": lambda ps: Lion(ps, lr=lion_lr, weight_decay=0.1,
                                                                implementation="compiled"),
        "dslib Lion (foreach)": lambda ps: Lion(ps, lr=lion_lr, weight_decay=0.1, implementation="foreach"),
        "torch AdamW (foreach)": lambda ps: torch.optim.AdamW(ps, lr=adam_lr, weight_decay=0.01, foreach=True),
        ADAMW_FUSED: lambda ps: torch.optim.AdamW(ps, lr=adam_lr, weight_decay=0.01, fused=True),
        "article sign-Adam (foreach)": lambda ps: ArticleSignAdam(ps, lr=1e-5),
    }
    try:
        from deepspeed.ops.lion import DeepSpeedCPULion

        factories[DEEPSPEED_LION] = lambda ps: DeepSpeedCPULion(ps, lr=lion_lr, betas=(0.9, 0.99), weight_decay=0.1)
    except ImportError:
        pass
    return factories


def streams(name: str) -> int:
    return next(n for key, n in STREAMS.items() if key in name)


def time_optimizer_steps(n_params: float, rounds: int, warmup: int = 3) -> dict:
    """Interleaved steps of every optimizer on shared parameters; GB/s against the bandwidth
    measured just before and after (a shared host's bandwidth drifts by up to 2x in minutes)."""
    shapes = gpt_like_shapes(n_params)
    factories = optimizer_factories()
    if n_params > 100e6:
        factories = {name: make for name, make in factories.items() if name in GOAL_SET}
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    bandwidth = [machine.stream_bandwidth()["update"]["median_gbs"]]
    setups = {}
    for name, make in factories.items():
        opt = make(params)
        start = time.perf_counter()
        opt.step()  # state allocation, torch.compile, op build or load
        first_step_s = time.perf_counter() - start
        for _ in range(warmup - 1):
            opt.step()
        setups[name] = (opt, [], first_step_s)
    for _ in range(rounds):
        for name, (opt, times, _) in setups.items():
            start = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - start)
    bandwidth.append(machine.stream_bandwidth()["update"]["median_gbs"])
    bandwidth_gbs = statistics.mean(bandwidth)
    n = sum(p.numel() for p in params)
    rows = []
    for name, (opt, times, first_step_s) in setups.items():
        median = statistics.median(times)
        gbs = streams(name) * 4 * n / median / 1e9
        rows.append({"optimizer": name, "params": n, "tensors": len(shapes), "step_ms_median": 1e3 * median,
                     "step_ms_min": 1e3 * min(times), "first_step_s": first_step_s, "gbs_median": gbs,
                     "of_bandwidth": gbs / bandwidth_gbs, "streams": streams(name),
                     "state_bytes_per_param": state_bytes_per_param(opt)["total"]})
    del setups, params
    gc.collect()
    by_name = {r["optimizer"]: r for r in rows}
    ratios = {}
    for other, key in ((ADAMW_FUSED, "vs_adamw_fused"), (DEEPSPEED_LION, "vs_deepspeed_lion")):
        if other in by_name:
            for stat in ("median", "min"):
                ratios[f"lion_{key}_{stat}"] = by_name[LION][f"step_ms_{stat}"] / by_name[other][f"step_ms_{stat}"]
    return {"params": n, "tensors": len(shapes), "rounds": rounds, "rows": rows, "ratios": ratios,
            "bandwidth_gbs": bandwidth_gbs, "bandwidth_before_after_gbs": bandwidth}


def cpu_kernel_build_seconds() -> float | None:
    """Seconds to build dslib Lion's C++ kernel from nothing (fresh TORCH_EXTENSIONS_DIR, new process)."""
    code = ("import time; from dslib.optim import lion; t = time.perf_counter(); ok = lion._cpu_kernel(); "
            "print(time.perf_counter() - t if ok else 'failed')")
    with tempfile.TemporaryDirectory() as build_root:
        env = {**os.environ, "TORCH_EXTENSIONS_DIR": build_root}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    last = out.stdout.strip().splitlines()[-1:] or ["failed"]
    return None if last[0] == "failed" else float(last[0])


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
             "model": f"{n_layers} layers d{d_model} T{seq} B{batch} V{vocab}, fwd+bwd+AdamW"}
            for name, ts in times.items()]


def to_markdown(result: dict) -> str:
    bw = result["bandwidth"]
    lines = ["# Optimizer step against memory bandwidth; fp32 vs bf16/fp16", "",
             machine.machine_line(result["machine"]), "",
             "Memory bandwidth (GB/s, best / median of 7, start -> end of run): " + "; ".join(
                 f"{name} {bw['start'][name]['best_gbs']:.1f}/{bw['start'][name]['median_gbs']:.1f} -> "
                 f"{bw['end'][name]['best_gbs']:.1f}/{bw['end'][name]['median_gbs']:.1f}" for name in bw["start"])
             + ". Reference for the optimizers: `update` (a += s*b, the optimizers' pattern), the median "
             "measured before and after each size's timing.",
             "",
             f"dslib Lion's C++ kernel: built from nothing in {result['cpu_kernel_build_s']:.1f} s "
             "(then cached in TORCH_EXTENSIONS_DIR)." if result["cpu_kernel_build_s"] is not None
             else "dslib Lion's C++ kernel did not build here: the default falls back to foreach.", ""]
    for size in result["sizes"]:
        before, after = size["bandwidth_before_after_gbs"]
        lines += [f"## {size['params'] / 1e6:.1f}M parameters in {size['tensors']} tensors, "
                  f"{size['rounds']} interleaved rounds", "",
                  f"Memory bandwidth (update) before / after: {before:.1f} / {after:.1f} GB/s.", "",
                  "| optimizer | step ms (median) | step ms (min) | first step s | streams | GB/s (median) "
                  "| of bandwidth | state bytes/param |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['optimizer']} | {r['step_ms_median']:.1f} | {r['step_ms_min']:.1f} | "
                  f"{r['first_step_s']:.2f} | {r['streams']} | {r['gbs_median']:.1f} | {r['of_bandwidth']:.0%} | "
                  f"{r['state_bytes_per_param']:.2f} |" for r in size["rows"]]
        lines += ["", "Lion's step time over the others' (floor at equal GB/s: 5/7 = 0.71 of AdamW's): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in size["ratios"].items()) + ".", ""]
    slow = result["low_precision_slowdown"]
    lines += ["## Low precision on this CPU", "",
              f"Native bf16: {slow['native_bf16']}, native fp16: {slow['native_fp16']}; "
              f"dslib.train.precision.low_precision_slowdown(): bf16 {slow['bf16_vs_fp32']:.1f}x, "
              f"fp16 {slow['fp16_vs_fp32']:.1f}x fp32's time ({slow['model']}); "
              f"avoid for long runs (> 2x fp32): {', '.join(slow['avoid_for_long_runs']) or 'none'}.", "",
              "| precision | train step ms (median) | x fp32 time | model |", "|---|---:|---:|---|"]
    lines += [f"| {r['precision']} | {r['step_ms_median']:.1f} | {r['time_vs_fp32']:.2f} | {r['model']} |"
              for r in result["precision_rows"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, nargs="+", default=[50e6, 500e6])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    bandwidth = {"start": machine.stream_bandwidth()}
    sizes = [time_optimizer_steps(n, args.rounds) for n in args.params]
    bandwidth["end"] = machine.stream_bandwidth()
    result = {"machine": machine.describe(), "bandwidth": bandwidth,
              "bandwidth_gbs": statistics.mean(size["bandwidth_gbs"] for size in sizes),
              "bandwidth_reference": "update: a.add_(b, alpha=s), median, before and after each size",
              "sizes": sizes, "cpu_kernel_build_s": cpu_kernel_build_seconds(),
              "low_precision_slowdown": low_precision_slowdown("cpu"),
              "precision_rows": time_training_steps(max(3, args.rounds // 3))}
    out = outputs_dir() / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "optim.json").write_text(json.dumps(result, indent=2))
    (out / "optim.md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
