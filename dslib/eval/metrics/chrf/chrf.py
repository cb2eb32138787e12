"""Corpus chrF (character n-gram F-score) through sacrebleu, as a local `evaluate` module.

chrF credits partial word matches ("thou" vs "you" share nothing, "saith" vs "said" share
"sai"), which suits archaic-to-modern rewriting better than word n-gram BLEU.
"""
import datasets
import evaluate
import sacrebleu

_KWARGS = """
Args:
    predictions: list of strings; references: list of lists of strings (same count each) or list of strings.
    char_order (6), word_order (0; 2 gives chrF++), beta (2), lowercase, whitespace: passed to sacrebleu.CHRF.
Returns: score (0-100), char_order, word_order, beta, signature.
"""


class Chrf(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Corpus chrF / chrF++ (sacrebleu).", citation="Popovic, 2015 (chrF)",
            inputs_description=_KWARGS,
            features=[datasets.Features({"predictions": datasets.Value("string"),
                                         "references": datasets.Sequence(datasets.Value("string"))}),
                      datasets.Features({"predictions": datasets.Value("string"),
                                         "references": datasets.Value("string")})])

    def _compute(self, predictions, references, char_order=6, word_order=0, beta=2, lowercase=False,
                 whitespace=False):
        refs = [[r] if isinstance(r, str) else list(r) for r in references]
        if len({len(r) for r in refs}) != 1:
            raise ValueError("every prediction needs the same number of references")
        chrf = sacrebleu.CHRF(char_order=char_order, word_order=word_order, beta=beta,
                              lowercase=lowercase, whitespace=whitespace)
        result = chrf.corpus_score(list(predictions), [list(s) for s in zip(*refs)])
        return {"score": result.score, "char_order": char_order, "word_order": word_order, "beta": beta,
                "signature": str(chrf.get_signature())}
