"""Offline corpora, the user's files (bad input included) and the tokenizer."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dslib.data import files, sources, tokenizer


@pytest.mark.parametrize("name", sources.available())
def test_each_source_is_real_text_with_the_columns(name):
    ds = sources.load(name)
    assert ds.column_names == list(sources.COLUMNS)
    assert len(set(ds["id"])) == len(ds)
    assert all(t.strip() for t in ds["text"][:500])
    assert set(ds["source"]) == {name}
    json.loads(ds[0]["meta"])


def test_bibles_are_verse_aligned():
    kjv, web = sources.load("kjv", 3), sources.load("web", 3)
    assert kjv["text"][0] == "In the beginning God created the heaven and the earth."
    assert web["text"][0] == "In the beginning God created the heavens and the earth."
    assert [i.split(":")[1] for i in kjv["id"]] == [i.split(":")[1] for i in web["id"]]
    assert len(sources.load("asv")) == 31102


def test_corpus_sizes():
    hpo = sources.load("hpo")
    assert len(hpo) > 15000 and json.loads(hpo[0]["meta"])["name"]
    play_bytes = sum(len(t.encode()) for t in sources.load("shakespeare")["text"])
    assert play_bytes > 4.5e6  # 37 plays; the issue asks for >= 5 MB of English with the Bibles beside it
    with pytest.raises(ValueError, match="unknown source 'wiki'; available: asv"):
        sources.load("wiki")


def test_user_files_lose_nothing(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b'{"text": "good one", "lang": "en"}\n{"text": broken\n'
                                       b'\n{"body": "wrong field"}\n{"text": 5}\n"\xff\xfe"\n')
    (tmp_path / "b.txt").write_bytes(b"para one\nline two\n\n\npara two\n\n\xff bad para\n")
    pq.write_table(pa.table({"text": ["p1", None], "k": [1, 2]}), tmp_path / "c.parquet")
    read = files.read_files([tmp_path])
    assert [r["text"] for r in read.records] == ["good one", "para one\nline two", "para two", "p1"]
    assert json.loads(read.records[0]["meta"])["lang"] == "en"
    assert [(r["file"].split("/")[-1], r["line"], r["reason"]) for r in read.rejected] == [
        ("a.jsonl", 2, "invalid_json"), ("a.jsonl", 4, "missing_field"), ("a.jsonl", 5, "not_text"),
        ("a.jsonl", 6, "invalid_utf8"), ("b.txt", 7, "invalid_utf8"), ("c.parquet", 2, "not_text")]
    assert read.dataset().column_names == list(sources.COLUMNS)


def test_user_file_errors_are_clear(tmp_path):
    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "c.parquet")
    with pytest.raises(ValueError, match="no column 'text' \\(columns: content\\)"):
        files.read_files([tmp_path / "c.parquet"])
    with pytest.raises(FileNotFoundError):
        files.read_files([tmp_path / "missing.jsonl"])
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        files.read_files([tmp_path / "x.csv"])


def test_tokenizer_round_trip_and_cache(tmp_path):
    texts = list(sources.load("kjv", 2000)["text"]) + list(sources.load("hpo", 1000)["text"])
    tok = tokenizer.get_tokenizer(texts, 600, cache=tmp_path)
    sample = "Hyperkalemia shewed in the kidney — naïve 日本 ✓\n\ttabs"
    assert tok.decode(tok.encode(sample)) == sample
    assert tok.vocab_size == 600 and tok.eos_id == 0
    assert tok.bytes_per_token(texts[:200]) > 2.0
    again = tokenizer.get_tokenizer(texts, 600, cache=tmp_path)
    assert again.path == tok.path and len(list(tmp_path.glob("*.json"))) == 1
    tokenizer.get_tokenizer(texts[:-1], 600, cache=tmp_path)  # other content, other file
    assert len(list(tmp_path.glob("*.json"))) == 2
    with pytest.raises(ValueError, match="vocab_size must be at least 257"):
        tokenizer.get_tokenizer(texts, 100, cache=tmp_path)
