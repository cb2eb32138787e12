"""The data-governance pipeline: steps over a ``datasets.Dataset`` that keep or drop each
document with a reason, a funnel of counts, and a parquet of every dropped document.

A step adds a ``_drop`` column ("" = keep, else the reason) and may rewrite ``text``;
``_detail`` (optional) says why in numbers (the rule's value, the duplicate's id). A step
that rewrites texts may count what it removed per document (``_edit_<kind>`` columns); the
funnel sums them over the documents the step saw (``Funnel.edits``). Two kinds of steps:
- ``DocStep``: decides each document alone (cleaning, quality rules, keyword filter); runs
  as a batched ``map`` with ``num_proc`` workers;
- ``CorpusStep``: needs the whole corpus at once (exact and near dedup).
The runner writes the dropped documents of step ``i`` to ``rejected/<i>_<step>.parquet``,
and checks the invariant ``input = kept + sum of dropped`` (documents and bytes) at the
end of every run. Bytes are each document's UTF-8 size as it entered the pipeline, so
the byte funnel adds up even though cleaning shortens texts.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from datasets.table import InMemoryTable

from dslib.io import atomic_path

DROP, DETAIL, BYTES, EDIT = "_drop", "_detail", "_bytes", "_edit_"
READ_STEP = "read"


class DocStep:
    """A step deciding each document on its own. Subclasses implement ``decide``."""

    name = "doc_step"

    def decide(self, texts: list[str]) -> tuple:
        """Return (texts, reasons, details): the (possibly rewritten) texts, "" or the drop
        reason per document, and a short detail string per document; a step that rewrites
        may add a fourth item, what it removed: {kind: count per document}."""
        raise NotImplementedError

    def _batch(self, batch: dict[str, list]) -> dict[str, list]:
        texts, reasons, details, *edits = self.decide(batch["text"])
        counts = {f"{EDIT}{kind}": values for kind, values in (edits[0] if edits else {}).items()}
        return {"text": texts, DROP: reasons, DETAIL: details, **counts}

    def run(self, ds: datasets.Dataset, num_proc: int = 1, batch_size: int = 1000) -> datasets.Dataset:
        num_proc = max(1, min(num_proc, len(ds) // batch_size))  # workers cost more than tiny sets
        # an explicit fingerprint: datasets would otherwise hash the step (and any model in it)
        return ds.map(self._batch, batched=True, batch_size=batch_size, num_proc=num_proc if num_proc > 1 else None,
                      desc=self.name, new_fingerprint=f"{self.name}-{uuid.uuid4().hex}")


class CorpusStep:
    """A step that needs every document at once. Subclasses implement ``decide_all``."""

    name = "corpus_step"

    def decide_all(self, ds: datasets.Dataset) -> tuple[list[str], list[str]]:
        raise NotImplementedError

    def run(self, ds: datasets.Dataset, num_proc: int = 1) -> datasets.Dataset:
        reasons, details = self.decide_all(ds)
        return with_columns(ds, {DROP: reasons, DETAIL: details})


@dataclass
class Funnel:
    """Counts per step: documents/bytes in and kept, and dropped per reason."""

    input_docs: int = 0
    input_bytes: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)  # step, docs_in, bytes_in, docs_kept, bytes_kept
    drops: list[dict[str, Any]] = field(default_factory=list)  # step, reason, docs, bytes
    # step, edit (what was removed), docs (documents that lost any), count (how many in all)
    edits: list[dict[str, Any]] = field(default_factory=list)

    def add(self, step: str, docs_in: int, bytes_in: int, dropped: pd.DataFrame,
            docs_kept: int, bytes_kept: int, edits: dict[str, pa.ChunkedArray] | None = None) -> None:
        """``dropped``: one row per dropped document with columns reason, bytes; the kept
        counts are measured on what the step actually passed on, not derived; ``edits``:
        kind -> count per document of what the step removed."""
        self.edits += [{"step": step, "edit": kind, "docs": int(pc.sum(pc.greater(counts, 0)).as_py() or 0),
                        "count": int(pc.sum(counts).as_py() or 0)} for kind, counts in (edits or {}).items()]
        if len(dropped):
            by_reason = dropped.groupby("reason")["bytes"].agg(["count", "sum"])
            self.drops += [{"step": step, "reason": reason, "docs": int(row["count"]), "bytes": int(row["sum"])}
                           for reason, row in by_reason.iterrows()]
        self.rows.append({"step": step, "docs_in": docs_in, "bytes_in": bytes_in,
                          "docs_kept": docs_kept, "bytes_kept": bytes_kept})

    @property
    def kept_docs(self) -> int:
        return self.rows[-1]["docs_kept"] if self.rows else self.input_docs

    @property
    def kept_bytes(self) -> int:
        return self.rows[-1]["bytes_kept"] if self.rows else self.input_bytes

    def check(self) -> None:
        """input = kept + sum of dropped (documents and bytes), for every step and for the
        whole run; raise naming the step if anything was lost or invented."""
        previous = (self.input_docs, self.input_bytes)
        for row in self.rows:
            drops = [d for d in self.drops if d["step"] == row["step"]]
            into = (row["docs_in"], row["bytes_in"])
            out = (row["docs_kept"] + sum(d["docs"] for d in drops), row["bytes_kept"] + sum(d["bytes"] for d in drops))
            if into != previous or into != out:
                raise AssertionError(f"funnel does not add up at step {row['step']!r}: entered {into} "
                                     f"(previous step passed on {previous}), kept + dropped = {out} (docs, bytes)")
            previous = (row["docs_kept"], row["bytes_kept"])

    def table(self) -> pd.DataFrame:
        """One row per step with the drop counts per reason as columns."""
        steps = pd.DataFrame(self.rows)
        drops = pd.DataFrame(self.drops, columns=["step", "reason", "docs", "bytes"])
        wide = drops.pivot_table(index="step", columns="reason", values="docs", aggfunc="sum", fill_value=0)
        return steps.merge(wide, left_on="step", right_index=True, how="left").fillna(0)

    def to_dict(self) -> dict[str, Any]:
        return {"input_docs": self.input_docs, "input_bytes": self.input_bytes, "rows": self.rows,
                "drops": self.drops, "edits": self.edits}


@dataclass
class PipelineResult:
    kept: datasets.Dataset
    funnel: Funnel
    rejected_dir: Path
    steps: list[Any]

    def rejected(self, step: str | None = None) -> pd.DataFrame:
        """Every dropped document (optionally of one step) with its step and reason."""
        files = sorted(self.rejected_dir.glob("*.parquet"))
        frames = [pd.read_parquet(f) for f in files if step is None or f.stem.split("_", 1)[1] == step]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["step", "reason"])


def column(ds: datasets.Dataset, name: str) -> list[Any]:
    """A whole column as a Python list, straight from Arrow (``ds[name]`` iterates row by row)."""
    return ds.with_format("arrow")[name].to_pylist()


def with_columns(ds: datasets.Dataset, columns: dict[str, list[Any]]) -> datasets.Dataset:
    """``ds`` plus new columns, built in Arrow (``add_column`` hashes every value for its
    cache fingerprint and copies the table once per column)."""
    # combine_chunks: a gathered table is many slices of one big buffer, and pickling it to
    # map workers would copy the whole buffer once per slice
    table = ds.with_format("arrow")[:].combine_chunks()
    for name, values in columns.items():
        table = table.append_column(name, pa.array(values, type=pa.string() if name != BYTES else pa.int64()))
    return datasets.Dataset(InMemoryTable(table))


def utf8_sizes(texts: list[str]) -> list[int]:
    return [len(t.encode("utf-8")) for t in texts]


def _total_bytes(ds: datasets.Dataset) -> int:
    return int(pc.sum(ds.with_format("arrow")[BYTES]).as_py() or 0)


def _write_rejected(path: Path, step: str, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.assign(step=step).to_parquet(tmp, index=False)


def run_pipeline(ds: datasets.Dataset, steps: list[Any], out_dir: str | Path, num_proc: int = 1,
                 read_rejected: list[dict[str, Any]] | None = None) -> PipelineResult:
    """Run ``steps`` in order over ``ds`` (columns id, text, ...). ``read_rejected``: the
    pieces a file reader could not turn into documents (``files.FileRead.rejected``); they
    enter the funnel as the drops of a first step called ``read``."""
    bars_were_on = not datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()  # one bar per step and worker drowns the notebook
    try:
        return _run(ds, steps, Path(out_dir), num_proc, read_rejected)
    finally:
        if bars_were_on:
            datasets.utils.enable_progress_bars()


def _run(ds: datasets.Dataset, steps: list[Any], out_dir: Path, num_proc: int,
         read_rejected: list[dict[str, Any]] | None) -> PipelineResult:
    rejected_dir = out_dir / "rejected"
    rejected_dir.mkdir(parents=True, exist_ok=True)
    for old in rejected_dir.glob("*.parquet"):  # a rerun must not mix with an earlier run
        old.unlink()
    ds = with_columns(ds, {BYTES: utf8_sizes(column(ds, "text"))})
    funnel = Funnel()
    read_drops = pd.DataFrame(read_rejected or [], columns=["file", "line", "reason", "raw", "bytes"])
    funnel.input_docs = len(ds) + len(read_drops)
    funnel.input_bytes = _total_bytes(ds) + int(read_drops["bytes"].sum())
    funnel.add(READ_STEP, funnel.input_docs, funnel.input_bytes, read_drops, len(ds), _total_bytes(ds))
    if len(read_drops):
        _write_rejected(rejected_dir / f"00_{READ_STEP}.parquet", READ_STEP, read_drops)
    names: list[str] = []
    for number, step in enumerate(steps, start=1):
        # a step kind used twice (two quality passes) gets its own name in the funnel
        name = step.name if step.name not in names else f"{step.name}_{names.count(step.name) + 1}"
        names.append(step.name)
        docs_in, bytes_in = len(ds), _total_bytes(ds)
        ds = step.run(ds, num_proc=num_proc) if len(ds) else with_columns(ds, {DROP: [], DETAIL: []})
        # split kept/dropped in Arrow: datasets' select + flatten_indices is ~100x slower here
        table = ds.with_format("arrow")[:]
        edit_columns = [c for c in table.column_names if c.startswith(EDIT)]
        edits = {c[len(EDIT):]: table.column(c) for c in edit_columns}
        table = table.drop_columns(edit_columns)
        keep = pc.equal(table.column(DROP), "")
        dropped = table.filter(pc.invert(keep)).to_pandas().rename(
            columns={DROP: "reason", DETAIL: "detail", BYTES: "bytes"})
        if len(dropped):
            _write_rejected(rejected_dir / f"{number:02d}_{name}.parquet", name, dropped)
        ds = datasets.Dataset(InMemoryTable(table.filter(keep).drop_columns([DROP, DETAIL]).combine_chunks()))
        funnel.add(name, docs_in, bytes_in, dropped, len(ds), _total_bytes(ds), edits)
    funnel.check()
    (out_dir / "funnel.json").write_text(json.dumps(funnel.to_dict(), indent=2))
    return PipelineResult(ds.remove_columns([BYTES]), funnel, rejected_dir, steps)


def run_files(paths: list[str | Path], config: Any, out_dir: str | Path) -> PipelineResult:
    """Read the user's files and run the configured pipeline on them. ``config``: a
    ``PipelineConfig``, a path, or a name in configs/data. The config is validated and the
    steps are built before any file is read, so a bad config fails before any work."""
    from dslib.data import config as cfg
    from dslib.data import files

    config = config if isinstance(config, cfg.PipelineConfig) else cfg.load_config(config)
    steps = cfg.build_steps(config)
    read = files.read_files(paths, config.text_field, config.max_doc_bytes)
    return run_pipeline(read.dataset(), steps, out_dir, config.num_proc, read.rejected)
