"""A byte-level BPE tokenizer trained with ``tokenizers``, saved, reloaded, cached by content.

The cache key is a hash of the training texts and settings, so the same corpus gives the
same tokenizer file without retraining, and a changed corpus can never reuse a stale one.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from dslib.env import cache_dir
from dslib.io import atomic_path

EOS = "<|endoftext|>"
FORMAT_VERSION = "bytebpe-v1"  # bump when the training recipe changes


class Tokenizer:
    """A thin wrapper: encode/decode, the vocabulary size and the end-of-text id."""

    def __init__(self, tokenizer: HFTokenizer, path: Path | None = None) -> None:
        self._tok = tokenizer
        self.path = path
        self.eos_id: int = tokenizer.token_to_id(EOS)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        return cls(HFTokenizer.from_file(str(path)), Path(path))

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts))]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids))

    def bytes_per_token(self, texts: Iterable[str]) -> float:
        """Compression ratio: UTF-8 bytes of the texts per token."""
        texts = list(texts)
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        n_tokens = sum(len(ids) for ids in self.encode_batch(texts))
        return n_bytes / max(n_tokens, 1)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` (every byte is in the alphabet: no unknown token)."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(tok)


def content_key(texts: list[str], vocab_size: int) -> str:
    digest = hashlib.sha256(f"{FORMAT_VERSION}\0{vocab_size}\0".encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def get_tokenizer(texts: Iterable[str], vocab_size: int, cache: Path | None = None) -> Tokenizer:
    """Load the tokenizer for (texts, vocab_size) from the cache, training it on a miss."""
    if vocab_size < 257:
        raise ValueError(f"vocab_size must be at least 257 (256 bytes + end-of-text), got {vocab_size}")
    texts = list(texts)
    folder = cache or cache_dir() / "tokenizers"
    path = folder / f"{content_key(texts, vocab_size)}.json"
    if path.exists():
        return Tokenizer.load(path)
    tok = train_tokenizer(texts, vocab_size)
    with atomic_path(path) as tmp:  # a concurrent reader never sees half a file
        tok.save(tmp)
    tok.path = path
    return tok
