"""A folder of "user files" for chapter 01: real documents plus the usual accidents.

The documents are drawn from the offline corpora (Bible verses in three translations,
HPO definitions, Shakespeare speeches) and spread over a .jsonl, a .parquet and a .txt
file. Planted on top: exact copies, symbol and digit junk, empty documents, one huge
document, malformed JSON lines, invalid UTF-8, a line with the wrong field name, and a
non-text value. The return value says how many of each were planted, so the funnel can
be checked against it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from dslib.data.pipeline import column


def mixed_documents(n_docs: int, seed: int = 0) -> pd.DataFrame:
    """id, text, source: a random mix of the offline corpora (verses weighted by count)."""
    from dslib.data.sources import load

    parts = [pd.DataFrame({"id": column(load(n), "id"), "text": column(load(n), "text"), "source": n})
             for n in ("kjv", "asv", "web", "hpo")]
    speeches = [p for scene in column(load("shakespeare"), "text") for p in scene.split("\n\n") if len(p.split()) >= 8]
    parts.append(pd.DataFrame({"id": [f"shakespeare:{i}" for i in range(len(speeches))], "text": speeches,
                               "source": "shakespeare"}))
    frame = pd.concat(parts, ignore_index=True)
    pick = np.random.default_rng(seed).choice(len(frame), size=min(n_docs, len(frame)), replace=False)
    return frame.iloc[np.sort(pick)].reset_index(drop=True)


def write_user_files(folder: str | Path, n_docs: int, seed: int = 0) -> dict[str, int]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    docs = mixed_documents(n_docs, seed)
    copies = docs.sample(frac=0.02, random_state=seed)
    junk = ["@#$%^&*() <<>> {{}} ||| ~~~ " * 3, "12 345 6789 0 12 345 6789 0 12 345 ... 6789", "\u200b\u200b \t \x00"]
    planted = {"exact_copies": len(copies), "junk": len(junk) + 1, "huge": 1, "invalid_json": 2, "invalid_utf8": 1,
               "missing_field": 1, "not_text": 1}
    records = [{"text": t, "source": s} for t, s in zip(docs.text, docs.source)]
    records += [{"text": t, "source": s} for t, s in zip(copies.text, copies.source)]
    records += [{"text": t, "source": "junk"} for t in junk] + [{"text": "", "source": "junk"}]
    records = [records[i] for i in rng.permutation(len(records))]
    n_jsonl, n_parquet = int(len(records) * 0.6), int(len(records) * 0.3)
    lines = [json.dumps(r).encode() for r in records[:n_jsonl]]
    lines += [b'{"text": "an unterminated string', b"not json at all", b'{"text": "caf\xe9"}',
              json.dumps({"body": "text under the wrong field"}).encode(), json.dumps({"text": ["a", "list"]}).encode(),
              json.dumps({"text": "word " * 300_000}).encode()]  # 1.5 MB: over max_doc_bytes
    (folder / "part-0.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    pd.DataFrame(records[n_jsonl:n_jsonl + n_parquet]).to_parquet(folder / "part-1.parquet")
    txt = [r["text"].replace("\n\n", "\n") for r in records[n_jsonl + n_parquet:] if r["text"].strip()]
    (folder / "notes.txt").write_text("\n\n".join(txt) + "\n")
    planted["documents"] = len(records) + 6 - sum(1 for r in records[n_jsonl + n_parquet:] if not r["text"].strip())
    return planted
