"""Token shards (split by document, cached by content, atomic) and the Transformer-XL loader."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dslib.data import sources
from dslib.data.loader import StreamLoader
from dslib.data.shards import build_shards, load_shards
from dslib.data.tokenizer import get_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    texts = sources.load("kjv", limit=400)["text"]
    tok = get_tokenizer(texts, 320, cache=tmp_path_factory.mktemp("tok"))
    return texts, tok


def test_shards_split_by_document_and_round_trip(corpus, tmp_path: Path) -> None:
    texts, tok = corpus
    shards = build_shards(texts, tok, val_fraction=0.1, seed=3, shard_tokens=1000, cache=tmp_path)
    assert shards.index["dtype"] == "uint16"
    assert shards.num_documents("train") + shards.num_documents("val") == len(texts)
    assert shards.num_documents("val") == 40
    assert len(shards.index["splits"]["train"]["files"]) > 1  # several shards, read as one stream
    decoded = set()
    for split in ("train", "val"):
        stream = shards.tokens(split)
        assert len(stream) == shards.num_tokens(split)
        # documents end with eos; splitting the stream at eos gives back exactly the documents
        ends = np.flatnonzero(stream == tok.eos_id)
        assert len(ends) == shards.num_documents(split) and ends[-1] == len(stream) - 1
        starts = np.concatenate([[0], ends[:-1] + 1])
        decoded |= {tok.decode(stream[a:b].tolist()) for a, b in zip(starts, ends)}
    assert decoded == set(texts)


def test_shards_are_cached_by_content(corpus, tmp_path: Path) -> None:
    texts, tok = corpus
    first = build_shards(texts, tok, cache=tmp_path)
    stamp = (first.folder / "index.json").stat().st_mtime_ns
    again = build_shards(texts, tok, cache=tmp_path)
    assert again.folder == first.folder and (again.folder / "index.json").stat().st_mtime_ns == stamp
    changed = build_shards([texts[0] + " amen"] + list(texts[1:]), tok, cache=tmp_path)
    assert changed.folder != first.folder
    resplit = build_shards(texts, tok, seed=1, cache=tmp_path)
    assert resplit.folder != first.folder
    assert np.array_equal(load_shards(first.folder).tokens("train"), first.tokens("train"))
    # no staging folders are left behind
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_loader_rows_are_contiguous_streams(tmp_path: Path) -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    loader = StreamLoader(tokens, batch_size=4, seq_len=16)
    lane_len = 1000 // 4
    assert loader.steps_per_epoch == (lane_len - 1) // 16
    batches = [loader.next_batch() for _ in range(loader.steps_per_epoch)]
    for idx, targets in batches:
        assert idx.dtype == torch.long and idx.shape == (4, 16) == targets.shape
        assert torch.equal(idx[:, 1:], targets[:, :-1])
    for (_, prev_targets), (next_idx, _) in zip(batches, batches[1:]):
        assert torch.equal(next_idx[:, 0], prev_targets[:, -1])  # segment s+1 continues segment s
    rows = torch.cat([idx for idx, _ in batches], dim=1)
    for b in range(4):
        expected = torch.arange(b * lane_len, b * lane_len + rows.shape[1])
        assert torch.equal(rows[b], expected)
    assert loader.at_start and loader.epoch == 1  # wrapped: the caller drops its memory
    assert torch.equal(loader.next_batch()[0], batches[0][0])


def test_loader_position_round_trips(tmp_path: Path) -> None:
    tokens = np.random.default_rng(0).integers(0, 300, 5000).astype(np.uint16)
    loader = StreamLoader(tokens, batch_size=3, seq_len=8)
    for _ in range(7):
        loader.next_batch()
    resumed = StreamLoader(tokens, batch_size=3, seq_len=8)
    resumed.load_state_dict(loader.state_dict())
    for _ in range(300):  # across an epoch boundary too
        assert all(torch.equal(a, b) for a, b in zip(loader.next_batch(), resumed.next_batch()))
    with pytest.raises(ValueError, match="batch_size"):
        StreamLoader(tokens, batch_size=4, seq_len=8).load_state_dict(loader.state_dict())


def test_loader_rejects_too_few_tokens() -> None:
    with pytest.raises(ValueError, match="too few"):
        StreamLoader(np.arange(40, dtype=np.uint16), batch_size=4, seq_len=10)
