"""Chapter 10: metric modules against hand-computed values, perplexity, LM interface, robustness."""
from __future__ import annotations

import math

import pytest
import sacrebleu

from dslib.eval import available_metrics, combine, load_metric


@pytest.fixture(scope="module")
def metrics():
    return {name: load_metric(name) for name in ("bleu", "chrf", "perplexity", "squad_v2")}


def test_registry_lists_the_local_modules():
    assert {"bleu", "chrf", "perplexity", "squad_v2"} <= set(available_metrics())
    with pytest.raises(KeyError, match="unknown metric"):
        load_metric("squad")


def test_bleu_hand_computed(metrics):
    # clipped n-gram matches 5/6, 3/5, 2/4, 1/3; equal lengths so BP = 1
    out = metrics["bleu"].compute(predictions=["the cat sat on the mat"], references=[["the cat sat on a mat"]])
    assert out["counts"] == [5, 3, 2, 1] and out["totals"] == [6, 5, 4, 3]
    assert out["score"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    # a 3-word hypothesis for a 6-word reference: BP = exp(1 - 6/3)
    short = metrics["bleu"].compute(predictions=["the cat sat"], references=["the cat sat on a mat"],
                                    use_effective_order=True)
    assert short["bp"] == pytest.approx(math.exp(1 - 6 / 3))


def test_bleu_equals_sacrebleu_corpus_bleu(metrics):
    preds = ["And God said, Let there be light: and there was light.", "In the beginning God created.",
             "Jesus wept", "the earth was without form, and void"]
    refs = [["God said, \"Let there be light,\" and there was light.", "And God said: let there be light."],
            ["In the beginning, God created the heavens and the earth.", "In the beginning God made the heaven."],
            ["Jesus wept.", "Jesus cried."],
            ["The earth was formless and empty.", "And the earth was void."]]
    expected = sacrebleu.corpus_bleu(preds, [list(s) for s in zip(*refs)])
    out = metrics["bleu"].compute(predictions=preds, references=refs)
    assert out["score"] == expected.score and out["counts"] == expected.counts
    chrf = metrics["chrf"].compute(predictions=preds, references=refs)
    assert chrf["score"] == sacrebleu.corpus_chrf(preds, [list(s) for s in zip(*refs)]).score
    with pytest.raises(ValueError, match="same number of references"):
        metrics["bleu"].compute(predictions=["a", "b"], references=[["a"], ["b", "c"]])


def test_chrf_bounds(metrics):
    assert metrics["chrf"].compute(predictions=["thou art"], references=["thou art"])["score"] == 100.0
    assert metrics["chrf"].compute(predictions=["xyz"], references=["abc"])["score"] == 0.0


def test_perplexity_hand_computed(metrics):
    out = metrics["perplexity"].compute(token_nlls=[[math.log(2), math.log(2)], [math.log(8)]], num_bytes=[1, 2])
    # mean NLL = (2 ln2 + 3 ln2) / 3 tokens; bits per byte = 5 bits / 3 bytes
    assert out["perplexity"] == pytest.approx(2 ** (5 / 3))
    assert out["bits_per_byte"] == pytest.approx(5 / 3)
    assert out["perplexities"] == pytest.approx([2.0, 8.0]) and out["num_tokens"] == 3


def _squad(pred_text, golds, qid="q", na_prob=0.0):
    return ({"id": qid, "prediction_text": pred_text, "no_answer_probability": na_prob},
            {"id": qid, "answers": {"text": golds, "answer_start": [0] * len(golds)}})


@pytest.mark.parametrize("pred, golds, exact, f1", [
    ("The Cat!", ["a cat"], 100.0, 100.0),                          # case, punctuation, articles
    ("black cat", ["the cat"], 0.0, 100 * 2 * (1 / 2) * 1 / (1 / 2 + 1)),  # P=1/2, R=1
    ("dog", ["cat", "dog"], 100.0, 100.0),                          # max over gold answers
    ("", [], 100.0, 100.0),                                         # no-answer answered with ""
    ("cat", [], 0.0, 0.0),                                          # answered an unanswerable one
    ("", ["cat"], 0.0, 0.0),                                        # abstained on an answerable one
    ("cat cat mat", ["cat mat mat"], 0.0, 100 * 2 / 3),             # token bags: overlap 2 of 3
])
def test_squad_v2_hand_computed(metrics, pred, golds, exact, f1):
    p, r = _squad(pred, golds)
    out = metrics["squad_v2"].compute(predictions=[p], references=[r])
    assert out["exact"] == pytest.approx(exact) and out["f1"] == pytest.approx(f1)


def test_squad_v2_breakdown_and_threshold(metrics):
    pairs = [_squad("cat", ["cat"], "a"), _squad("dog", [], "b", na_prob=0.9), _squad("", [], "c")]
    preds, refs = zip(*pairs)
    out = metrics["squad_v2"].compute(predictions=list(preds), references=list(refs))
    assert (out["HasAns_total"], out["NoAns_total"]) == (1, 2)
    assert out["NoAns_exact"] == pytest.approx(50.0) and out["exact"] == pytest.approx(200 / 3)
    thresholded = metrics["squad_v2"].compute(predictions=list(preds), references=list(refs),
                                              no_answer_threshold=0.5)
    assert thresholded["NoAns_exact"] == 100.0 and thresholded["exact"] == 100.0


def test_combine_over_local_modules():
    preds, refs = ["the cat sat on the mat"], [["the cat sat on a mat"]]
    out = combine(["bleu", "chrf"]).compute(predictions=preds, references=refs)
    assert out["bleu_score"] == pytest.approx(sacrebleu.corpus_bleu(preds, [["the cat sat on a mat"]]).score)
    assert out["chrf_score"] == pytest.approx(sacrebleu.corpus_chrf(preds, [["the cat sat on a mat"]]).score)
