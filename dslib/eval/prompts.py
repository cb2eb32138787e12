"""Domain prompt tests: multiple-choice continuations scored by log-likelihood.

An item is a context cut from a held-out document of one domain, its true next words,
and distractors: the same number of words cut from other held-out documents, of the same
domain (hard: only coherence tells them apart) or of the other domains (easy: the register
alone does). A model that fits the domain gives the true continuation the highest
log-likelihood (`acc`); `acc_norm` divides by the continuation's UTF-8 bytes first, so
short distractors gain nothing (lm-evaluation-harness's two accuracies). `acc_pmi` ranks by
log p(continuation | context) - log p(continuation | nothing): what the context adds, so
a continuation that is likely anyway (a domain the model saw most of) does not win by
its prior alone (the harness's acc_mutual_info). Chance is 1 / number of choices.

`generation_rows` asks the model to write the continuation instead of choosing it: greedy
and sampled decoders (temperature, top-p) side by side, scored by the word-bag F1 of the
generated words against the true continuation (SQuAD's F1 on words) and by distinct-2, the
share of distinct word bigrams (greedy decoding of a small model repeats itself).
"""
from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dslib.eval.lm import DslibLM, LM


@dataclass(frozen=True)
class MultipleChoice:
    domain: str
    context: str
    choices: tuple[str, ...]
    answer: int  # index of the true continuation in choices


def _window(words: list[str], rng: random.Random, length: int) -> list[str]:
    start = rng.randrange(len(words) - length + 1)
    return words[start:start + length]


def continuation_suite(texts: Sequence[str], domain: str, n_items: int, n_choices: int = 4,
                       context_words: int = 16, continuation_words: int = 6,
                       seed: int = 0, distractor_texts: Sequence[str] | None = None) -> list[MultipleChoice]:
    """Items from `texts` (held-out documents of one domain; each needs context_words +
    continuation_words words to serve as an item). Distractors come from the other documents
    of `texts`, or from `distractor_texts` when given."""
    rng = random.Random(f"{domain}:{seed}")
    docs = [t.split() for t in texts]
    pool = docs if distractor_texts is None else [t.split() for t in distractor_texts]
    usable = [i for i, w in enumerate(docs) if len(w) >= context_words + continuation_words]
    candidates = [w for w in pool if len(w) >= continuation_words]
    if len(candidates) < n_choices or not usable:
        raise ValueError(f"{domain}: too few usable documents for {n_choices}-way items")
    items = []
    for doc in rng.sample(usable, min(n_items, len(usable))):
        words = _window(docs[doc], rng, context_words + continuation_words)
        others = [w for w in rng.sample(candidates, n_choices) if w is not docs[doc]][:n_choices - 1]
        choices = [words[context_words:]] + [_window(w, rng, continuation_words) for w in others]
        order = list(range(len(choices)))
        rng.shuffle(order)
        items.append(MultipleChoice(domain, " ".join(words[:context_words]),
                                    tuple(" " + " ".join(choices[j]) for j in order), order.index(0)))
    return items


def build_suites(held_out: Mapping[str, Sequence[str]], n_items: int, seed: int = 0,
                 distractors: str = "same", **kwargs) -> dict[str, list[MultipleChoice]]:
    """One suite per domain from {domain: held-out texts}; distractors "same" (domain) or "other"."""
    if distractors not in ("same", "other"):
        raise ValueError(f"distractors must be 'same' or 'other', got {distractors!r}")
    return {domain: continuation_suite(
                texts, domain, n_items, seed=seed, **kwargs,
                distractor_texts=None if distractors == "same" else
                [t for other, docs in held_out.items() if other != domain for t in docs])
            for domain, texts in held_out.items()}


def choice_priors(lm: LM, items: Sequence[MultipleChoice]) -> list[float]:
    """log p(choice | empty context) of every choice, item by item (for acc_pmi)."""
    return lm.loglikelihoods([("", choice) for it in items for choice in it.choices])


def score_items(lm: LM, items: Sequence[MultipleChoice]) -> dict[str, float]:
    """acc, acc_norm and acc_pmi of `lm` on items."""
    lls = lm.loglikelihoods([(it.context, choice) for it in items for choice in it.choices])
    return accuracy_from_loglikelihoods(items, lls, choice_priors(lm, items))


def accuracy_from_loglikelihoods(items: Sequence[MultipleChoice], lls: Sequence[float],
                                 priors: Sequence[float] | None = None) -> dict[str, float]:
    """acc / acc_norm (and acc_pmi, given the priors) from flat lists of log-likelihoods,
    item by item, choice by choice."""
    correct = {"acc": 0, "acc_norm": 0, "acc_pmi": 0}
    pos = 0
    for it in items:
        ll = np.asarray(lls[pos:pos + len(it.choices)])
        scores = {"acc": ll, "acc_norm": ll / np.asarray([len(c.encode("utf-8")) for c in it.choices])}
        if priors is not None:
            scores["acc_pmi"] = ll - np.asarray(priors[pos:pos + len(it.choices)])
        for name, score in scores.items():
            correct[name] += int(score.argmax() == it.answer)
        pos += len(it.choices)
    n = max(len(items), 1)
    out = {name: correct[name] / n for name in correct if name != "acc_pmi" or priors is not None}
    return {**out, "n": len(items),
            "chance": float(np.mean([1 / len(it.choices) for it in items])) if items else float("nan")}


def evaluate_suites(lm: LM, suites: Mapping[str, Sequence[MultipleChoice]]) -> list[dict]:
    """One row per domain: domain, acc, acc_norm, n, chance."""
    return [{"domain": domain, **score_items(lm, items)} for domain, items in suites.items()]


def word_f1(prediction: str, reference: str) -> float:
    """F1 of the bags of lower-cased words (SQuAD's token F1 without its article stripping)."""
    pred, ref = prediction.lower().split(), reference.lower().split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def distinct_2(texts: Sequence[str]) -> float:
    """Distinct word bigrams over all bigrams of the texts (0 when there is no bigram)."""
    bigrams = [tuple(w[i:i + 2]) for w in (t.split() for t in texts) for i in range(len(w) - 1)]
    return len(set(bigrams)) / len(bigrams) if bigrams else 0.0


def generation_rows(lm: DslibLM, items: Sequence[MultipleChoice], decoders: Mapping[str, Mapping[str, float]],
                    max_tokens: int, seed: int = 0) -> list[dict]:
    """One row per decoder: mean word F1 of the generated continuation against the true
    one, and distinct-2. A decoder is `generate_until`'s keywords, e.g. {"temperature": 0.8,
    "top_p": 0.9}; {} is greedy. Item i samples with seed + i (reproducible)."""
    rows = []
    for name, kwargs in decoders.items():
        outputs = [lm.generate_until(it.context, ["\n"], max_tokens, seed=seed + i, **kwargs)
                   for i, it in enumerate(items)]
        f1 = [word_f1(out, it.choices[it.answer]) for out, it in zip(outputs, items)]
        rows.append({"decoder": name, **kwargs, "word_f1": float(np.mean(f1)) if f1 else float("nan"),
                     "distinct_2": distinct_2(outputs), "n": len(items)})
    return rows
