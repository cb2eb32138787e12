"""Checking near dedup on data whose duplicates are known.

- Translation pairs: KJV, ASV and WEB are verse-aligned, so the same verse in two
  translations is a near-duplicate pair of known identity. Recall counts the pairs whose
  exact word-shingle Jaccard reaches the threshold and that dedup put in one cluster;
  precision counts the accepted candidate pairs whose exact Jaccard reaches it.
- Perturbed corpora (for the benchmark): distinct real verses, then copies of randomly
  chosen ones with 0-3 random word edits (delete, duplicate or swap with a neighbour),
  up to the size asked; each copy is a planted pair with its source verse.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from dslib.data import dedup
from dslib.data.pipeline import column


def translation_corpus(n_verses: int, versions: tuple[str, ...] = ("kjv", "asv", "web"), seed: int = 0) -> pd.DataFrame:
    """The same ``n_verses`` randomly chosen verses in each version: columns id, verse, text."""
    from dslib.data.sources import load

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
    from dslib.data.sources import load

    base = [t for v in ("kjv", "asv", "web") for t in column(load(v), "text")]
    rng = np.random.default_rng(seed)
    n_base = min(len(base), max(1, int(n_docs * (1 - copy_share))))
    texts = [base[i] for i in rng.choice(len(base), size=n_base, replace=False)]
    sources = rng.integers(0, n_base, size=n_docs - n_base)
    texts += [" ".join(perturb(texts[s].split(), rng)) for s in sources]
    return texts, np.stack([sources, np.arange(n_base, n_docs)], axis=1).astype(np.int64)
