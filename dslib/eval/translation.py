"""A real generation task: KJV -> WEB (archaic to modern English), verse by verse.

The verse-aligned Bibles give parallel pairs. The model learns the prompted format
"KJV: <verse>\\nWEB: <verse>" from training documents; at test time it reads
"KJV: <held-out verse>\\nWEB:" and decodes greedily to the end of the line. Its outputs
are scored with the local BLEU and chrF modules (through `evaluate.combine`) and SQuAD's
normalised exact match / token F1 per verse, against the copy-the-input baseline (output
the KJV verse unchanged), which is strong: KJV and WEB share most of their words.
"""
from __future__ import annotations

from collections.abc import Sequence

from dslib.data import sources
from dslib.eval.lm import LM
from dslib.eval.registry import combine, load_metric


def verse_pairs(limit: int | None = None) -> list[tuple[str, str]]:
    """(KJV, WEB) texts of the verses both translations have, in canonical order."""
    kjv, web = sources.load("kjv"), sources.load("web")
    web_by_verse = {doc_id.split(":", 1)[1]: text for doc_id, text in zip(web["id"], web["text"])}
    pairs = [(text, web_by_verse[doc_id.split(":", 1)[1]]) for doc_id, text in zip(kjv["id"], kjv["text"])
             if web_by_verse.get(doc_id.split(":", 1)[1])]
    return pairs[:limit] if limit is not None else pairs


def prompt(kjv: str) -> str:
    return f"KJV: {kjv}\nWEB:"


def pair_document(kjv: str, web: str) -> str:
    """A training document: the prompt followed by the reference."""
    return f"{prompt(kjv)} {web}"


def split_document(document: str) -> tuple[str, str]:
    """The (KJV, WEB) pair back from a training document."""
    head, web = document.split("\nWEB: ", 1)
    return head.removeprefix("KJV: "), web


def translate(lm: LM, kjv_verses: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy outputs, cut at the end of the line."""
    return [lm.greedy_until(prompt(kjv), ["\n"], max_new_tokens).strip() for kjv in kjv_verses]


def score_outputs(outputs: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (one `evaluate.combine`), and SQuAD-normalised EM / token F1 per verse."""
    corpus = combine(["bleu", "chrf"]).compute(predictions=list(outputs), references=[[r] for r in references])
    squad = load_metric("squad_v2").compute(
        predictions=[{"id": str(i), "prediction_text": o, "no_answer_probability": 0.0} for i, o in enumerate(outputs)],
        references=[{"id": str(i), "answers": {"text": [r], "answer_start": [0]}} for i, r in enumerate(references)])
    return {"bleu": corpus["bleu_score"], "chrf": corpus["chrf_score"],
            "exact_match": squad["exact"], "token_f1": squad["f1"]}
