"""One table of every benchmark ratio against its goal, with the machine that produced it.

Reads the JSON each bench_*.py wrote into outputs/bench/ (run them first: `make bench` does)
and writes outputs/bench/summary.md and summary.json. A goal is a ratio measured side by side
in one run; "no" is an honest result, not an error (the exit status is 0 either way).

    PYTHONPATH=. python benchmarks/summary.py
"""
from __future__ import annotations

import json
import operator

from dslib.env import outputs_dir

AT_MOST, AT_LEAST = ("<=", operator.le), (">=", operator.ge)


def optim_rows(result: dict) -> list[dict]:
    rows = []
    for size in result["sizes"]:
        label = f"{size['params'] / 1e6:.0f}M params"
        for stat in ("median", "min"):
            rows.append(goal("optimizer", f"Lion / fused AdamW step, {stat}, {label}",
                             size["ratios"].get(f"lion_vs_adamw_fused_{stat}"), AT_MOST, 0.75))
            rows.append(goal("optimizer", f"Lion / DeepSpeedCPULion step, {stat}, {label}",
                             size["ratios"].get(f"lion_vs_deepspeed_lion_{stat}"), AT_MOST, 1.2))
        lion = next(r for r in size["rows"] if r["optimizer"].startswith("dslib Lion (default"))
        rows.append(goal("optimizer", f"Lion GB/s / memory bandwidth, {label}", lion["of_bandwidth"], None, None))
    slow = result["low_precision_slowdown"]
    for p in ("bf16", "fp16"):
        rows.append(goal("precision", f"{p} autocast step / fp32 step ({slow['model']})", slow[f"{p}_vs_fp32"],
                         None, None))
    return rows


def model_rows(result: dict) -> list[dict]:
    by_name = {r["variant"]: r for r in result["variants"]}
    rows = []
    for name in ("txl", "txl_memory"):
        r = by_name[name]
        rows.append(goal("model", f"{name} MFU", r["mfu"], AT_LEAST, 0.65))
        rows.append(goal("model", f"{name} step / gpt step (FLOPs {r['flops_vs_gpt']:.2f}x gpt's)",
                         r["step_time_vs_gpt"], AT_MOST, 1.1))
    r = by_name["txl_memory"]
    rows.append(goal("model", "txl_memory step / gpt step, per FLOP", r["step_time_vs_gpt"] / r["flops_vs_gpt"],
                     AT_MOST, 1.1))
    rows.append(goal("model", "txl_compiled step / txl step (compile pays after "
                     f"{result['compile_break_even_steps']:.0f} steps)",
                     by_name["txl_compiled"]["step_s"] / by_name["txl"]["step_s"], None, None))
    return rows


def dedup_rows(result: dict) -> list[dict]:
    rows = []
    for group in ("near_dedup", "translations"):
        for r in result.get(group, []):
            if r.get("datasketch_s") is None:
                continue
            label = f"{group} {r['docs']} docs"
            rows.append(goal("dedup", f"speed vs datasketch, {label}", r["speedup"], AT_LEAST, 3.0))
            rows.append(goal("dedup", f"recall - datasketch's, {label}", r["ours_recall"] - r["datasketch_recall"],
                             AT_LEAST, 0.0))
    return rows


def train_loop_rows(result: dict) -> list[dict]:
    by_name = {r["variant"]: r for r in result["variants"]}
    return [goal("train loop", "Trainer step / bare step", by_name["trainer"]["step_time_vs_bare"], None, None)]


def goal(bench: str, quantity: str, value: float | None, comparison, target: float | None) -> dict:
    holds = None if value is None or comparison is None else comparison[1](value, target)
    return {"benchmark": bench, "quantity": quantity, "measured": value,
            "goal": None if comparison is None else f"{comparison[0]} {target:g}", "holds": holds}


READERS = {"optim.json": optim_rows, "model.json": model_rows, "dedup.json": dedup_rows,
           "train_loop.json": train_loop_rows}


def main() -> None:
    bench_dir = outputs_dir() / "bench"
    results = {name: json.loads((bench_dir / name).read_text()) for name in READERS if (bench_dir / name).exists()}
    rows = [row for name, result in results.items() for row in READERS[name](result)]
    machine = next((r["machine"] for r in results.values() if "machine" in r), {})
    peak = results.get("model.json", {}).get("matmul_peak_gflops")
    bandwidth = results.get("optim.json", {}).get("bandwidth_gbs")
    lines = ["# Benchmarks against their goals", "",
             f"Machine: {machine.get('cpu', '?')}, kind **{machine.get('kind', '?')}** (flags: "
             f"{', '.join(machine.get('cpu_flags', [])) or '?'}), {machine.get('cpus', '?')} CPUs, "
             f"{machine.get('threads', '?')} torch threads, torch {machine.get('torch', '?')}; measured fp32 matmul "
             f"peak {peak or float('nan'):.1f} GFLOP/s, memory bandwidth {bandwidth or float('nan'):.1f} GB/s "
             "(a += s*b, the optimizers' access pattern).", "",
             "| benchmark | quantity | measured | goal | holds |", "|---|---|---:|---|---|"]
    for r in rows:
        measured = "-" if r["measured"] is None else f"{r['measured']:.3g}"
        holds = {True: "yes", False: "**no**", None: ""}[r["holds"]]
        lines.append(f"| {r['benchmark']} | {r['quantity']} | {measured} | {r['goal'] or ''} | {holds} |")
    missing = [name for name in READERS if name not in results]
    if missing:
        lines += ["", f"Not run: {', '.join(missing)}."]
    unread = sorted(p.name for p in bench_dir.glob("*.json") if p.name not in READERS and p.name != "summary.json")
    if unread:  # a benchmark without goals here: its own markdown table has its numbers
        lines += ["", f"Also in {bench_dir}, without goals in this table: {', '.join(unread)}."]
    (bench_dir / "summary.json").write_text(json.dumps({"machine": machine, "matmul_peak_gflops": peak,
                                                        "bandwidth_gbs": bandwidth, "rows": rows}, indent=2))
    (bench_dir / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
