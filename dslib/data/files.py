"""The user's own corpora: .jsonl, .txt and .parquet files, read without losing anything.

``read_files`` returns the documents it could read and, for every piece of input it could
not, a rejection with a reason (``invalid_json``, ``invalid_utf8``, ``missing_field``,
``not_text``, ``too_large``) and its size in bytes; it never stops half-way through a file.
A wrong column name (a parquet file without the column, or a .jsonl file in which no line
has the field) is a clear error naming the columns found, since no row could be used.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from dslib.data.sources import COLUMNS

SUFFIXES = (".jsonl", ".txt", ".parquet")
RAW_PREVIEW = 200  # characters of a rejected line kept for the reader


@dataclass
class FileRead:
    """Documents read (as records) and rejected input pieces, each with a reason."""

    records: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, path: Path, line: int, reason: str, raw: Any) -> None:
        size = len(raw) if isinstance(raw, bytes) else len(str(raw).encode("utf-8", "replace"))
        self.rejected.append({"file": str(path), "line": line, "reason": reason,
                              "raw": repr(raw)[:RAW_PREVIEW], "bytes": size})

    def dataset(self) -> datasets.Dataset:
        return datasets.Dataset.from_dict({c: [r[c] for r in self.records] for c in COLUMNS})


def _add(out: FileRead, path: Path, number: int, text: str, **meta: Any) -> None:
    out.records.append({"id": f"{path.name}:{number}", "text": text, "source": path.stem,
                        "meta": json.dumps({"file": str(path), **meta})})


def _read_jsonl(path: Path, text_field: str, out: FileRead, max_bytes: int) -> None:
    fields_seen: set[str] = set()
    found = False
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            if len(raw) > max_bytes:
                out.reject(path, number, "too_large", raw)
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                out.reject(path, number, "invalid_utf8", raw)
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                out.reject(path, number, "invalid_json", line)
                continue
            fields_seen |= set(obj) if isinstance(obj, dict) else set()
            found |= isinstance(obj, dict) and text_field in obj
            if not isinstance(obj, dict) or text_field not in obj:
                out.reject(path, number, "missing_field", line)
            elif not isinstance(obj[text_field], str):
                out.reject(path, number, "not_text", line)
            else:
                extra = {k: v for k, v in obj.items() if k != text_field}
                _add(out, path, number, obj[text_field], **extra)
    if fields_seen and not found:
        raise ValueError(f"{path}: no line has the field {text_field!r} (fields found: "
                         f"{', '.join(sorted(fields_seen))}); pass text_field= the field holding the text")


def _read_txt(path: Path, out: FileRead, max_bytes: int) -> None:
    """One document per paragraph (blank-line separated); undecodable paragraphs rejected."""
    paragraph: list[bytes] = []
    start = 1
    for number, raw in enumerate(path.read_bytes().splitlines() + [b""], start=1):
        if raw.strip():
            start = number if not paragraph else start
            paragraph.append(raw)
            continue
        if paragraph:
            block = b"\n".join(paragraph)
            if len(block) > max_bytes:
                out.reject(path, start, "too_large", block)
                paragraph = []
                continue
            try:
                _add(out, path, start, block.decode("utf-8"))
            except UnicodeDecodeError:
                out.reject(path, start, "invalid_utf8", block)
            paragraph = []


def _read_parquet(path: Path, text_field: str, out: FileRead, max_bytes: int) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if text_field not in table.column_names:
        raise ValueError(f"{path}: no column {text_field!r} (columns: {', '.join(table.column_names)}); "
                         f"pass text_field= the column holding the text")
    for number, row in enumerate(table.to_pylist(), start=1):
        text = row.pop(text_field)
        if isinstance(text, str) and len(text.encode("utf-8")) > max_bytes:
            out.reject(path, number, "too_large", text)
        elif isinstance(text, str):
            _add(out, path, number, text, **{k: str(v) for k, v in row.items()})
        else:
            out.reject(path, number, "not_text", text)


def read_files(paths: list[str | Path], text_field: str = "text", max_doc_bytes: int = 1_000_000) -> FileRead:
    """Read the user's files (folders are searched for the known suffixes). Documents over
    ``max_doc_bytes`` are rejected as ``too_large`` (their first bytes kept for the reader)."""
    out = FileRead()
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix in SUFFIXES)
        elif not p.exists():
            raise FileNotFoundError(f"no such file: {p}")
        elif p.suffix not in SUFFIXES:
            raise ValueError(f"{p}: unsupported file type {p.suffix!r}; supported: {', '.join(SUFFIXES)}")
        else:
            files.append(p)
    for path in files:
        if path.suffix == ".jsonl":
            _read_jsonl(path, text_field, out, max_doc_bytes)
        elif path.suffix == ".txt":
            _read_txt(path, out, max_doc_bytes)
        else:
            _read_parquet(path, text_field, out, max_doc_bytes)
    return out
