"""Packed token shards: a corpus tokenized once, split by document, stored as numpy files.

Every document is encoded and followed by the end-of-text id, and the documents of each
split are concatenated into one token stream, cut into ``.npy`` shards of at most
``shard_tokens`` tokens (uint16 when the vocabulary fits, else uint32). The folder is named
by a content key (tokenizer file + corpus fingerprint + split settings), built under a
temporary name and renamed into place, so a reader sees a complete folder or none.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dslib.data.tokenizer import Tokenizer
from dslib.env import cache_dir

FORMAT_VERSION = "dslib-shards-v1"
INDEX_FILE = "index.json"
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Shards:
    """A shard folder and its index; ``tokens(split)`` gives the split's token stream."""

    folder: Path
    index: dict[str, Any]

    @property
    def vocab_size(self) -> int:
        return int(self.index["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.index["eos_id"])

    def num_tokens(self, split: str) -> int:
        return int(sum(self.index["splits"][split]["tokens"]))

    def num_documents(self, split: str) -> int:
        return int(self.index["splits"][split]["documents"])

    def tokens(self, split: str) -> np.ndarray:
        """The split's whole stream: a read-only memory map when it is one shard."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        parts = [np.load(self.folder / name, mmap_mode="r") for name in self.index["splits"][split]["files"]]
        if not parts:
            return np.zeros(0, dtype=self.index["dtype"])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def corpus_fingerprint(texts: Sequence[str]) -> str:
    """A hash of the documents in order (a changed, added or reordered document changes it)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()


def _tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    if tokenizer.path is None:
        raise ValueError("the tokenizer has no file: save it (get_tokenizer caches one) so shards can name it")
    return hashlib.sha256(Path(tokenizer.path).read_bytes()).hexdigest()


def shard_key(texts: Sequence[str], tokenizer: Tokenizer, val_fraction: float, seed: int,
              shard_tokens: int) -> str:
    settings = f"{FORMAT_VERSION}\0{val_fraction!r}\0{seed}\0{shard_tokens}\0"
    digest = hashlib.sha256(settings.encode())
    digest.update(_tokenizer_fingerprint(tokenizer).encode())
    digest.update(corpus_fingerprint(texts).encode())
    return digest.hexdigest()[:16]


def split_documents(num_docs: int, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation documents: a seeded random subset, at least one document
    in each split when there are two or more documents and val_fraction > 0."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(num_docs * val_fraction))
    if val_fraction > 0 and num_docs >= 2:
        n_val = min(max(n_val, 1), num_docs - 1)
    is_val = np.zeros(num_docs, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(num_docs)[:n_val]] = True
    return is_val


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def _encode_stream(tokenizer: Tokenizer, texts: Iterable[str], dtype: np.dtype,
                   chunk_docs: int = 2048) -> np.ndarray:
    """Encode documents in chunks, each followed by end-of-text, into one flat array."""
    texts = list(texts)
    pieces = []
    for start in range(0, len(texts), chunk_docs):
        for ids in tokenizer.encode_batch(texts[start:start + chunk_docs]):
            pieces.append(np.asarray(ids, dtype=dtype))
            pieces.append(np.asarray([tokenizer.eos_id], dtype=dtype))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


def _write_split(folder: Path, split: str, stream: np.ndarray, shard_tokens: int) -> dict[str, Any]:
    files, counts = [], []
    for number, start in enumerate(range(0, len(stream), shard_tokens)):
        name = f"{split}_{number:04d}.npy"
        piece = stream[start:start + shard_tokens]
        with open(folder / name, "wb") as f:
            np.save(f, piece)
            f.flush()
            os.fsync(f.fileno())
        files.append(name)
        counts.append(int(len(piece)))
    return {"files": files, "tokens": counts}


def build_shards(texts: Iterable[str], tokenizer: Tokenizer, val_fraction: float = 0.05, seed: int = 0,
                 shard_tokens: int = 1 << 24, cache: Path | None = None) -> Shards:
    """Tokenize ``texts`` into train/val shards, or load them if this content was built before.

    ``texts`` are documents (strings, or a ``datasets.Dataset`` column such as
    ``ds["text"]``). The split is by document: a document's tokens are all in one split.
    """
    texts = list(texts)
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
    root = cache or cache_dir() / "shards"
    folder = root / shard_key(texts, tokenizer, val_fraction, seed, shard_tokens)
    if (folder / INDEX_FILE).exists():
        return load_shards(folder)

    is_val = split_documents(len(texts), val_fraction, seed)
    dtype = _token_dtype(tokenizer.vocab_size)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        splits = {}
        for split, mask in (("train", ~is_val), ("val", is_val)):
            stream = _encode_stream(tokenizer, (t for t, keep in zip(texts, mask) if keep), dtype)
            splits[split] = {**_write_split(staging, split, stream, shard_tokens), "documents": int(mask.sum())}
        index = {"format": FORMAT_VERSION, "dtype": dtype.name, "vocab_size": tokenizer.vocab_size,
                 "eos_id": tokenizer.eos_id, "tokenizer": str(tokenizer.path),
                 "tokenizer_sha256": _tokenizer_fingerprint(tokenizer),
                 "corpus_sha256": corpus_fingerprint(texts), "val_fraction": val_fraction, "seed": seed,
                 "shard_tokens": shard_tokens, "splits": splits}
        (staging / INDEX_FILE).write_text(json.dumps(index, indent=2))
        os.replace(staging, folder)  # atomic; fails if another process got there first
    except OSError:
        if not (folder / INDEX_FILE).exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_shards(folder)


def load_shards(folder: str | Path) -> Shards:
    """Open a shard folder written by ``build_shards``."""
    folder = Path(folder)
    index = json.loads((folder / INDEX_FILE).read_text())
    if index.get("format") != FORMAT_VERSION:
        raise ValueError(f"{folder} holds format {index.get('format')!r}, expected {FORMAT_VERSION!r}")
    return Shards(folder, index)


def corpus_shards(vocab_size: int, source: str = "kjv", limit: int = 20000) -> Path:
    """Tokenise the first ``limit`` documents of an installed corpus once (cached BPE and shards);
    returns the shard folder, which ranks and stages read with ``load_shards``."""
    from dslib.data.sources import load
    from dslib.data.tokenizer import get_tokenizer

    texts = list(load(source, limit=limit)["text"])
    return build_shards(texts, get_tokenizer(texts, vocab_size)).folder
