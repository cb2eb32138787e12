"""Chapter 01's measurements of the data pipeline against data whose answers are known.

- User files: real documents from the offline corpora (Bible verses in three translations, HPO
  definitions, Shakespeare speeches) spread over a .jsonl, a .parquet and a .txt file, with the
  usual accidents planted on top (exact copies, symbol and digit junk, empty documents, one huge
  document, malformed JSON lines, invalid UTF-8, a wrong field name, a non-text value); the
  counts planted are returned, so the funnel can be checked against them.
- Near dedup: KJV, ASV and WEB are verse-aligned, so the same verse in two translations is a
  near-duplicate pair of known identity. Recall counts the pairs whose exact word-shingle
  Jaccard reaches the threshold and that dedup put in one cluster; precision counts the
  accepted candidate pairs whose exact Jaccard reaches it. Perturbed corpora (for the
  benchmark): distinct verses, then copies with 0-3 random word edits, each a planted pair.
- The domain filter: a labelled mix (HPO definitions medical, KJV verses and Shakespeare
  passages not), split into calibration (terms, thresholds) and test (precision, recall).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from dslib.data import dedup
from dslib.data.domain import TermList, cascade
from dslib.data.pipeline import column
from dslib.data.sources import load


# ---- user files with planted accidents ------------------------------------------------------

def mixed_documents(n_docs: int, seed: int = 0) -> pd.DataFrame:
    """id, text, source: a random mix of the offline corpora (verses weighted by count)."""
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


# ---- near dedup against known pairs -------------------------------------------------------

def translation_corpus(n_verses: int, versions: tuple[str, ...] = ("kjv", "asv", "web"), seed: int = 0) -> pd.DataFrame:
    """The same ``n_verses`` randomly chosen verses in each version: columns id, verse, text."""
    frames = []
    for version in versions:
        ds = load(version)
        frames.append(pd.DataFrame({"id": column(ds, "id"), "text": column(ds, "text")}))
    frame = pd.concat(frames, ignore_index=True)
    frame["verse"] = frame["id"].str.split(":").str[1]
    shared = sorted(set.intersection(*(set(f["id"].str.split(":").str[1]) for f in frames)))
    chosen = set(np.random.default_rng(seed).choice(shared, size=min(n_verses, len(shared)), replace=False))
    return frame[frame["verse"].isin(chosen)].reset_index(drop=True)


def known_pairs(groups: np.ndarray) -> np.ndarray:
    """All (i, j), i < j, of documents sharing a group key (a verse id)."""
    order = np.argsort(groups, kind="stable")
    out = []
    for members in np.split(order, np.flatnonzero(groups[order][1:] != groups[order][:-1]) + 1):
        out += [(a, b) for k, a in enumerate(members) for b in members[k + 1:]]
    return np.sort(np.array(out, dtype=np.int64).reshape(-1, 2), axis=1)


def pair_scores(texts: list[str], pairs: np.ndarray, result: dedup.NearDupResult, threshold: float,
                shingle_size: int) -> dict[str, float]:
    """Recall on known pairs that truly reach ``threshold`` (exact Jaccard), precision of
    the accepted candidate pairs against the exact Jaccard."""
    sh = dedup.shingle(texts, shingle_size)
    true_jaccard = dedup.exact_jaccard(sh, pairs)
    positive = true_jaccard >= threshold
    found = result.root[pairs[:, 0]] == result.root[pairs[:, 1]]
    accepted = result.pairs[result.accepted]
    accepted_exact = dedup.exact_jaccard(sh, accepted)
    return {"known_pairs": len(pairs), "pairs_over_threshold": int(positive.sum()),
            "recall": float(found[positive].mean()) if positive.any() else float("nan"),
            "accepted_pairs": len(accepted),
            "precision": float(np.mean(accepted_exact >= threshold)) if len(accepted) else float("nan"),
            "below_threshold_clustered": float(found[~positive].mean()) if (~positive).any() else float("nan")}


def exact_jaccard_of_known(texts: list[str], pairs: np.ndarray, shingle_size: int) -> np.ndarray:
    return dedup.exact_jaccard(dedup.shingle(texts, shingle_size), pairs)


def perturb(words: list[str], rng: np.random.Generator, max_edits: int = 3) -> list[str]:
    words = list(words)
    for _ in range(rng.integers(0, max_edits + 1)):
        if len(words) < 3:
            break
        i = int(rng.integers(0, len(words) - 1))
        edit = rng.integers(0, 3)
        if edit == 0:
            del words[i]
        elif edit == 1:
            words.insert(i, words[i])
        else:
            words[i], words[i + 1] = words[i + 1], words[i]
    return words


def perturbed_corpus(n_docs: int, copy_share: float = 0.3, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """(texts, planted pairs): ``n_docs`` documents, of which about ``1 - copy_share`` are
    distinct real verses (KJV, ASV, WEB, as many as there are) and the rest perturbed
    copies of randomly chosen ones; each copy is planted as a pair with its source."""
    base = [t for v in ("kjv", "asv", "web") for t in column(load(v), "text")]
    rng = np.random.default_rng(seed)
    n_base = min(len(base), max(1, int(n_docs * (1 - copy_share))))
    texts = [base[i] for i in rng.choice(len(base), size=n_base, replace=False)]
    sources = rng.integers(0, n_base, size=n_docs - n_base)
    texts += [" ".join(perturb(texts[s].split(), rng)) for s in sources]
    return texts, np.stack([sources, np.arange(n_base, n_docs)], axis=1).astype(np.int64)


# ---- the domain filter against known labels --------------------------------------------------

def labelled_corpus(n_per_source: int = 800, calibration_share: float = 0.3, seed: int = 0):
    """A mixed corpus with known labels: HPO definitions (medical, label 1), KJV verses and
    Shakespeare passages (speeches of at least 8 words; label 0). Each document goes to the
    'calibration' split (to pick terms and thresholds) or to 'test' (to measure)."""
    rng = np.random.default_rng(seed)
    passages = [p for scene in load("shakespeare")["text"] for p in scene.split("\n\n") if len(p.split()) >= 8]
    parts = {"hpo": load("hpo")["text"], "kjv": load("kjv")["text"], "shakespeare": passages}
    frames = []
    for source, texts in parts.items():
        pick = rng.choice(len(texts), size=min(n_per_source, len(texts)), replace=False)
        frames.append(pd.DataFrame({"text": [texts[i] for i in pick], "source": source,
                                    "label": int(source == "hpo")}))
    frame = pd.concat(frames, ignore_index=True)
    frame["split"] = np.where(rng.random(len(frame)) < calibration_share, "calibration", "test")
    return frame


def precision_recall(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    tp = int(np.sum(predicted & truth))
    precision, recall = tp / max(1, int(predicted.sum())), tp / max(1, int(truth.sum()))
    return {"precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0}


def best_threshold(scores: np.ndarray, truth: np.ndarray) -> float:
    """The score threshold with the best F1 (calibration split only)."""
    candidates = np.unique(np.round(scores, 3))
    return float(max(candidates, key=lambda t: precision_recall(scores >= t, truth)["f1"]))


def compare_filters(texts: list[str], truth: np.ndarray, terms: TermList, scores: np.ndarray,
                    min_hits: int, accept_hits: int, reject_hits: int, threshold: float):
    """Precision/recall of the keyword rule, the model alone, and the cascade. ``scores``:
    the model's score of every document (the cascade uses only the uncertain ones)."""
    truth = truth.astype(bool)
    hits = terms.count_hits(texts)
    decision = cascade(hits, accept_hits, reject_hits)
    uncertain = decision == -1
    combined = np.where(uncertain, scores >= threshold, decision == 1)
    rows = [{"filter": f"keyword (>= {min_hits} hits)", **precision_recall(hits >= min_hits, truth), "model_share": 0.0},
            {"filter": f"semantic (score >= {threshold:.3f})", **precision_recall(scores >= threshold, truth),
             "model_share": 1.0},
            {"filter": f"cascade (>= {accept_hits} hits keep, <= {reject_hits} drop, model between)",
             **precision_recall(combined, truth), "model_share": float(uncertain.mean())}]
    return pd.DataFrame(rows)
