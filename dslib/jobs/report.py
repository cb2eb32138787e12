"""The cookbook report, built only from run records (metrics.json of each run directory).

One section per chapter: status, wall time, figures, metrics and tables; before them the
claims ledger: one row per claim with the verdict the claims engine computed from every
chapter's evidence, then each claim's evidence rows, marked where they cannot decide (smoke,
failed or interactive runs, too few seeds, modelled where the claim is about a measurement).
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dslib import claims
from dslib.jobs.budgets import budget_rows
from dslib.jobs.record import METRICS_FILE, read_record

MAX_TABLE_ROWS = 25
MAX_EVIDENCE_ROWS = 12  # per claim; the deciding and default rows first, the rest in metrics.json


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict[str, Any]], max_rows: int = MAX_TABLE_ROWS) -> str:
    if not rows:
        return "_(empty)_\n"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows[:max_rows]]
    if len(rows) > max_rows:
        lines.append(f"\n_{len(rows) - max_rows} more rows in metrics.json_")
    return "\n".join(lines) + "\n"


def chapter_section(run_dir: Path, record: dict[str, Any], base: Path) -> str:
    info = record.get("run", {})
    stem = record.get("stem") or run_dir.name
    status = info.get("status", "missing")
    out = [f"## {info.get('title', stem)}\n",
           f"`{stem}` · status **{status}** · profile `{info.get('profile', '?')}` · "
           f"{info.get('wall_s', '?')} s · commit `{str(info.get('git_commit', ''))[:10]}`"
           f"{' (dirty tree)' if info.get('git_dirty') else ''}\n"]
    if info.get("error"):
        out.append(f"**Failed:** `{info['error']}` (executed notebook: `{run_dir / (stem + '.ipynb')}`)\n")
    for fig in record.get("figures", []):
        rel = (run_dir / fig["path"]).relative_to(base) if (run_dir / fig["path"]).is_relative_to(base) \
            else run_dir / fig["path"]
        out.append(f"![{fig['name']}]({rel})\n\n{fig.get('caption', '')}\n")
    metrics = record.get("metrics", {})
    if metrics:
        out.append("### Metrics\n")
        out.append(markdown_table([{"metric": k, "value": v["value"], "unit": v.get("unit", ""),
                                    "note": v.get("note", "")} for k, v in metrics.items()]))
    for name, rows in record.get("tables", {}).items():
        out.append(f"### {name}\n")
        out.append(markdown_table(rows))
    return "\n".join(out)


def _value_text(row: claims.Evidence) -> str:
    return ", ".join(f"{name} {value:.4g}" for name, value in row.values.items()) + (f" {row.unit}" if row.unit else "")


def _evidence_table(entry: claims.Entry) -> str:
    order = sorted(range(len(entry.rows)), key=lambda i: (entry.decision.status[i] not in ("meets", "misses"),
                                                         not entry.rows[i].default,
                                                         entry.decision.status[i] != "meets"))
    rows = [{"chapter": (r := entry.rows[i]).chapter, "value": _value_text(r),
             "conditions": ", ".join(f"{k}={v}" for k, v in r.conditions.items()) or "-",
             "kind": r.kind + (" (default)" if r.default else ""), "profile": r.profile or "-",
             "seeds": r.seeds, "run": r.run_dir, "commit": r.commit or "-",
             "counts as": entry.decision.status[i], "note": r.note} for i in order]
    table = markdown_table(rows, max_rows=MAX_EVIDENCE_ROWS)
    return table.replace("more rows in metrics.json", "more evidence rows in the run records")


def claims_ledger(records: dict[Path, dict[str, Any]]) -> str:
    """The ledger: one row per claim (verdict and its reason), then each claim's evidence rows."""
    entries = claims.merge(records)
    summary = [{"claim": e.claim.claim, "id": e.claim.id, "source": e.claim.source,
                "checked in": ", ".join(e.chapters) or "-", "verdict": e.decision.headline,
                "reason": e.decision.reason if e.rows else e.claim.check} for e in entries]
    out = ["## Claims ledger\n",
           "Verdicts are computed by the claims engine (`dslib.claims`) from the evidence rows below and "
           "each claim's definition in `configs/claims.yaml`. Only rows of full runs (not smoke, failed or "
           "interactive) with enough seeds decide; the `counts as` column says why a row does not.\n",
           markdown_table(summary, max_rows=len(summary))]
    for e in entries:
        if e.rows:
            needs = (f"{e.claim.evidence.seeds} seed(s), "
                     + ("measured or modelled" if e.claim.evidence.modelled_decides else "measured"))
            out += [f"### {e.claim.id}: {e.decision.headline}\n",
                    f"{e.claim.claim} Compared: {e.claim.describe()}; a verdict needs {needs} rows"
                    f"{'' if e.claim.stated_conditions else '; the source states no setting'}. "
                    f"{e.decision.reason}.\n", _evidence_table(e)]
    return "\n".join(out)


def run_wall_times(records: dict[Path, dict[str, Any]]) -> tuple[dict[str, float], str]:
    """(stem -> wall seconds, profile) of the runs that finished; the profile of the first."""
    walls = {r.get("stem", d.name): r["run"]["wall_s"] for d, r in records.items() if "wall_s" in r.get("run", {})}
    profiles = [r["run"]["profile"] for r in records.values() if "profile" in r.get("run", {})]
    return walls, profiles[0] if profiles else ""


def budgets_section(records: dict[Path, dict[str, Any]]) -> str:
    """Each notebook's wall time against its profile's budget (reported, never asserted)."""
    walls, profile = run_wall_times(records)
    if not walls:
        return ""
    rows = budget_rows(walls, profile)
    return (f"## Time budgets ({profile} profile)\n\nMeasured on this run's machine; a budget is reported, "
            "not asserted.\n\n" + markdown_table([{**{k: "-" if v is None else v for k, v in r.items()},
                                                   "over": "OVER" if r["over"] else ""} for r in rows],
                                                  max_rows=len(rows)))


def latest_records(root: Path, exclude: Path | None = None) -> dict[Path, dict[str, Any]]:
    """The newest full run of each notebook anywhere under ``root`` (book, runs, jobs), by start
    time. A notebook with no full run gets its newest smoke or JupyterLab record (file time for
    lab runs), whose rows the ledger marks and never counts; failed and unfinished runs are left out."""
    newest: dict[str, tuple[tuple[bool, str], Path, dict[str, Any]]] = {}
    for path in Path(root).rglob(METRICS_FILE):
        if exclude is not None and path.parent.resolve() == Path(exclude).resolve():
            continue
        record = read_record(path.parent)
        origin, stem = claims.record_origin(record), record.get("stem")
        if stem is None or origin in ("failed", "unfinished"):
            continue
        when = record.get("run", {}).get("started") or datetime.fromtimestamp(
            path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
        rank = (origin == "full", when)
        if stem not in newest or rank > newest[stem][0]:
            newest[stem] = (rank, path.parent, record)
    return {run_dir: record for _, run_dir, record in newest.values()}


def build_report(run_dirs: list[Path], out_dir: Path, title: str = "The dslib cookbook") -> tuple[Path, Path]:
    """Write ``index.md`` and ``index.html`` in ``out_dir`` from the given run directories."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = {d: read_record(d) for d in run_dirs}  # each metrics.json read once
    records = dict(sorted(records.items(), key=lambda item: item[1].get("stem", item[0].name)))
    summary = markdown_table([{"chapter": r.get("run", {}).get("title", d.name),
                               "status": r.get("run", {}).get("status", "missing"),
                               "wall_s": r.get("run", {}).get("wall_s", "")}
                              for d, r in records.items()], max_rows=len(records))
    body = "\n\n".join([f"# {title}\n", summary, budgets_section(records), claims_ledger(records),
                        *(chapter_section(d, r, out_dir) for d, r in records.items())])
    return _write(out_dir, body, title)


def _write(out_dir: Path, body: str, title: str) -> tuple[Path, Path]:
    import markdown

    md_path, html_path = out_dir / "index.md", out_dir / "index.html"
    md_path.write_text(body)
    html = markdown.markdown(body, extensions=["tables", "fenced_code"])
    html_path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
                         "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
                         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px}"
                         "img{max-width:100%}</style></head><body>" + html + "</body></html>")
    return md_path, html_path


def compare(run_dirs: list[Path], out_dir: Path, max_plots: int = 6) -> tuple[Path, Path]:
    """One comparison of runs of the same notebook (a sweep): a table and a bar plot per metric."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend stays as it is

    records = [read_record(d) for d in run_dirs]
    params = [r.get("run", {}).get("parameters", {}) for r in records]
    varying = sorted({k for p in params for k in p if len({repr(q.get(k)) for q in params}) > 1})
    labels = [", ".join(f"{k}={p.get(k)}" for k in varying) or Path(d).name for p, d in zip(params, run_dirs)]
    names = list(dict.fromkeys(m for r in records for m in r.get("metrics", {})))
    rows = [{"run": label, "status": r.get("run", {}).get("status", "missing"),
             "wall_s": r.get("run", {}).get("wall_s", ""),
             **{m: r.get("metrics", {}).get(m, {}).get("value", "") for m in names}}
            for label, r in zip(labels, records)]
    numeric = [m for m in names if all(isinstance(row[m], (int, float)) for row in rows)][:max_plots]
    out_dir.mkdir(parents=True, exist_ok=True)
    body = [f"# Comparison of {len(run_dirs)} runs\n", markdown_table(rows, max_rows=len(rows))]
    if numeric:
        fig = Figure(figsize=(4 * len(numeric), 3.5))
        axes = fig.subplots(1, len(numeric), squeeze=False)
        for ax, metric in zip(axes[0], numeric):
            ax.bar(labels, [row[metric] for row in rows])
            ax.set_title(metric, fontsize=9)
            ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "comparison.png", dpi=110)
        body.append("![comparison](comparison.png)\n")
    return _write(out_dir, "\n".join(body), "Run comparison")
