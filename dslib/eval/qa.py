"""An offline SQuAD-v2-style question-answering set from the HPO ontology, and span extraction.

An item's context lists a few HPO terms with their definitions ("<name>: <definition>", one a
line). An answerable question asks "What is <name>?" for a term of the context; its answer is
that term's definition, a span of the context (character offset as in SQuAD). An unanswerable
one asks about a term that is not in the context; its answer list is empty (SQuAD v2).

`extract_answers` reads a model through the `LM` interface: every candidate span (each
definition of the context) is scored by how much the question raises its log-likelihood,
log p(span | context, question) - log p(span | context, empty question) (the PMI of
prompts.py); the best candidate is the answer, or no answer when even the best one gains at
most `no_answer_margin` nats from the question. `first_sentence` and `always_unanswerable`
are the trivial baselines. All three give predictions in the `squad_v2` metric's format.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dslib.eval.lm import LM


@dataclass(frozen=True)
class QAItem:
    id: str
    context: str
    question: str
    answers: tuple[str, ...]  # empty: unanswerable
    answer_starts: tuple[int, ...]
    candidates: tuple[tuple[int, int], ...]  # (start, end) character spans that may answer

    def reference(self) -> dict[str, Any]:
        return {"id": self.id, "answers": {"text": list(self.answers), "answer_start": list(self.answer_starts)}}


def hpo_qa_set(terms: Sequence[dict[str, Any]], n_items: int, terms_per_context: int = 2,
               unanswerable_share: float = 0.5, max_definition_words: int = 20, seed: int = 0) -> list[QAItem]:
    """Items from HPO terms (`sources.hpo_terms()`: name, definition), short definitions only
    (the context must fit the model's window). Each term appears in one context at most."""
    usable = [t for t in terms if t["definition"] and len(t["definition"].split()) <= max_definition_words
              and "\n" not in t["definition"]]
    rng = random.Random(f"hpo-qa:{seed}")
    rng.shuffle(usable)
    if len(usable) < n_items * (terms_per_context + 1):
        raise ValueError(f"{len(usable)} usable terms, too few for {n_items} items")
    items = []
    for i in range(n_items):
        group = usable[i * (terms_per_context + 1):(i + 1) * (terms_per_context + 1)]
        shown, absent = group[:terms_per_context], group[-1]
        lines, spans, pos = [], [], 0
        for term in shown:
            line = f"{term['name']}: {term['definition']}"
            start = pos + len(term["name"]) + 2
            spans.append((start, start + len(term["definition"])))
            lines.append(line)
            pos += len(line) + 1
        context = "\n".join(lines)
        if rng.random() < unanswerable_share:
            question, answers, starts = f"What is {absent['name']}?", (), ()
        else:
            k = rng.randrange(terms_per_context)
            question, answers, starts = f"What is {shown[k]['name']}?", (shown[k]["definition"],), (spans[k][0],)
        items.append(QAItem(f"hpo-qa-{seed}-{i}", context, question, answers, starts, tuple(spans)))
    return items


def _prompt(context: str, question: str) -> str:
    return f"{context}\nQuestion: {question}\nAnswer:"


def extract_answers(lm: LM, items: Sequence[QAItem], no_answer_margin: float = 0.0) -> list[dict[str, Any]]:
    """squad_v2 predictions by span extraction; no_answer_probability = sigmoid(margin - best gain)."""
    requests, priors = [], []
    for it in items:
        for start, end in it.candidates:
            span = " " + it.context[start:end]
            requests.append((_prompt(it.context, it.question), span))
            priors.append((_prompt(it.context, ""), span))
    gains = [a - b for a, b in zip(lm.loglikelihoods(requests), lm.loglikelihoods(priors))]
    predictions, pos = [], 0
    for it in items:
        scores = gains[pos:pos + len(it.candidates)]
        pos += len(it.candidates)
        best = max(range(len(scores)), key=scores.__getitem__)
        start, end = it.candidates[best]
        answered = scores[best] > no_answer_margin
        predictions.append({"id": it.id, "prediction_text": it.context[start:end] if answered else "",
                            "no_answer_probability": 1 / (1 + math.exp(scores[best] - no_answer_margin))})
    return predictions


def first_sentence(items: Sequence[QAItem]) -> list[dict[str, Any]]:
    """Baseline: the context's first sentence (up to the first full stop or line end), always answering."""
    def sentence(text: str) -> str:
        line = text.split("\n", 1)[0]
        return line.split(". ", 1)[0]
    return [{"id": it.id, "prediction_text": sentence(it.context), "no_answer_probability": 0.0} for it in items]


def always_unanswerable(items: Sequence[QAItem]) -> list[dict[str, Any]]:
    """Baseline: no answer to any question (scores NoAns perfectly, HasAns not at all)."""
    return [{"id": it.id, "prediction_text": "", "no_answer_probability": 1.0} for it in items]
