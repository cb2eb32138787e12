"""Label validation: several (simulated) annotators, agreement, aggregation, and a
cross-validated classifier that flags labels it confidently disagrees with.

- ``simulate_annotators``: each annotator copies the true label and, with probability
  ``noise``, replaces it by a different class chosen uniformly;
- Cohen's kappa for a pair, ``(p_o - p_e) / (1 - p_e)`` with ``p_e`` from the two
  annotators' own class frequencies; Fleiss' kappa for all at once, with ``p_e`` from the
  pooled class frequencies and ``p_o`` the mean pairwise agreement per item;
- ``majority_vote``: most frequent label per item, ties broken at random;
- ``suspect_labels``: out-of-fold class probabilities from k-fold logistic regression on
  TF-IDF; a label is suspect when another class is predicted with at least that class's
  mean self-confidence (the confident-learning rule of Northcutt et al. 2021).
"""
from __future__ import annotations

import itertools

import numpy as np


def simulate_annotators(truth: np.ndarray, n_classes: int, n_annotators: int, noise: float,
                        seed: int = 0) -> np.ndarray:
    """(n_items, n_annotators) labels; each differs from truth with probability ``noise``."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(truth[:, None], n_annotators, axis=1)
    wrong = rng.random(labels.shape) < noise
    shift = rng.integers(1, n_classes, size=labels.shape)  # a different class, uniformly
    return np.where(wrong, (labels + shift) % n_classes, labels)


def cohen_kappa(a: np.ndarray, b: np.ndarray, n_classes: int) -> float:
    p_observed = np.mean(a == b)
    p_expected = float(np.sum(np.bincount(a, minlength=n_classes) * np.bincount(b, minlength=n_classes))) / len(a) ** 2
    return float((p_observed - p_expected) / (1 - p_expected)) if p_expected < 1 else 1.0


def kappa_matrix(ratings: np.ndarray, n_classes: int) -> np.ndarray:
    """Cohen's kappa of every annotator pair (1 on the diagonal)."""
    n = ratings.shape[1]
    out = np.eye(n)
    for i, j in itertools.combinations(range(n), 2):
        out[i, j] = out[j, i] = cohen_kappa(ratings[:, i], ratings[:, j], n_classes)
    return out


def fleiss_kappa(ratings: np.ndarray, n_classes: int) -> float:
    n_items, n_raters = ratings.shape
    counts = np.stack([np.sum(ratings == c, axis=1) for c in range(n_classes)], axis=1)  # n_ic
    p_item = (np.sum(counts ** 2, axis=1) - n_raters) / (n_raters * (n_raters - 1))
    p_class = counts.sum(axis=0) / (n_items * n_raters)
    p_observed, p_expected = p_item.mean(), np.sum(p_class ** 2)
    return float((p_observed - p_expected) / (1 - p_expected))


def majority_vote(ratings: np.ndarray, n_classes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = np.stack([np.sum(ratings == c, axis=1) for c in range(n_classes)], axis=1).astype(float)
    counts += rng.random(counts.shape) * 0.5  # random tie-break, never overturns a real majority
    return counts.argmax(axis=1)


def out_of_fold_probabilities(texts: list[str], labels: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """P(class | text) for every item from a model that never saw that item's label."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2)),
                          LogisticRegression(max_iter=1000, C=10.0))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return cross_val_predict(model, texts, labels, cv=cv, method="predict_proba")


def suspect_labels(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """True where another class is predicted at least as confidently as that class's items
    usually are (per-class threshold = mean out-of-fold probability of the items given it)."""
    n_classes = probs.shape[1]
    threshold = np.array([probs[labels == c, c].mean() if np.any(labels == c) else 1.0 for c in range(n_classes)])
    predicted = probs.argmax(axis=1)
    return (predicted != labels) & (probs[np.arange(len(labels)), predicted] >= threshold[predicted])


def detection_scores(flagged: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """Precision and recall of flagged items against the items that are really wrong."""
    hits = int(np.sum(flagged & actual))
    return {"flagged": int(flagged.sum()), "actual_errors": int(actual.sum()), "found": hits,
            "precision": hits / max(1, int(flagged.sum())), "recall": hits / max(1, int(actual.sum()))}
