"""Corpus BLEU through sacrebleu, as a local `evaluate` module (the hub's `bleu` needs the network).

The score is `sacrebleu.corpus_bleu(predictions, transposed references)` itself, with
sacrebleu's defaults (13a tokenisation, exponential smoothing), so numbers match sacrebleu
exactly and carry its signature.
"""
import datasets
import evaluate
import sacrebleu

_DESCRIPTION = "Corpus BLEU (sacrebleu): geometric mean of clipped 1-4-gram precisions times a brevity penalty."
_KWARGS = """
Args:
    predictions: list of strings (system outputs).
    references: list of lists of strings, the same number of references for every prediction
        (or a list of strings: one reference each).
    tokenize, lowercase, smooth_method, smooth_value, use_effective_order: passed to sacrebleu.BLEU.
Returns: score (0-100), counts, totals, precisions (percent), bp, sys_len, ref_len, signature.
"""


def transpose_references(references: list) -> list[list[str]]:
    """Per-prediction reference lists -> sacrebleu's reference streams (one list per reference slot)."""
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    counts = {len(r) for r in refs}
    if len(counts) != 1:
        raise ValueError(f"every prediction needs the same number of references, got counts {sorted(counts)}")
    return [list(stream) for stream in zip(*refs)]


class Bleu(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="Post, 2018 (sacreBLEU)", inputs_description=_KWARGS,
            features=[datasets.Features({"predictions": datasets.Value("string"),
                                         "references": datasets.Sequence(datasets.Value("string"))}),
                      datasets.Features({"predictions": datasets.Value("string"),
                                         "references": datasets.Value("string")})])

    def _compute(self, predictions, references, tokenize="13a", lowercase=False, smooth_method="exp",
                 smooth_value=None, use_effective_order=False):
        bleu = sacrebleu.BLEU(tokenize=tokenize, lowercase=lowercase, smooth_method=smooth_method,
                              smooth_value=smooth_value, effective_order=use_effective_order)
        result = bleu.corpus_score(list(predictions), transpose_references(references))
        return {"score": result.score, "counts": result.counts, "totals": result.totals,
                "precisions": result.precisions, "bp": result.bp, "sys_len": result.sys_len,
                "ref_len": result.ref_len, "signature": str(bleu.get_signature())}
