"""Training throughput and MFU of the Transformer-XL model on this machine.

Measures, in one run: the fp32 matmul peak (large square matmuls), then training
steps (forward, backward, AdamW) of a config for
  gpt           plain GPT of the same shape (SDPA, absolute positions)  [baseline]
  txl           Transformer-XL, no memory (relative attention only)
  txl_memory    Transformer-XL carrying memory_length cached states
  txl_compiled  txl with each block torch.compile'd (its first step includes the compile)
Variants are interleaved round by round so machine load hits them alike.
MFU = tokens/s * flops_per_token(config) / measured peak (dslib.model.flops).
Goals (issue 22): txl >= 65% MFU and at most 1.1x gpt's step time; txl_memory does
flops_per_token(with_memory) / gpt's = 1.31x gpt's FLOPs, so its step ratio is read per FLOP.
Writes outputs/bench/model.json and model.md.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python benchmarks/bench_model.py [--config small]

OMP_WAIT_POLICY=PASSIVE matters on a shared machine: spinning OpenMP threads make
2 threads many times slower than 1 when other processes compete for the cores.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import warnings

import torch

import machine
from dslib.env import outputs_dir
from dslib.model import TransformerXL, count_parameters, flops_per_token, load_config
from dslib.model.gpt import GPT
from dslib.plan.measure import matmul_peak


class Variant:
    """One model being trained step by step, carrying its memory if it has one."""

    def __init__(self, name: str, model: torch.nn.Module, batch_size: int, seq_len: int,
                 vocab: int, flops: float, compiled: bool = False):
        self.name, self.model, self.flops = name, model, flops
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        if compiled:  # block by block: the loop over blocks and the memory stay eager
            for i, block in enumerate(model.blocks):
                model.blocks[i] = torch.compile(block)
        self.batch = torch.randint(0, vocab, (batch_size, seq_len + 1))
        self.mems = None
        self.step_times: list[float] = []
        self.first_step_s = 0.0

    def step(self) -> float:
        idx, targets = self.batch[:, :-1], self.batch[:, 1:]
        start = time.perf_counter()
        if isinstance(self.model, TransformerXL):
            out = self.model(idx, self.mems, targets)
            self.mems = out.mems
        else:
            out = self.model(idx, targets=targets)
        self.opt.zero_grad(set_to_none=True)
        (out.loss + out.aux_loss).backward()
        self.opt.step()
        return time.perf_counter() - start


@torch.no_grad()
def gated_inference(config, batch_size: int, granularity: str, repeats: int = 3) -> dict:
    """Eval forward time of a gated model: rejected rows skipped versus computed and masked.

    The gate is untrained with random decisions (about half kept per layer): this
    measures what skipping saves at a given skip fraction, not what a gate learns.
    """
    torch.manual_seed(0)  # the same random gate whichever variants ran before
    gate = config.gate.model_copy(update={"enabled": True, "granularity": granularity})
    model = TransformerXL(config.model_copy(update={"gate": gate, "memory_length": 0})).eval()
    for block in model.blocks:
        torch.nn.init.zeros_(block.gate.fc_out.bias)
        torch.nn.init.normal_(block.gate.fc_out.weight, std=1.0)
    idx = torch.randint(0, config.vocab_size, (batch_size, config.seq_len))
    times = {True: [], False: []}
    for _ in range(repeats):
        for skip in (True, False):
            model.set_skip_compute(skip)
            start = time.perf_counter()
            out = model(idx)
            times[skip].append(time.perf_counter() - start)
    skip_s, dense_s = min(times[True]), min(times[False])
    return {"granularity": granularity, "skip_fraction": float(out.stats["gate_skip_fraction"]),
            "forward_s_skipping": skip_s, "forward_s_masked": dense_s, "time_ratio": skip_s / dense_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="small")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    # txl_compiled's first step is a cold compile: an empty inductor cache, not an earlier run's
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-model-inductor-")
    # dynamo traces through the cached causal mask (functools.lru_cache) and says so once per shape
    warnings.filterwarnings("ignore", message=".*lru_cache.*")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = load_config(args.config)
    T, B = config.seq_len, args.batch_size
    variants = [
        Variant("gpt", GPT(config), B, T, config.vocab_size,
                flops_per_token(config, with_memory=False, relative_attention=False)),
        Variant("txl", TransformerXL(config.model_copy(update={"memory_length": 0})),
                B, T, config.vocab_size, flops_per_token(config, with_memory=False)),
        Variant("txl_memory", TransformerXL(config), B, T, config.vocab_size,
                flops_per_token(config, with_memory=True)),
        Variant("txl_compiled", TransformerXL(config.model_copy(update={"memory_length": 0})),
                B, T, config.vocab_size, flops_per_token(config, with_memory=False), compiled=True),
    ]
    load_before = os.getloadavg()[0]
    peaks = [matmul_peak()]
    for v in variants:  # warm-up (torch.compile's compile); txl_memory also fills its memory
        v.first_step_s = v.step()
        v.step()
    for _ in range(args.rounds):
        for v in variants:
            v.step_times += [v.step() for _ in range(args.steps_per_round)]
    gated = [gated_inference(config, B, g) for g in ("sequence", "token")]
    peaks.append(matmul_peak())
    peak = max(peaks)

    rows, base = [], None
    for v in variants:
        step_s = statistics.median(v.step_times)
        tok_s = B * T / step_s
        base = base or step_s
        rows.append({
            "variant": v.name, "step_s": step_s, "tokens_per_s": tok_s,
            "gflop_per_token": v.flops / 1e9, "achieved_gflops": tok_s * v.flops / 1e9,
            "mfu": tok_s * v.flops / peak, "step_time_vs_gpt": step_s / base,
            "flops_vs_gpt": v.flops / variants[0].flops, "first_step_s": v.first_step_s,
        })
    by_name = {r["variant"]: r for r in rows}
    # steps a run must last before compiling pays for its compile (inf: it never does)
    compiled, eager = by_name["txl_compiled"], by_name["txl"]
    saved_s = eager["step_s"] - compiled["step_s"]
    compile_s = compiled["first_step_s"] - eager["first_step_s"]
    break_even = compile_s / saved_s if saved_s > 0 else float("inf")
    result = {
        "machine": machine.describe(), "compile_s": compile_s, "compile_break_even_steps": break_even,
        "config": config.model_dump(), "batch_size": B, "threads": args.threads,
        "parameters": count_parameters(config), "matmul_peak_gflops": peak / 1e9,
        "matmul_peaks_gflops": [p / 1e9 for p in peaks], "variants": rows,
        "gated_inference": gated,
        "steps_timed_per_variant": args.rounds * args.steps_per_round,
        # other processes on the machine distort every number: read them with the load
        "load_average_1min": [load_before, os.getloadavg()[0]],
        # PASSIVE keeps OpenMP threads from spinning: on a loaded machine the default
        # spinning makes 2 threads many times slower than 1
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }
    out_dir = outputs_dir() / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# Model training throughput: `{args.config}` config, batch {B} x {T} tokens, "
        f"{args.threads} threads",
        "",
        f"fp32 matmul peak measured in this run: {peak / 1e9:.1f} GFLOP/s "
        f"(start/end: {', '.join(f'{p / 1e9:.1f}' for p in peaks)}); "
        f"{count_parameters(config) / 1e6:.2f}M parameters; median of "
        f"{args.rounds * args.steps_per_round} steps per variant; 1-min load average "
        f"{result['load_average_1min'][0]:.1f} -> {result['load_average_1min'][1]:.1f} on "
        f"{os.cpu_count()} CPUs; OMP_WAIT_POLICY={result['omp_wait_policy']}.",
        "", machine.machine_line(result["machine"]), "",
        "| variant | step (s) | tokens/s | GFLOP/token | GFLOP/s | MFU | step time vs gpt | FLOPs vs gpt "
        "| first step (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['step_s']:.3f} | {r['tokens_per_s']:.0f} | "
            f"{r['gflop_per_token']:.4f} | {r['achieved_gflops']:.1f} | {r['mfu']:.1%} | "
            f"{r['step_time_vs_gpt']:.2f}x | {r['flops_vs_gpt']:.2f}x | {r['first_step_s']:.1f} |"
        )
    lines += ["", f"torch.compile of the blocks: {compile_s:.1f} s of compile on the first step for "
              f"{saved_s * 1e3:.0f} ms saved per step: it pays after {break_even:.0f} steps."]
    lines += [
        "",
        "Gated inference (eval forward, untrained gate with random decisions): time with the "
        "rejected rows skipped, relative to computing every row and masking.",
        "",
        "| granularity | skipped fraction | forward skipping (s) | forward masked (s) | time ratio |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {g['granularity']} | {g['skip_fraction']:.0%} | {g['forward_s_skipping']:.3f} | "
              f"{g['forward_s_masked']:.3f} | {g['time_ratio']:.2f} |" for g in gated]
    (out_dir / "model.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)


if __name__ == "__main__":
    main()
