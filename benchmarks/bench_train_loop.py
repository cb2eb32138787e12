"""What the trainer's loop costs on top of a bare training step.

Measures, in one run, the step time of the same model (same initial weights, same batch
shape) trained by
  bare     forward, backward, fused AdamW step: nothing else          [baseline]
  trainer  dslib.train.Trainer.train_step: stream loader, memory, LR schedule, grad
           clipping, on-device loss/grad-norm buffers (what Trainer.fit runs each step)
Variants are interleaved round by round so machine load hits them alike. MFU uses the
model's FLOP formula (dslib.model.flops) and an fp32 matmul peak measured in this run.
Writes outputs/bench/train_loop.json and train_loop.md.

    PYTHONPATH=. python benchmarks/bench_train_loop.py [--config small] [--batch-size 8]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

import machine
from dslib.env import outputs_dir
from dslib.model import TransformerXL, flops_per_token, load_config
from dslib.plan.measure import matmul_peak
from dslib.train import TrainConfig, Trainer


class Bare:
    """The minimal loop: one fixed batch, memory carried, fused AdamW."""

    def __init__(self, model: torch.nn.Module, tokens: np.ndarray, batch_size: int, seq_len: int):
        self.model = model
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        batch = torch.from_numpy(tokens[: batch_size * (seq_len + 1)].astype(np.int64))
        self.batch = batch.view(batch_size, seq_len + 1)
        self.mems = None

    def step(self) -> None:
        out = self.model(self.batch[:, :-1], self.mems, self.batch[:, 1:])
        self.mems = out.mems
        self.opt.zero_grad(set_to_none=True)
        (out.loss + out.aux_loss).backward()
        self.opt.step()


def timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="small")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps-per-round", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    B, T = args.batch_size, config.seq_len
    steps = args.rounds * args.steps_per_round + 2
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, B * (T * (steps + 1) + 1)).astype(np.uint16)

    torch.manual_seed(0)
    bare = Bare(TransformerXL(config), tokens, B, T)
    torch.manual_seed(0)
    cfg = TrainConfig(steps=steps, batch_size=B, seq_len=T, warmup_steps=1, progress=False)
    trainer = Trainer(TransformerXL(config), cfg, tokens, device="cpu")
    variants = {"bare": bare.step, "trainer": trainer.train_step}
    peaks = [matmul_peak((1024, 2048))]
    for step in variants.values():  # warm-up, fills the memories
        step(), step()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            times[name] += [timed(step) for _ in range(args.steps_per_round)]
    peaks.append(matmul_peak((1024, 2048)))
    peak, flops = max(peaks), flops_per_token(config, with_memory=True)

    rows, base = [], statistics.median(times["bare"])
    for name, samples in times.items():
        step_s = statistics.median(samples)
        rows.append({"variant": name, "step_s": step_s, "tokens_per_s": B * T / step_s,
                     "mfu": B * T / step_s * flops / peak, "step_time_vs_bare": step_s / base})
    result = {"machine": machine.describe(), "config": args.config, "batch_size": B, "seq_len": T,
              "threads": args.threads, "matmul_peak_gflops": peak / 1e9, "steps_timed_per_variant": args.rounds * args.steps_per_round,
              "variants": rows}
    out_dir = outputs_dir() / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "train_loop.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Trainer loop overhead: `{args.config}` config, batch {B} x {T}, {args.threads} threads", "",
             f"fp32 matmul peak measured in this run: {peak / 1e9:.1f} GFLOP/s; median of "
             f"{args.rounds * args.steps_per_round} interleaved steps per variant.", "",
             machine.machine_line(result["machine"]), "",
             "| variant | step (s) | tokens/s | MFU | step time vs bare |", "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['step_s']:.3f} | {r['tokens_per_s']:.0f} | {r['mfu']:.1%} | "
              f"{r['step_time_vs_bare']:.3f}x |" for r in rows]
    (out_dir / "train_loop.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
