"""What DeepSeek's parts cost on this machine (chapter 12), measured side by side in one run.

  moe       one MoE layer's forward + backward against a dense SwiGLU MLP with the same
            activated parameters [baseline], for each dispatch:
              grouped_mm  sort the assignments by expert, one torch grouped matmul per weight
              loop        sort by expert, one matmul per expert on its contiguous slice
              mask        no sort: per expert, find its tokens with a mask, gather, scatter back
              experts     the grouped matmuls and the shared expert alone, on tokens sorted
                          beforehand: what is left without routing, sorting, gathering and
                          adding back (a floor, not a dispatch)
  decode    one token's attention with a filled cache of S tokens: MLA absorbed, MLA naive
            (cached latents up-projected every step), and MHA of the same width and heads
  mfu       training steps (forward, backward, fused AdamW, bias update) of the dense GPT
            baseline and the DeepSeek-style model (with and without MTP), tokens/s times the
            FLOPs formula (dslib.model.deepseek_flops) over the fp32 matmul peak measured here
Variants are interleaved round by round so machine load hits them alike. The MoE part runs
twice, in child processes, with OpenMP's idle threads sleeping (OMP_WAIT_POLICY=PASSIVE, what
the book sets for its multi-process runs) and spinning (OpenMP's default): the MoE layer is many
small parallel regions, and a sleeping thread's wake-up is paid at each (libgomp reads the policy
when torch loads, so one process cannot compare both). Run it alone on the machine.
Writes outputs/bench/deepseek.json and deepseek.md.

    PYTHONPATH=. python benchmarks/bench_deepseek.py
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Callable

import torch

# read before dslib's import sets its default: libgomp took the policy when torch loaded
OMP_WAIT_POLICY_AT_LOAD = os.environ.get("OMP_WAIT_POLICY", "default")

import torch.nn.functional as F  # noqa: E402

from dslib.env import outputs_dir  # noqa: E402
from dslib.model import (AttentionConfig, DeepSeekModel, MoEConfig, SwiGLU, count_deepseek_parameters,
                         deepseek_flops_per_token, dense_equivalent, load_deepseek_config)  # noqa: E402
from dslib.model.moe import DeepSeekMoE  # noqa: E402
from dslib.plan.measure import interleaved_seconds, matmul_peak  # noqa: E402
from dslib.studies.deepseek_arch import decode_seconds  # noqa: E402

MOE_SHAPES = {  # name: (hidden, MoE settings); deepseek_small trains on 2048 tokens per step (8 x 256)
    "small": (256, dict(n_routed_experts=16, n_shared_experts=1, top_k=2, moe_intermediate_size=128)),
    "wide": (512, dict(n_routed_experts=16, n_shared_experts=1, top_k=2, moe_intermediate_size=256)),
    # V3's proportions: expert width / hidden 2048 / 7168 ~ 0.29, 8 of 256 routed + 1 shared
    "v3_like": (512, dict(n_routed_experts=32, n_shared_experts=1, top_k=4, moe_intermediate_size=128)),
}
ATTENTION_SHAPES = {  # name: (hidden, MLA settings, MHA head_dim)
    "deepseek_small": (256, dict(num_heads=4, q_lora_rank=128, kv_lora_rank=128, qk_nope_head_dim=48,
                                 qk_rope_head_dim=16, v_head_dim=64), 64),
    "v3_heads": (2048, dict(num_heads=16, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
                            qk_rope_head_dim=64, v_head_dim=128), 128),  # V3's per-head shape, 16 heads
}


def mask_dispatch(layer: DeepSeekMoE, x: torch.Tensor) -> torch.Tensor:
    """The unsorted alternative: per expert, the tokens that chose it found by a mask."""
    routing, w = layer.router(x), layer.experts
    y = layer.shared(x)
    for e in range(w.down.size(0)):
        token, slot = (routing.experts == e).nonzero(as_tuple=True)
        if token.numel():
            gate, up = (x[token] @ w.gate_up[e]).chunk(2, dim=-1)
            out = (F.silu(gate) * up) @ w.down[e]
            y = y.index_add(0, token, out * routing.weights[token, slot, None])
    return y


def experts_only(layer: DeepSeekMoE, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    """The expert matmuls alone: the routing, sort and gather done once, outside the timing."""
    with torch.no_grad():
        routing = layer.router(x)
        counts = torch.bincount(routing.experts.flatten(), minlength=layer.config.n_routed_experts)
        order = routing.experts.flatten().argsort(stable=True)
        xs, gates = x[order // layer.config.top_k], routing.weights.flatten()[order, None]
    xs.requires_grad_(True)
    sorted_grad = grad[order // layer.config.top_k]

    def step():
        layer.experts._grouped(xs, gates, counts).backward(sorted_grad)
        layer.shared(x).backward(grad)
    return step


def as_in_training(step: Callable[[], None], *modules: torch.nn.Module | torch.Tensor) -> Callable[[], None]:
    """`step`, then the gradients dropped as the optimizer's zero_grad(set_to_none=True) does: each
    backward writes fresh gradients instead of adding into the last ones (for the MoE, E experts'
    worth of weights, far more than the dense layer's)."""
    def run() -> None:
        step()
        for m in modules:
            if isinstance(m, torch.Tensor):
                m.grad = None
            else:
                m.zero_grad(set_to_none=True)
    return run


def bench_moe(token_counts: list[int], rounds: int, per_round: int) -> list[dict]:
    rows = []
    for tokens in token_counts:
        for name, (d, settings) in MOE_SHAPES.items():
            layer = DeepSeekMoE(d, MoEConfig(**settings))
            for p in layer.parameters():
                torch.nn.init.normal_(p, std=0.02)
            active = (settings["top_k"] + settings["n_shared_experts"]) * settings["moe_intermediate_size"]
            # the same activated expert weights; the router's E x d (under 1%) is not matched, to keep
            # the dense width a multiple of 64 (odd widths alone make MKL's matmuls slower here)
            dense = SwiGLU(d, active)
            x = torch.randn(tokens, d, requires_grad=True)
            grad = torch.randn(tokens, d)

            def moe_step(dispatch):
                def step():
                    layer.experts.dispatch = dispatch
                    y = mask_dispatch(layer, x) if dispatch == "mask" else layer(x[None])[0].view_as(x)
                    y.backward(grad)
                return step
            fns = {"dense": lambda: dense(x).backward(grad)}
            fns.update({f"moe_{k}": moe_step(k) for k in ("grouped_mm", "loop", "mask")})
            fns["experts_only"] = experts_only(layer, x, grad)
            seconds = interleaved_seconds({k: as_in_training(f, dense, layer, x) for k, f in fns.items()},
                                          rounds, per_round)
            for variant, s in seconds.items():
                rows.append({"shape": name, "hidden": d, **settings, "tokens": tokens, "variant": variant,
                             "fwd_bwd_ms": 1e3 * s, "vs_dense": s / seconds["dense"]})
    return rows


def bench_moe_per_policy(args: argparse.Namespace) -> list[dict]:
    """bench_moe in one child process per OpenMP wait policy (PASSIVE, then OpenMP's default)."""
    rows = []
    for policy in ("PASSIVE", "default"):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if policy != "default":
            env["OMP_WAIT_POLICY"] = policy
        cmd = [sys.executable, __file__, "--moe-only", "--threads", str(args.threads), "--rounds", str(args.rounds),
               "--per-round", str(args.per_round), "--moe-tokens", *map(str, args.moe_tokens)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        rows += [{**r, "omp_wait_policy": policy} for r in json.loads(out.splitlines()[-1])]
    return rows


def bench_decode(contexts: list[int], batch_size: int, rounds: int, per_round: int) -> list[dict]:
    rows = []
    for name, (d, settings, head_dim) in ATTENTION_SHAPES.items():
        config = AttentionConfig(**settings, head_dim=head_dim)
        rows += [{"shape": name, **r} for r in decode_seconds(d, config, contexts, batch_size, rounds, per_round)]
    return rows


class TrainVariant:
    def __init__(self, config, batch_size: int):
        self.config, self.model = config, DeepSeekModel(config)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=True)
        self.batch = torch.randint(0, config.vocab_size, (batch_size, config.seq_len + 1))
        self.flops = sum(deepseek_flops_per_token(config).values())

    def step(self) -> None:
        out = self.model(self.batch[:, :-1], targets=self.batch[:, 1:])
        self.opt.zero_grad(set_to_none=True)
        (out.loss + out.aux_loss).backward()
        self.opt.step()
        self.model.update_router_biases()


def bench_mfu(config_name: str, batch_size: int, rounds: int, per_round: int, peak: float) -> list[dict]:
    config = load_deepseek_config(config_name)
    variants = {"dense_gpt": TrainVariant(dense_equivalent(config, multiple_of=64), batch_size),
                "deepseek_no_mtp": TrainVariant(config.model_copy(update={"mtp": config.mtp.model_copy(
                    update={"depth": 0})}), batch_size),
                "deepseek": TrainVariant(config, batch_size)}
    seconds = interleaved_seconds({k: v.step for k, v in variants.items()}, rounds, per_round)
    rows = []
    for name, v in variants.items():
        tok_s = batch_size * config.seq_len / seconds[name]
        rows.append({"variant": name, "step_s": seconds[name], "tokens_per_s": tok_s,
                     "activated_params": count_deepseek_parameters(v.config)["activated"],
                     "total_params": count_deepseek_parameters(v.config)["total"],
                     "mflop_per_token": v.flops / 1e6, "mfu": tok_s * v.flops / peak,
                     "step_vs_dense": seconds[name] / seconds["dense_gpt"]})
    return rows


def markdown(result: dict) -> str:
    lines = [f"# DeepSeek parts on this machine: {result['threads']} threads, fp32 matmul peak "
             f"{result['matmul_peak_gflops']:.1f} GFLOP/s (start/end "
             f"{', '.join(f'{p:.1f}' for p in result['matmul_peaks_gflops'])}); 1-min load "
             f"{result['load_average_1min'][0]:.1f} -> {result['load_average_1min'][1]:.1f} on {os.cpu_count()} CPUs; "
             f"decode and MFU with OpenMP wait policy {result['omp_wait_policy']}",
             "", "## MoE layer forward + backward against a dense SwiGLU of the same activated parameters", "",
             "| OpenMP wait | tokens | shape | d | experts (shared + routed, top-k) | expert width | variant | ms | vs dense |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['omp_wait_policy']} | {r['tokens']} | {r['shape']} | {r['hidden']} | "
              f"{r['n_shared_experts']} + {r['n_routed_experts']}, "
              f"top-{r['top_k']} | {r['moe_intermediate_size']} | {r['variant']} | {r['fwd_bwd_ms']:.2f} | "
              f"{r['vs_dense']:.2f}x |" for r in result["moe"]]
    lines += ["", f"## Attention decode, one token against a filled cache, batch {result['decode'][0]['batch_size']}",
              "", "| shape | context | variant | ms/token | vs MHA | cache bytes/token/layer |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['shape']} | {r['context']} | {r['variant']} | {r['ms_per_token']:.3f} | {r['vs_mha']:.2f}x | "
              f"{r['cache_bytes_per_token_layer']} |" for r in result["decode"]]
    lines += ["", f"## Training MFU, `{result['config']}`, batch {result['batch_size']}", "",
              "| variant | total / activated params (M) | step (s) | tokens/s | MFLOP/token | MFU | step vs dense |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['total_params'] / 1e6:.2f} / {r['activated_params'] / 1e6:.2f} | "
              f"{r['step_s']:.3f} | {r['tokens_per_s']:.0f} | {r['mflop_per_token']:.1f} | {r['mfu']:.1%} | "
              f"{r['step_vs_dense']:.2f}x |" for r in result["mfu"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="deepseek_small")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--moe-tokens", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--contexts", type=int, nargs="+", default=[16, 64, 256, 1024, 4096])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--moe-only", action="store_true", help="print bench_moe's rows as JSON (a child run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.moe_only:
        print(json.dumps(bench_moe(args.moe_tokens, args.rounds, args.per_round)))
        return
    load_before = os.getloadavg()[0]
    peaks = [matmul_peak()]
    moe = bench_moe_per_policy(args)
    decode = bench_decode(args.contexts, 1, args.rounds, 10 * args.per_round)  # short calls: more of them
    mfu_rows = bench_mfu(args.config, args.batch_size, args.rounds, args.per_round, peaks[0])
    peaks.append(matmul_peak())
    peak = max(peaks)
    for r in mfu_rows:  # against the best peak of the run
        r["mfu"] = r["tokens_per_s"] * r["mflop_per_token"] * 1e6 / peak
    result = {"config": args.config, "batch_size": args.batch_size, "threads": args.threads,
              "matmul_peak_gflops": peak / 1e9, "matmul_peaks_gflops": [p / 1e9 for p in peaks],
              "moe": moe, "decode": decode, "mfu": mfu_rows, "timed_per_variant": args.rounds * args.per_round,
              "load_average_1min": [load_before, os.getloadavg()[0]],
              "omp_wait_policy": OMP_WAIT_POLICY_AT_LOAD, "torch": torch.__version__}
    out_dir = outputs_dir() / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "deepseek.json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    (out_dir / "deepseek.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
