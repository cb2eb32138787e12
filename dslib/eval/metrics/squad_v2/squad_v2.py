"""SQuAD v2.0 exact match and F1 with no-answer handling, as a local `evaluate` module.

Follows the official evaluation script (evaluate-v2.0.py): answers are normalised
(lowercase, punctuation removed, articles a/an/the removed, whitespace collapsed); F1 is
over bags of normalised tokens; a question with no gold answer has the gold answer "" and
is answered correctly only by "" (EM = F1 = 1); the score of a question is the max over
its gold answers. With `no_answer_threshold`, a prediction whose no-answer probability
exceeds it counts as "". Scores are percentages, with the HasAns / NoAns breakdown.
Input format is the hub metric's, so code written for `load("squad_v2")` works unchanged.
"""
import collections
import re
import string

import datasets
import evaluate

_KWARGS = """
Args:
    predictions: list of {"id": str, "prediction_text": str, "no_answer_probability": float}.
    references: list of {"id": str, "answers": {"text": [str], "answer_start": [int]}}
        (empty "text" list = unanswerable).
    no_answer_threshold: float (default 1.0): no_answer_probability above it means "no answer".
Returns: exact, f1, total, HasAns_exact, HasAns_f1, HasAns_total, NoAns_exact, NoAns_f1, NoAns_total.
"""

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def compute_exact(gold: str, pred: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(pred))


def compute_f1(gold: str, pred: str) -> float:
    gold_tokens, pred_tokens = normalize_answer(gold).split(), normalize_answer(pred).split()
    if not gold_tokens or not pred_tokens:  # no-answer: right only if both are empty
        return float(gold_tokens == pred_tokens)
    common = collections.Counter(gold_tokens) & collections.Counter(pred_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _mean_percent(scores: dict, ids: list) -> float:
    return 100.0 * sum(scores[i] for i in ids) / len(ids)


class SquadV2(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="SQuAD v2.0 exact match / F1 with unanswerable questions.",
            citation="Rajpurkar, Jia and Liang, 2018", inputs_description=_KWARGS,
            features=datasets.Features({
                "predictions": {"id": datasets.Value("string"), "prediction_text": datasets.Value("string"),
                                "no_answer_probability": datasets.Value("float32")},
                "references": {"id": datasets.Value("string"),
                               "answers": datasets.Sequence({"text": datasets.Value("string"),
                                                             "answer_start": datasets.Value("int32")})},
            }))

    def _compute(self, predictions, references, no_answer_threshold=1.0):
        preds = {p["id"]: "" if p["no_answer_probability"] > no_answer_threshold else p["prediction_text"]
                 for p in predictions}
        exact, f1, has_answer = {}, {}, []
        for ref in references:
            qid = ref["id"]
            if qid not in preds:
                raise ValueError(f"no prediction for question {qid!r}")
            golds = [t for t in ref["answers"]["text"] if normalize_answer(t)] or [""]
            if golds != [""]:
                has_answer.append(qid)
            exact[qid] = max(compute_exact(g, preds[qid]) for g in golds)
            f1[qid] = max(compute_f1(g, preds[qid]) for g in golds)
        ids = [ref["id"] for ref in references]
        no_answer = [i for i in ids if i not in set(has_answer)]
        result = {"exact": _mean_percent(exact, ids), "f1": _mean_percent(f1, ids), "total": len(ids)}
        for name, subset in (("HasAns", has_answer), ("NoAns", no_answer)):
            if subset:
                result.update({f"{name}_exact": _mean_percent(exact, subset),
                               f"{name}_f1": _mean_percent(f1, subset), f"{name}_total": len(subset)})
        return result
