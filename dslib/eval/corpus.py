"""The chapter's training corpus: several domains, with the held-out documents of each.

Documents of every domain go through one tokenizer and one `build_shards` call; the
held-out (validation) documents are the ones `dslib.data.shards.split_documents` puts in
the val split for the same (count, fraction, seed), so nothing evaluated here was trained on.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from dslib.data.shards import split_documents


def chunk_words(text: str, words_per_chunk: int) -> list[str]:
    """Long documents (Shakespeare scenes) cut into documents of about words_per_chunk words."""
    words = text.split(" ")
    return [" ".join(words[i:i + words_per_chunk]) for i in range(0, len(words), words_per_chunk)]


def flatten(domains: Mapping[str, Sequence[str]]) -> tuple[list[str], list[str]]:
    """{domain: documents} -> (texts, domain of each text), domains in the given order."""
    texts, labels = [], []
    for domain, docs in domains.items():
        texts += list(docs)
        labels += [domain] * len(docs)
    return texts, labels


def held_out(texts: Sequence[str], labels: Sequence[str], val_fraction: float, seed: int) -> dict[str, list[str]]:
    """{domain: its documents in the validation split of build_shards(texts, ..., val_fraction, seed)}."""
    is_val = split_documents(len(texts), val_fraction, seed)
    out: dict[str, list[str]] = {label: [] for label in dict.fromkeys(labels)}
    for text, label, val in zip(texts, labels, is_val):
        if val:
            out[label].append(text)
    return out
