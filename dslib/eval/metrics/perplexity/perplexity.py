"""Perplexity from per-token negative log-likelihoods, as a local `evaluate` module.

The hub's `perplexity` metric takes a model *name* and loads it from the hub inside the
metric. That cannot work offline, and an `evaluate` module only holds rows of plain
features, not a live model object. So the model runs outside (dslib.eval.perplexity
computes the NLLs, with the segment/memory handling stated there) and this module only
aggregates: its inputs are, per document, the natural-log NLL of every scored token and
the UTF-8 byte count of the scored text. Rows add up, so `add_batch` works as usual.
"""
import math

import datasets
import evaluate

_DESCRIPTION = "Token perplexity exp(mean NLL) and bits per byte from per-token NLLs (nats)."
_KWARGS = """
Args:
    token_nlls: list of lists of floats, one list per document: -log p(token | context), in nats.
    num_bytes: list of ints, the UTF-8 bytes of the text each document's tokens spell.
Returns:
    perplexity: exp(sum NLL / number of tokens), over all documents' tokens together;
    mean_nll: sum NLL / number of tokens (nats per token);
    bits_per_byte: sum NLL / ln 2 / sum bytes (tokenizer-independent);
    byte_perplexity: exp(sum NLL / sum bytes);
    num_tokens, num_bytes: the totals;
    perplexities: exp(mean NLL) of each document (nan for an empty one).
"""


class Perplexity(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"token_nlls": datasets.Sequence(datasets.Value("float64")),
                                        "num_bytes": datasets.Value("int64")}))

    def _compute(self, token_nlls, num_bytes):
        total = sum(sum(doc) for doc in token_nlls)
        tokens = sum(len(doc) for doc in token_nlls)
        n_bytes = sum(num_bytes)
        if tokens == 0:
            raise ValueError("no tokens to score")
        return {
            "perplexity": math.exp(total / tokens),
            "mean_nll": total / tokens,
            "bits_per_byte": total / math.log(2) / n_bytes if n_bytes else float("nan"),
            "byte_perplexity": math.exp(total / n_bytes) if n_bytes else float("nan"),
            "num_tokens": tokens,
            "num_bytes": n_bytes,
            "perplexities": [math.exp(sum(doc) / len(doc)) if len(doc) else float("nan") for doc in token_nlls],
        }
