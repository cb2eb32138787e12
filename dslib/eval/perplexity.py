"""Per-token NLLs of a causal LM over a token stream, and perplexity per source.

The model is used through its forward only: `model(idx, mems=None)` -> an object with
`.logits` [B, T, V] and `.mems` (Transformer-XL memories; `None` for models without).
Three ways to cut a stream longer than the model's window (`seq_len`) - they differ in
how much context each scored token sees:
- `memory`: consecutive segments of seq_len, carrying the memories: a token sees its
  segment prefix plus up to `memory_length` cached positions per layer (Transformer-XL's
  evaluation; one forward per token, like training);
- `segments`: the same segments, memory dropped: the first token of every segment is
  predicted from nothing, so perplexity is higher - the cost of no memory;
- `sliding`: windows of seq_len advancing by `stride`, each scoring only its last
  `stride` tokens, so every token after the first window sees >= seq_len - stride tokens
  of context at seq_len / stride times the compute (the usual fixed-context method).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dslib.eval.registry import load_metric

MODES = ("memory", "segments", "sliding")


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")


@torch.no_grad()
def token_nlls(model: nn.Module, ids: Sequence[int] | np.ndarray, seq_len: int, mode: str = "memory",
               stride: int | None = None) -> torch.Tensor:
    """NLL (nats) of ids[1:], each predicted from what precedes it as `mode` allows."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    device = next(model.parameters()).device
    ids = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=device)[None]
    n = ids.size(1)
    was_training = model.training
    model.eval()
    out: list[torch.Tensor] = []
    if mode == "sliding":
        stride = stride or seq_len
        if not 0 < stride <= seq_len:
            raise ValueError(f"stride must be in 1..seq_len={seq_len}, got {stride}")
        scored = 0  # targets ids[1 : scored + 1] are done
        while scored < n - 1:
            end = min(scored + stride, n - 1)  # score targets up to ids[end]
            start = max(0, end - seq_len)
            logits = model(ids[:, start:end]).logits
            new = end - scored
            out.append(_nll(logits[:, -new:], ids[:, end - new + 1:end + 1]))
            scored = end
    else:
        mems = None
        for start in range(0, n - 1, seq_len):
            end = min(start + seq_len, n - 1)
            result = model(ids[:, start:end], mems=mems)
            mems = result.mems if mode == "memory" else None
            out.append(_nll(result.logits, ids[:, start + 1:end + 1]))
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def document_stream(texts: Sequence[str], tokenizer) -> tuple[list[int], list[int], list[int]]:
    """[eos] doc1 [eos] doc2 [eos] ... as in the training shards; returns (ids, doc_of_target,
    bytes per doc): target j (= ids[j + 1]) belongs to the document whose text or closing
    eos it is, so every document's own tokens are scored, conditioned on its predecessors."""
    ids, owner = [tokenizer.eos_id], []
    for doc, encoded in enumerate(tokenizer.encode_batch(list(texts))):
        ids += encoded + [tokenizer.eos_id]
        owner += [doc] * (len(encoded) + 1)
    return ids, owner, [len(t.encode("utf-8")) for t in texts]


def perplexity(model: nn.Module, tokenizer, texts: Sequence[str], seq_len: int, mode: str = "memory",
               stride: int | None = None) -> dict:
    """Perplexity of `texts` (read as one stream) through the local `perplexity` metric module:
    token perplexity, bits per byte, and per-document perplexities."""
    ids, owner, num_bytes = document_stream(texts, tokenizer)
    return _per_document_metric(token_nlls(model, ids, seq_len, mode, stride).cpu().numpy(), owner, num_bytes)


def unigram_perplexity(train_counts: np.ndarray, tokenizer, texts: Sequence[str]) -> dict:
    """The baseline a language model must beat: every token predicted from its training
    frequency alone, add-one smoothed, p(t) = (count(t) + 1) / (N + V), scored on exactly the
    tokens `perplexity` scores (the same stream, the same metric module)."""
    ids, owner, num_bytes = document_stream(texts, tokenizer)
    counts = np.asarray(train_counts, dtype=np.float64)
    log_p = np.log(counts + 1.0) - np.log(counts.sum() + len(counts))
    return _per_document_metric(-log_p[np.asarray(ids[1:])], owner, num_bytes)


def _per_document_metric(nlls: np.ndarray, owner: list[int], num_bytes: list[int]) -> dict:
    """The `perplexity` module over NLLs of document_stream's targets, grouped by document."""
    bounds = np.searchsorted(np.asarray(owner), np.arange(len(num_bytes) + 1))
    per_doc = [nlls[bounds[i]:bounds[i + 1]].tolist() for i in range(len(num_bytes))]
    return load_metric("perplexity").compute(token_nlls=per_doc, num_bytes=num_bytes)
