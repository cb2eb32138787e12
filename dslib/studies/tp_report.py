"""Chapter 06's tables and plots from tp_study.chapter_studies results (group size -> dict)."""
from __future__ import annotations

from typing import Any

from dslib import viz

KB = 2**10
# sp_study_rank's run keys -> the names tables and plots show
MODES = {"tp": "tensor parallel", "tp+sp keep gathered": "+ sequence parallel",
         "tp+sp": "+ sequence parallel, re-gather in backward"}


def equality_rows(studies: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Max |difference| to the single process, per group size and path."""
    rows = []
    for size, study in studies.items():
        runs = [(r["path"], r) for r in study["equality"]] + [
            (f"explicit {MODES[key]}", study["sequence"][key]) for key in MODES if key != "tp"]
        for path, r in runs:
            rows.append({"ranks": size, "path": path, "logits": r["max_abs_diff_logits"],
                         "loss": r["loss_diff"], "grads": r["max_abs_diff_grads"],
                         "largest grad": r["max_abs_diff_grad_max"], "grads compared": r["max_abs_diff_grads_compared"]})
    return rows


def comm_rows(studies: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Bytes the explicit ops moved per rank in one forward+backward, by collective."""
    ops = sorted({op for study in studies.values() for key in MODES for op in study["sequence"][key]["comm_bytes"]})
    rows = []
    for size, study in studies.items():
        tp = next(r for r in study["equality"] if r["path"] == "explicit")
        for key, mode in MODES.items():
            run = study["sequence"][key]
            rows.append({"ranks": size, "mode": mode, **{op: run["comm_bytes"].get(op, 0) / KB for op in ops},
                         "total tensor KiB": run["comm_bytes_total"] / KB,
                         "ring KiB sent per rank": run["comm_ring_bytes_total"] / KB,
                         "Megatron formula KiB": tp["comm_bytes_formula"] / KB if key == "tp" else None})
    return rows


def memory_rows(studies: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Saved-for-backward activation bytes per rank (rank 0; all ranks are equal here)."""
    rows = []
    for size, study in sorted(studies.items()):
        seq = study["sequence"]
        single = seq["single_process_saved_bytes"]
        if not rows:
            rows.append({"ranks": 1, "mode": "single process", "saved KiB per rank": single / KB, "vs single": 1.0})
        for key, mode in MODES.items():
            saved = seq[key]["saved_bytes_per_rank"][0]
            rows.append({"ranks": size, "mode": mode, "saved KiB per rank": saved / KB, "vs single": saved / single})
    return rows


def plot_saved_activations(rows: list[dict[str, Any]]):
    fig, ax = viz.new_figure()
    for mode, marker in zip(MODES.values(), "osD"):
        points = [(1, rows[0]["saved KiB per rank"])] + [(r["ranks"], r["saved KiB per rank"]) for r in rows
                                                          if r["mode"] == mode]
        ax.plot(*zip(*points), marker=marker, label=mode)
    ax.set_xscale("log", base=2)
    sizes = sorted({r["ranks"] for r in rows})
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set_xlabel("group size (ranks)")
    ax.set_ylabel("saved activations per rank (KiB)")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.set_title("Activation bytes autograd saves for backward, per rank")
    return fig


def timing_rows(studies: dict[int, dict[str, Any]], single: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [single] + [study["timing"] for _, study in sorted(studies.items())]
    return [{"tp": r["tp"], "step_s": r["step_s"], "vs tp=1": r["step_s"] / single["step_s"],
             "params per rank": r["params_per_rank"], "ring KiB sent per step": r["comm_ring_bytes_per_step"] / KB}
            for r in rows]


def plot_megatron_split(hidden: int, intermediate: int, tp: int, tokens: int):
    """Megatron's MLP on ``tp`` ranks with the chapter model's shapes: f (identity forward, all-reduce
    backward) -> column-parallel fc_in [h, 4h/tp] per rank -> GeLU, local -> row-parallel fc_out
    [4h/tp, h] -> g (all-reduce forward, identity backward)."""
    import matplotlib.patches as patches

    fig, ax = viz.new_figure(width=11, height=1.2 + 1.3 * tp)
    colors = ["tab:blue", "tab:green", "tab:purple", "tab:brown"]
    shard = intermediate // tp
    ax.add_patch(patches.Rectangle((0, 0), 1.2, tp * 1.3, color="lightgray"))
    ax.text(0.6, tp * 0.65, f"X\n[{tokens}, {hidden}]\n(every rank)", ha="center", va="center", fontsize=8)
    for x, name, fwd, bwd in ((1.6, "f", "identity", "all-reduce"), (9.7, "g", "all-reduce", "identity")):
        ax.add_patch(patches.Circle((x + 0.3, tp * 0.65), 0.35, color="gold"))
        ax.text(x + 0.3, tp * 0.65, name, ha="center", va="center", fontsize=12, weight="bold")
        ax.text(x + 0.3, tp * 0.65 - 0.75, f"fwd: {fwd}\nbwd: {bwd}", ha="center", va="top", fontsize=7)
    for r in range(tp):
        y, c = (tp - 1 - r) * 1.3 + 0.15, colors[r % len(colors)]
        for x, w, label in ((2.6, 1.6, f"A{r} (column)\n[{hidden}, {shard}]"),
                            (4.6, 1.4, f"Y{r} = GeLU(X A{r})\n[{tokens}, {shard}]"),
                            (6.4, 1.6, f"B{r} (row)\n[{shard}, {hidden}]")):
            ax.add_patch(patches.Rectangle((x, y), w, 1.0, color=c, alpha=0.35 if x == 4.6 else 0.8))
            ax.text(x + w / 2, y + 0.5, label, ha="center", va="center", fontsize=7)
        ax.text(8.15, y + 0.5, f"rank {r}: Y{r} B{r}\npartial [{tokens}, {hidden}]", va="center", fontsize=7)
    ax.text(11.7, tp * 0.65, f"Z = sum of\npartials\n[{tokens}, {hidden}]", ha="center", va="center", fontsize=8)
    ax.set(xlim=(-0.2, 12.6), ylim=(-1.4, tp * 1.3 + 0.2),
           title=f"Megatron MLP on {tp} ranks: column split of fc_in, row split of fc_out (h={hidden}, 4h={intermediate})")
    ax.axis("off")
    return fig
