"""The offline SQuAD-v2-style HPO set and span extraction: answers are spans of their contexts,
unanswerable questions have none, the question's gain picks the span, baselines score as they must."""
import pytest

from dslib.data import sources
from dslib.eval import load_metric
from dslib.eval.lm import LM
from dslib.eval.qa import always_unanswerable, extract_answers, first_sentence, hpo_qa_set


@pytest.fixture(scope="module")
def items():
    return hpo_qa_set(sources.hpo_terms(), n_items=40, seed=0)


def test_answers_are_spans_and_unanswerable_terms_are_absent(items):
    answerable = [it for it in items if it.answers]
    assert 5 < len(answerable) < 35  # about half each
    for it in items:
        name = it.question.removeprefix("What is ").removesuffix("?")
        names = [line.split(": ", 1)[0] for line in it.context.split("\n")]
        assert [it.context[s:e] for s, e in it.candidates] == [line.split(": ", 1)[1] for line in it.context.split("\n")]
        if it.answers:
            (answer,), (start,) = it.answers, it.answer_starts
            assert it.context[start:start + len(answer)] == answer and name in names
            assert (start, start + len(answer)) in it.candidates
        else:
            assert it.answer_starts == () and name not in names
    assert hpo_qa_set(sources.hpo_terms(), 40, seed=0) == items != hpo_qa_set(sources.hpo_terms(), 40, seed=1)


class QuestionAwareLM(LM):
    """A language model over a fixed rule: a span is likely after "What is <name>?" when the
    context's line for <name> holds it (log p 0), unlikely otherwise (log p -5)."""

    def loglikelihoods(self, requests):
        out = []
        for context, span in requests:
            lines, question = context.split("\nQuestion: ")
            name = question.removeprefix("What is ").split("?")[0]
            out.append(0.0 if f"{name}:{span}" in lines.split("\n") else -5.0)
        return out

    def greedy_until(self, context, until, max_tokens):
        raise NotImplementedError


def test_span_extraction_finds_the_known_answer_and_abstains_without_one(items):
    metric = load_metric("squad_v2")
    refs = [it.reference() for it in items]
    model = metric.compute(predictions=extract_answers(QuestionAwareLM(), items), references=refs)
    assert model["exact"] == model["f1"] == 100.0
    unanswerable = metric.compute(predictions=always_unanswerable(items), references=refs)
    assert unanswerable["NoAns_exact"] == 100.0 and unanswerable["HasAns_exact"] == 0.0
    first = metric.compute(predictions=first_sentence(items), references=refs)
    assert first["NoAns_exact"] == 0.0 and 0.0 < first["HasAns_f1"] < 100.0  # the name is not the answer
    too_strict = extract_answers(QuestionAwareLM(), items, no_answer_margin=10.0)
    assert all(p["prediction_text"] == "" for p in too_strict)
