"""Notebook 11's orchestration: its config, the unigram baseline, and a whole run at tiny size."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from dslib import claims
from dslib.configs import ConfigError
from dslib.studies import end_to_end
from dslib.env import REPO_ROOT

TINY = dict(sources={"kjv": 80, "asv": 40, "hpo": 60}, vocab_size=300, val_fraction=0.2, hidden_size=32,
            num_layers=2, seq_len=64, memory_length=64, steps=6, batch_size=4, ppl_docs=4, prompt_items=2,
            robust_items=1, min_gain_vs_unigram=0.0)


def test_flat_overrides_land_in_their_section():
    cfg = end_to_end.load_end_to_end_config("end_to_end", steps=7, zero_stage=2, robust_rate=0.5, seed=3)
    assert (cfg.train.steps, cfg.train.zero_stage, cfg.eval.robust_rate, cfg.seed) == (7, 2, 0.5, 3)
    assert cfg.recipe().steps == 7


@pytest.mark.parametrize("overrides, fragment", [
    ({"zero_stage": 5}, "train.zero_stage"), ({"sources": {"bible": 3}}, "unknown sources"),
    ({"pipeline": "nope"}, "nope"), ({"stepz": 3}, "unknown end-to-end parameter 'stepz'"),
    ({"zero_stage": 1, "nprocs": 3}, "does not split over nprocs=3"), ({"seq_len": 0}, "model.seq_len"),
])
def test_bad_values_fail_before_any_work(overrides, fragment):
    with pytest.raises((ConfigError, FileNotFoundError), match=fragment):
        end_to_end.load_end_to_end_config("end_to_end", **overrides)


def test_lion_gets_the_scaled_lr_and_weight_decay():
    adamw, lion = (end_to_end.load_end_to_end_config(optimizer=o).recipe() for o in ("adamw", "lion"))
    assert lion.lr == pytest.approx(adamw.lr * 0.2) and lion.weight_decay == pytest.approx(adamw.weight_decay / 0.2)


def test_notebook_defaults_are_the_config_file():
    from dslib.jobs.params import declared_parameters

    declared = declared_parameters(REPO_ROOT / "notebooks" / "11_end_to_end.ipynb")
    assert declared.pop("config") == "end_to_end" and sorted(declared) == sorted(end_to_end.parameter_names())
    cfg = end_to_end.load_end_to_end_config("end_to_end")
    from_file = {"seed": cfg.seed, **{k: v for s in end_to_end.SECTIONS for k, v in getattr(cfg, s).model_dump().items()}}
    assert declared == from_file


def test_unigram_perplexity_against_a_direct_count(tmp_path):
    from dslib.data.tokenizer import get_tokenizer
    from dslib.eval.perplexity import unigram_perplexity

    train = ["in the beginning was the word", "the word was with god", "and the light shineth"]
    held = ["the word shineth in darkness", "god said"]
    tok = get_tokenizer(train, 270, cache=tmp_path)
    train_ids = [i for t in train for i in tok.encode(t) + [tok.eos_id]]
    counts = np.bincount(train_ids, minlength=tok.vocab_size)
    out = unigram_perplexity(counts, tok, held)
    targets = [i for t in held for i in tok.encode(t) + [tok.eos_id]]  # the stream after its leading eos
    tally = Counter(train_ids)
    nll = [-math.log((tally[i] + 1) / (len(train_ids) + tok.vocab_size)) for i in targets]
    assert out["num_tokens"] == len(targets)
    assert out["perplexity"] == pytest.approx(math.exp(sum(nll) / len(nll)))
    assert out["bits_per_byte"] == pytest.approx(sum(nll) / math.log(2) / sum(len(t) for t in held))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e")
    cfg = end_to_end.load_end_to_end_config("end_to_end", **TINY)
    corpus = end_to_end.prepare_data(cfg, folder)
    trained = end_to_end.train_model(cfg, corpus)
    return cfg, corpus, trained, end_to_end.evaluate_trained(cfg, corpus, trained.model), folder


def test_tiny_run_evaluates_every_source(tiny_run):
    cfg, corpus, trained, evaluation, _ = tiny_run
    assert len(trained.result.losses) == cfg.train.steps
    assert corpus.funnel.input_docs == sum(cfg.data.sources.values())
    assert {r["source"] for r in evaluation.perplexity} == set(corpus.held_out) == set(cfg.data.sources)
    counts = np.bincount(corpus.shards.tokens("train"), minlength=corpus.tokenizer.vocab_size)
    for row in evaluation.perplexity:
        docs = corpus.held_out[row["source"]][:cfg.eval.ppl_docs]
        targets = [i for t in docs for i in corpus.tokenizer.encode(t) + [corpus.tokenizer.eos_id]]
        p = (counts[targets] + 1) / (counts.sum() + len(counts))
        assert row["tokens"] == len(targets) and row["unigram"] == pytest.approx(math.exp(-np.log(p).mean()))
    assert evaluation.robustness[0]["attack"] == cfg.eval.robust_attack


def test_model_card_holds_the_funnel_the_metrics_and_the_ledger(tiny_run, monkeypatch, tmp_path):
    cfg, corpus, trained, evaluation, folder = tiny_run
    monkeypatch.setenv("DSLIB_OUTPUTS", str(tmp_path))  # no chapter has run: every claim unchecked
    card = end_to_end.model_card(cfg, corpus, trained, evaluation, folder)
    text = card.write(folder).read_text()
    assert text == card.markdown() and f"Written {card.written} " in text  # one time stamp, fixed when made
    for row in corpus.funnel.rows:
        assert f"| {row['step']} | {row['docs_in']} | {row['docs_kept']} |" in text
    for drop in corpus.funnel.drops:
        assert f"{drop['reason']}: {drop['docs']}" in text
    for row in evaluation.perplexity:
        assert f"| {row['source']} | {row['documents']} | {row['tokens']} | {row['model_memory']:.4g} |" in text
        assert f"| {row['unigram']:.4g} |" in text
    assert "## Claims ledger" in text and text.count("| not yet checked |") == len(claims.load_claims())
    with pytest.raises(AssertionError, match="not clearly better than unigram"):
        end_to_end.check_beats_unigram(cfg.model_copy(update={"eval": cfg.eval.model_copy(
            update={"min_gain_vs_unigram": 1e9})}), evaluation)


def test_model_card_reads_the_latest_full_chapter_runs(tiny_run, tmp_path, monkeypatch):
    from dslib.io import write_json_atomic
    from dslib.jobs.record import METRICS_FILE, Run, read_record

    cfg, corpus, trained, evaluation, folder = tiny_run
    monkeypatch.setenv("DSLIB_OUTPUTS", str(tmp_path))
    runs = (("old", "2026-01-01", "ok", "cpu", 1.8), ("new", "2026-02-01", "ok", "cpu", 1.05),
            ("broken", "2026-03-01", "failed", "cpu", 1.8), ("quick", "2026-04-01", "ok", "smoke", 1.8))
    for book, started, status, profile, ratio in runs:
        run = Run("08_lion_optimizer", tmp_path / book / "08_lion_optimizer")
        run.evidence("lion_1_8x_faster", ratio, seeds=3, default=True, conditions={"book": book})
        record = read_record(run.run_dir)
        record["run"] = {"status": status, "started": started, "profile": profile}
        write_json_atomic(run.run_dir / METRICS_FILE, record)
    text = end_to_end.model_card(cfg, corpus, trained, evaluation, folder).markdown()
    (row,) = [line for line in text.splitlines() if line.startswith("| Lion converges")]
    assert "| does not hold |" in row and "step_ratio 1.05" in row
    assert "book=new" in text and not any(f"book={b}" in text for b in ("old", "broken", "quick"))


def test_zero_stages_1_and_3_train_alike_and_return_the_full_weights(tiny_run):
    """Two DeepSpeed launches of 2 ranks (~15 s each): stage 3 with checkpointing of every block
    matches stage 1 step for step, and its gathered weights are the whole model."""
    from dslib.model import TransformerXL
    from dslib.parallel.zero import train_zero

    cfg, corpus, _, _, _ = tiny_run
    model_cfg, recipe = cfg.architecture_config(corpus.tokenizer.vocab_size), cfg.recipe()
    stage1, weights1 = train_zero(model_cfg, recipe, corpus.shards.folder, stage=1, timeout=300)
    stage3, weights3 = train_zero(model_cfg, recipe, corpus.shards.folder, stage=3, checkpoint_every=1, timeout=300)
    assert len(stage3.losses) == recipe.steps and stage3.losses == pytest.approx(stage1.losses, rel=1e-4)
    model = TransformerXL(model_cfg)
    model.load_state_dict(weights3)  # every tensor, full shape
    for name, tensor in weights1.items():
        torch.testing.assert_close(weights3[name], tensor, rtol=1e-4, atol=1e-6, msg=name)


def test_another_config_file_changes_the_run(tmp_path):
    """Notebook 11 passes only the parameters a run sets: `-p config other` takes other.yaml's
    values, where passing every notebook default would have overridden them all."""
    import yaml

    from dslib.studies import end_to_end
    from dslib.studies.end_to_end_config import CONFIG_DIR
    from dslib.jobs import changed_parameters
    from dslib.jobs.params import NOTEBOOKS_DIR, declared_parameters

    other = yaml.safe_load((CONFIG_DIR / "end_to_end.yaml").read_text())
    other["seed"], other["train"]["steps"] = 7, 123
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(other))
    namespace = {**declared_parameters(NOTEBOOKS_DIR / "11_end_to_end.ipynb"), "config": str(path)}

    def overrides(names: dict) -> dict:
        return {k: v for k, v in changed_parameters("11_end_to_end", names).items() if k in end_to_end.parameter_names()}

    assert overrides(namespace) == {}
    cfg = end_to_end.load_end_to_end_config(path, **overrides(namespace))
    assert (cfg.seed, cfg.train.steps) == (7, 123)
    assert overrides({**namespace, "steps": 9}) == {"steps": 9}  # a hand edit still overrides the file
