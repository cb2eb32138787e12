"""The data pipeline: each step on hand-made cases, the funnel invariant, bad input."""
from __future__ import annotations

import json

import datasets
import numpy as np
import pandas as pd
import pytest

from dslib.data import clean, config, dedup, files, pipeline, quality

VERSES = [
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "And God said, Let there be light: and there was light.",
    "And God saw the light, that it was good: and God divided the light from the darkness.",
    "And God called the light Day, and the darkness he called Night.",
]


def corpus(texts: list[str]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"id": [f"d{i}" for i in range(len(texts))], "text": texts,
                                       "source": ["test"] * len(texts), "meta": ["{}"] * len(texts)})


def steps(**near) -> list:
    return config.build_steps(config.parse_config({"steps": [
        {"kind": "clean"}, {"kind": "quality"}, {"kind": "exact_dedup"},
        {"kind": "near_dedup", "threshold": 0.5, "num_perm": 128, "shingle_size": 3, **near}]}))


def test_normalize_nfkc_controls_whitespace():
    assert clean.normalize("ＦＵＬＬ\u00a0width\x00 ﬁne\u200b  \t text\r\n\n\n\nend  ") == "FULL width fine text\n\nend"


TERMINAL = ("\x1b[31mWarning:\x1b[0m the \u202eevil\u202c file \x1b]0;a title\x07was \x1b[1;32;40mgreen\x1b[m, "
            "\x1b]8;;http://x.test\x1b\\a link\x1b]8;;\x1b\\ and \u2066isolated\u2069\x00 \x1b(Btext.")


def test_normalize_removes_escape_sequences_and_bidi_controls():
    """Whole ANSI/CSI and OSC sequences go before control characters, else ESC alone goes and
    "[31m" stays; bidi overrides and isolates (which can reorder what a reader sees) go too."""
    assert clean.normalize(TERMINAL) == "Warning: the evil file was green, a link and isolated text."
    assert clean.normalize("\u061c\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069x") == "x"
    assert clean.normalize("[31m is text, ESC alone: \x1b") == "[31m is text, ESC alone:"


def test_the_funnel_counts_what_cleaning_removed(tmp_path):
    result = pipeline.run_pipeline(corpus(VERSES + [TERMINAL, "\x1b[2J\u202e"]), steps(), tmp_path)
    kept = "".join(result.kept["text"])
    assert not any(c in kept for c in "\x1b\u202e\u202c\u2066\u2069") and "[31m" not in kept
    edits = {e["edit"]: (e["docs"], e["count"]) for e in result.funnel.edits if e["step"] == "clean"}
    assert edits == {"escape_sequences": (2, 9), "bidi_controls": (2, 5), "control_characters": (1, 1)}
    assert json.loads((tmp_path / "funnel.json").read_text())["edits"] == result.funnel.edits
    assert [d["reason"] for d in result.funnel.drops if d["step"] == "clean"] == ["empty"]
    assert "text" in result.kept.column_names and not any(c.startswith("_") for c in result.kept.column_names)


def test_planted_near_duplicate_dropped_with_reason(tmp_path):
    near = VERSES[1].replace("darkness", "the darkness")  # one word more: Jaccard well above 0.5
    result = pipeline.run_pipeline(corpus(VERSES + [near]), steps(), tmp_path)
    rejected = result.rejected("near_dedup")
    assert list(rejected["id"]) == ["d5"] and list(rejected["reason"]) == ["near_duplicate"]
    assert "d1" in rejected["detail"][0]
    assert result.kept["id"] == [f"d{i}" for i in range(5)]


def test_exact_duplicate_after_cleaning(tmp_path):
    result = pipeline.run_pipeline(corpus(VERSES + ["  " + VERSES[2].replace(" ", "\u00a0 ")]), steps(), tmp_path)
    assert result.rejected("exact_dedup")["reason"].tolist() == ["exact_duplicate"]


def test_quality_rules_name_the_failing_rule(tmp_path):
    bad = {"symbols": "@#$%^&*()!~ <>?{}[] ///*** +++ ===", "digits": "12 34 56 78 90 12 34 a",
           "short": "Amen.", "long_words": "Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism xx"}
    result = pipeline.run_pipeline(corpus(VERSES + list(bad.values())), steps(), tmp_path)
    reasons = dict(zip(result.rejected("quality")["text"], result.rejected("quality")["reason"]))
    assert reasons[bad["symbols"]] == "symbol_ratio"
    assert reasons[bad["digits"]] == "digit_ratio"
    assert reasons[bad["short"]] == "too_few_words"
    assert reasons[bad["long_words"]] == "mean_word_length"


def test_repetition_rules_on_long_documents():
    cfg = config.QualityConfig()
    spam = " ".join(["buy cheap pills now"] * 30)
    assert quality.failed_rule(quality.document_stats(spam, [2, 3, 4], 50), cfg)[0] == "repeated_2grams"
    lines = "\n".join(["the same line again and again"] * 20)
    assert quality.failed_rule(quality.document_stats(lines, [2, 3, 4], 50), cfg)[0] == "repeated_lines"


def test_funnel_adds_up_in_documents_and_bytes(tmp_path):
    texts = VERSES + VERSES[:2] + ["", "@@@@ #### $$$$"]
    result = pipeline.run_pipeline(corpus(texts), steps(), tmp_path)
    f = result.funnel
    assert f.input_docs == len(texts) == len(result.kept) + sum(d["docs"] for d in f.drops)
    assert f.input_bytes == sum(len(t.encode()) for t in texts) == f.kept_bytes + sum(d["bytes"] for d in f.drops)
    assert len(result.rejected()) == len(texts) - len(result.kept)
    assert json.loads((tmp_path / "funnel.json").read_text())["input_docs"] == len(texts)


def test_funnel_check_catches_a_lost_document():
    class LosesOne(pipeline.CorpusStep):
        name = "lossy"

        def run(self, ds, num_proc=1):
            return pipeline.with_columns(ds.select(range(len(ds) - 1)), {pipeline.DROP: [""] * (len(ds) - 1),
                                                                        pipeline.DETAIL: [""] * (len(ds) - 1)})

    with pytest.raises(AssertionError, match="lossy"):
        pipeline.run_pipeline(corpus(VERSES), [LosesOne()], "/tmp/dslib-test-lossy")


def test_minhash_estimate_tracks_exact_jaccard():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(500)]
    base = list(rng.choice(vocab, 200))
    texts = [" ".join(base), " ".join(base[:150] + list(rng.choice(vocab, 50))), " ".join(rng.choice(vocab, 200))]
    sh = dedup.shingle(texts, 2)
    sig = dedup.signatures(sh, 256)
    pairs = np.array([[0, 1], [0, 2]])
    assert np.allclose(dedup.estimated_jaccard(sig, pairs), dedup.exact_jaccard(sh, pairs), atol=0.08)


def test_bands_follow_threshold():
    bands, rows = dedup.choose_bands(0.8, 128)
    assert bands * rows <= 128
    assert dedup.candidate_probability(0.9, bands, rows) > 0.9 > 0.01 > dedup.candidate_probability(0.5, bands, rows)


def pairs_sharing_a_band(sig: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    """Brute force: every (i, j), i < j, whose signatures agree on all rows of some band."""
    n = len(sig)
    return {(i, j) for i in range(n) for j in range(i + 1, n)
            if any(np.array_equal(sig[i, b * rows:(b + 1) * rows], sig[j, b * rows:(b + 1) * rows])
                   for b in range(bands))}


def test_lsh_pairs_every_pair_that_shares_a_band():
    """Not only each bucket's first member: 1 and 2 agree everywhere, 0 only on band 0."""
    sig = np.array([[7, 7, 1, 2], [7, 7, 5, 5], [7, 7, 5, 5]], dtype=np.uint32)
    assert dedup.lsh_pairs(sig, 2, 2).tolist() == [[0, 1], [0, 2], [1, 2]]
    rng = np.random.default_rng(0)
    sig = rng.integers(0, 3, size=(60, 8)).astype(np.uint32)  # few values: many shared bands
    active = rng.random(60) < 0.9
    got = {tuple(p) for p in dedup.lsh_pairs(sig, 4, 2, active).tolist()}
    on = np.flatnonzero(active)
    assert got == {(on[i], on[j]) for i, j in pairs_sharing_a_band(sig[on], 4, 2)}


def test_lsh_pairs_bound_huge_buckets():
    """In a bucket larger than bucket_window + 1, each member pairs with the next bucket_window."""
    sig = np.zeros((10, 4), dtype=np.uint32)
    got = dedup.lsh_pairs(sig, 2, 2, bucket_window=3).tolist()
    assert got == [[i, j] for i in range(10) for j in range(i + 1, min(i + 4, 10))]
    assert len(dedup.lsh_pairs(sig, 2, 2, bucket_window=9)) == 45


def test_every_true_pair_sharing_a_band_is_found():
    """The same verse in KJV and ASV: a pair over the threshold whose signatures agree on a
    band ends in one cluster (the signatures' estimate, sd ~0.035 here, rejects some of them)."""
    from dslib.data import nearcheck

    verses = nearcheck.translation_corpus(1500, ("kjv", "asv"))
    texts, known = list(verses.text), nearcheck.known_pairs(verses.verse.values)
    result = dedup.near_duplicates(texts, 0.8)
    sig = dedup.signatures(dedup.shingle(texts, 5), 128)
    keys = dedup.band_keys(sig, result.bands, result.rows)
    true = known[dedup.exact_jaccard(dedup.shingle(texts, 5), known) >= 0.8]
    banded = true[(keys[true[:, 0]] == keys[true[:, 1]]).any(axis=1)]
    assert len(banded) > 100
    assert (result.root[banded[:, 0]] == result.root[banded[:, 1]]).all()
    accepted = result.pairs[result.accepted]
    assert (dedup.exact_jaccard(dedup.shingle(texts, 5), accepted) >= 0.8).all()  # and nothing below it


def test_exact_jaccard_is_the_jaccard_of_the_shingle_sets():
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(["a", "b", "c", "d"], rng.integers(0, 40))) for _ in range(80)]
    sh = dedup.shingle(texts, 2)
    pairs = rng.integers(0, len(texts), size=(300, 2))
    sets = [set(sh.of(d).tolist()) for d in range(len(texts))]
    expected = [len(sets[i] & sets[j]) / len(sets[i] | sets[j]) if sets[i] | sets[j] else 0.0 for i, j in pairs]
    assert dedup.exact_jaccard(sh, pairs).tolist() == expected
    assert dedup.exact_jaccard(sh, pairs, chunk=7).tolist() == expected  # many chunks, some of one pair
    assert dedup.exact_jaccard(sh, np.zeros((0, 2), np.int64)).shape == (0,)


def test_union_find_joins_chains():
    assert dedup.union_find(6, np.array([[3, 4], [1, 3], [0, 5]])).tolist() == [0, 1, 2, 1, 1, 0]


def test_bad_config_names_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("steps:\n  - kind: near_dedup\n    threshold: 1.5\n")
    with pytest.raises(config.ConfigError, match=r"steps\.0\.near_dedup\.threshold"):
        config.load_config(path)
    with pytest.raises(config.ConfigError, match="treshold"):
        config.parse_config({"steps": [{"kind": "near_dedup", "treshold": 0.5}]})
    with pytest.raises(config.ConfigError, match="bands"):
        config.parse_config({"steps": [{"kind": "near_dedup", "bands": 20, "rows": 10}]})


def test_shipped_configs_validate():
    for name in ("default", "medical"):
        assert config.load_config(name).steps


# ---- the user's files --------------------------------------------------------------------

def write_bad_inputs(folder):
    lines = [json.dumps({"text": VERSES[0]}).encode(), b'{"text": "unterminated',
             json.dumps({"text": VERSES[1]}).encode()[:-1] + b'\xff"}', json.dumps({"body": "wrong field"}).encode(),
             json.dumps({"text": ""}).encode(), json.dumps({"text": 42}).encode(),
             json.dumps({"text": "x " * 600_000}).encode(), json.dumps({"text": VERSES[2]}).encode()]
    (folder / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (folder / "b.txt").write_bytes(VERSES[3].encode() + b"\n\n" + b"caf\xe9 latin-1 paragraph\n\n" + VERSES[4].encode())
    pd.DataFrame({"text": [VERSES[0], None], "n": [1, 2]}).to_parquet(folder / "c.parquet")


def test_bad_input_is_counted_never_lost(tmp_path):
    write_bad_inputs(tmp_path)
    read = files.read_files([tmp_path], max_doc_bytes=1_000_000)
    reasons = sorted(r["reason"] for r in read.rejected)
    assert reasons == ["invalid_json", "invalid_utf8", "invalid_utf8", "missing_field", "not_text", "not_text", "too_large"]
    cfg = config.parse_config({"steps": [{"kind": "clean"}, {"kind": "quality"}, {"kind": "exact_dedup"}]})
    result = pipeline.run_files([tmp_path], cfg, tmp_path / "out")
    f = result.funnel
    assert f.input_docs == 13 and f.rows[0]["docs_kept"] == 6  # 8 jsonl lines, 3 paragraphs, 2 rows
    assert {d["reason"] for d in f.drops if d["step"] == "read"} == set(reasons)
    assert [d["reason"] for d in f.drops if d["step"] == "clean"] == ["empty"]
    assert result.rejected("exact_dedup")["detail"].tolist() == ["copy of a.jsonl:1"]  # c.parquet repeats it
    assert len(result.kept) == 4 and f.input_docs == len(result.kept) + len(result.rejected())


def test_wrong_column_is_a_clear_error(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"body": VERSES[0]}) + "\n")
    with pytest.raises(ValueError, match="fields found: body"):
        files.read_files([tmp_path / "a.jsonl"])
    pd.DataFrame({"content": VERSES}).to_parquet(tmp_path / "c.parquet")
    with pytest.raises(ValueError, match="columns: content"):
        files.read_files([tmp_path / "c.parquet"])


def test_a_step_kind_used_twice_is_counted_apart(tmp_path):
    cfg = config.parse_config({"steps": [{"kind": "quality", "min_words": 3}, {"kind": "quality", "min_words": 12}]})
    result = pipeline.run_pipeline(corpus(VERSES + ["Amen."]), config.build_steps(cfg), tmp_path)
    assert [r["step"] for r in result.funnel.rows] == ["read", "quality", "quality_2"]
    assert len(result.rejected("quality")) == 1 and len(result.rejected("quality_2")) == 2


def test_nothing_dropped_and_nothing_readable(tmp_path):
    result = pipeline.run_pipeline(corpus(VERSES), steps(), tmp_path / "clean_run")
    assert len(result.kept) == 5 and result.rejected().empty
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": 1}\n{broken\n')
    result = pipeline.run_files([tmp_path / "bad.jsonl"], config.parse_config({"steps": [{"kind": "clean"}]}),
                                tmp_path / "bad_run")
    assert len(result.kept) == 0 and sorted(result.rejected()["reason"]) == ["invalid_json", "not_text"]
