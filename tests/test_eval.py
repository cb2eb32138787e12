"""Chapter 10: metric modules against hand-computed values, perplexity, LM interface, robustness."""
from __future__ import annotations

import math

import pytest
import sacrebleu

from dslib.eval import available_metrics, combine, load_metric


@pytest.fixture(scope="module")
def metrics():
    return {name: load_metric(name) for name in ("bleu", "chrf", "perplexity", "squad_v2")}


def test_registry_lists_the_local_modules():
    assert {"bleu", "chrf", "perplexity", "squad_v2"} <= set(available_metrics())
    with pytest.raises(KeyError, match="unknown metric"):
        load_metric("squad")


def test_bleu_hand_computed(metrics):
    # clipped n-gram matches 5/6, 3/5, 2/4, 1/3; equal lengths so BP = 1
    out = metrics["bleu"].compute(predictions=["the cat sat on the mat"], references=[["the cat sat on a mat"]])
    assert out["counts"] == [5, 3, 2, 1] and out["totals"] == [6, 5, 4, 3]
    assert out["score"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    # a 3-word hypothesis for a 6-word reference: BP = exp(1 - 6/3)
    short = metrics["bleu"].compute(predictions=["the cat sat"], references=["the cat sat on a mat"],
                                    use_effective_order=True)
    assert short["bp"] == pytest.approx(math.exp(1 - 6 / 3))


def test_bleu_equals_sacrebleu_corpus_bleu(metrics):
    preds = ["And God said, Let there be light: and there was light.", "In the beginning God created.",
             "Jesus wept", "the earth was without form, and void"]
    refs = [["God said, \"Let there be light,\" and there was light.", "And God said: let there be light."],
            ["In the beginning, God created the heavens and the earth.", "In the beginning God made the heaven."],
            ["Jesus wept.", "Jesus cried."],
            ["The earth was formless and empty.", "And the earth was void."]]
    expected = sacrebleu.corpus_bleu(preds, [list(s) for s in zip(*refs)])
    out = metrics["bleu"].compute(predictions=preds, references=refs)
    assert out["score"] == expected.score and out["counts"] == expected.counts
    chrf = metrics["chrf"].compute(predictions=preds, references=refs)
    assert chrf["score"] == sacrebleu.corpus_chrf(preds, [list(s) for s in zip(*refs)]).score
    with pytest.raises(ValueError, match="same number of references"):
        metrics["bleu"].compute(predictions=["a", "b"], references=[["a"], ["b", "c"]])


def test_chrf_bounds(metrics):
    assert metrics["chrf"].compute(predictions=["thou art"], references=["thou art"])["score"] == 100.0
    assert metrics["chrf"].compute(predictions=["xyz"], references=["abc"])["score"] == 0.0


def test_chrf_hand_computed(metrics):
    # character n-grams (whitespace removed) of "ab" against "abc": unigrams P = 2/2, R = 2/3;
    # bigrams P = 1/1, R = 1/2; sacrebleu averages P and R over the orders both sides have
    # (1 and 2 here), then takes F_beta with beta = 2
    p, r = 1.0, (2 / 3 + 1 / 2) / 2
    out = metrics["chrf"].compute(predictions=["ab"], references=["abc"])
    assert out["score"] == pytest.approx(100 * (1 + 2**2) * p * r / (2**2 * p + r))


def test_perplexity_hand_computed(metrics):
    out = metrics["perplexity"].compute(token_nlls=[[math.log(2), math.log(2)], [math.log(8)]], num_bytes=[1, 2])
    # mean NLL = (2 ln2 + 3 ln2) / 3 tokens; bits per byte = 5 bits / 3 bytes
    assert out["perplexity"] == pytest.approx(2 ** (5 / 3))
    assert out["bits_per_byte"] == pytest.approx(5 / 3)
    assert out["perplexities"] == pytest.approx([2.0, 8.0]) and out["num_tokens"] == 3


def test_perplexity_rows_add_up_over_batches():
    metric = load_metric("perplexity")
    metric.add_batch(token_nlls=[[math.log(2), math.log(2)]], num_bytes=[1])
    metric.add_batch(token_nlls=[[math.log(8)]], num_bytes=[2])
    out = metric.compute()
    assert out["perplexity"] == pytest.approx(2 ** (5 / 3)) and out["num_bytes"] == 3


def _squad(pred_text, golds, qid="q", na_prob=0.0):
    return ({"id": qid, "prediction_text": pred_text, "no_answer_probability": na_prob},
            {"id": qid, "answers": {"text": golds, "answer_start": [0] * len(golds)}})


@pytest.mark.parametrize("pred, golds, exact, f1", [
    ("The Cat!", ["a cat"], 100.0, 100.0),                          # case, punctuation, articles
    ("black cat", ["the cat"], 0.0, 100 * 2 * (1 / 2) * 1 / (1 / 2 + 1)),  # P=1/2, R=1
    ("dog", ["cat", "dog"], 100.0, 100.0),                          # max over gold answers
    ("", [], 100.0, 100.0),                                         # no-answer answered with ""
    ("cat", [], 0.0, 0.0),                                          # answered an unanswerable one
    ("", ["cat"], 0.0, 0.0),                                        # abstained on an answerable one
    ("cat cat mat", ["cat mat mat"], 0.0, 100 * 2 / 3),             # token bags: overlap 2 of 3
])
def test_squad_v2_hand_computed(metrics, pred, golds, exact, f1):
    p, r = _squad(pred, golds)
    out = metrics["squad_v2"].compute(predictions=[p], references=[r])
    assert out["exact"] == pytest.approx(exact) and out["f1"] == pytest.approx(f1)


def test_squad_v2_breakdown_and_threshold(metrics):
    pairs = [_squad("cat", ["cat"], "a"), _squad("dog", [], "b", na_prob=0.9), _squad("", [], "c")]
    preds, refs = zip(*pairs)
    out = metrics["squad_v2"].compute(predictions=list(preds), references=list(refs))
    assert (out["HasAns_total"], out["NoAns_total"]) == (1, 2)
    assert out["NoAns_exact"] == pytest.approx(50.0) and out["exact"] == pytest.approx(200 / 3)
    thresholded = metrics["squad_v2"].compute(predictions=list(preds), references=list(refs),
                                              no_answer_threshold=0.5)
    assert thresholded["NoAns_exact"] == 100.0 and thresholded["exact"] == 100.0


def test_combine_over_local_modules():
    preds, refs = ["the cat sat on the mat"], [["the cat sat on a mat"]]
    out = combine(["bleu", "chrf"]).compute(predictions=preds, references=refs)
    assert out["bleu_score"] == pytest.approx(sacrebleu.corpus_bleu(preds, [["the cat sat on a mat"]]).score)
    assert out["chrf_score"] == pytest.approx(sacrebleu.corpus_chrf(preds, [["the cat sat on a mat"]]).score)


# ---- model-facing parts: a small random TransformerXL is enough for these identities ----


import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dslib.eval.prompts import accuracy_from_loglikelihoods, continuation_suite  # noqa: E402
from dslib.eval.robustness import PERTURBATIONS, case_change, hotflip, typo, word_delete, word_swap  # noqa: E402

TEXTS = [
    "In the beginning God created the heaven and the earth and the earth was without form and void",
    "A congenital skin fold that runs along the sides of the neck down to the shoulders of the patient",
    "Now is the winter of our discontent made glorious summer by this sun of York and all the clouds",
    "And God said Let there be light and there was light and God saw the light that it was good",
    "An abnormality of the kidney that is present at birth and leads to reduced function over time",
]


@pytest.fixture(scope="module")
def tiny_lm():
    model_mod = pytest.importorskip("dslib.model")
    from dslib.data.tokenizer import get_tokenizer
    from dslib.eval.lm import DslibLM

    torch.manual_seed(0)
    cfg = model_mod.ModelConfig(vocab_size=320, hidden_size=32, num_layers=2, num_attention_heads=4,
                                intermediate_size=64, seq_len=16, memory_length=128)
    model = model_mod.TransformerXL(cfg).eval()
    tok = get_tokenizer(TEXTS * 4, 320)
    return DslibLM(model, tok, max_length=64, batch_size=3)


def test_perplexity_modes_against_direct_nll(tiny_lm):
    from dslib.eval.perplexity import perplexity, token_nlls

    model = tiny_lm.model
    ids = torch.randint(0, 320, (70,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        direct = F.cross_entropy(model(ids[None, :-1]).logits[0], ids[1:], reduction="none")
    # memory covering the whole stream: segment-by-segment equals one full-context pass
    assert torch.allclose(token_nlls(model, ids, 16, "memory"), direct, atol=1e-4)
    assert torch.allclose(token_nlls(model, ids, 128, "sliding", stride=128), direct, atol=1e-5)
    segments = token_nlls(model, ids, 16, "segments")
    assert torch.allclose(segments[:15], direct[:15], atol=1e-5) and not torch.allclose(segments, direct, atol=1e-3)
    # stride = window: the same cuts, except that the last short window keeps a full window of context
    sliding = token_nlls(model, ids, 16, "sliding", stride=16)
    assert torch.allclose(sliding[:64], segments[:64], atol=1e-5)
    # the metric module's perplexity is exp(mean NLL) of the stream [eos] doc [eos] doc [eos]
    out = perplexity(model, tiny_lm.tokenizer, TEXTS[:2], seq_len=16, mode="memory")
    stream = torch.tensor([tiny_lm.tokenizer.eos_id] + sum(
        (tiny_lm.tokenizer.encode(t) + [tiny_lm.tokenizer.eos_id] for t in TEXTS[:2]), []))
    with torch.no_grad():
        nll = F.cross_entropy(model(stream[None, :-1]).logits[0], stream[1:])
    assert out["perplexity"] == pytest.approx(float(nll.exp()), rel=1e-4)
    assert out["num_tokens"] == len(stream) - 1
    assert out["bits_per_byte"] == pytest.approx(float(nll) * out["num_tokens"] / math.log(2)
                                                 / sum(len(t.encode()) for t in TEXTS[:2]), rel=1e-4)


def test_loglikelihood_matches_direct_log_softmax(tiny_lm):
    tok = tiny_lm.tokenizer
    context, continuation = "In the beginning God", " created the heaven"
    ids = [tok.eos_id] + tok.encode(context) + tok.encode(continuation)
    n = len(tok.encode(continuation))
    with torch.no_grad():
        logp = F.log_softmax(tiny_lm.model(torch.tensor([ids[:-1]])).logits[0], -1)
    direct = float(logp[range(len(ids) - 1 - n, len(ids) - 1), ids[-n:]].sum())
    assert tiny_lm.loglikelihood(context, continuation) == pytest.approx(direct, abs=1e-4)
    requests = [(t[:20], t[20:40]) for t in TEXTS] + [(context, continuation)]
    batched = tiny_lm.loglikelihoods(requests)  # padded batches of 3
    assert batched == pytest.approx([tiny_lm.loglikelihood(c, x) for c, x in requests], abs=1e-4)


def test_greedy_with_memory_equals_full_recompute(tiny_lm):
    with_memory = tiny_lm.greedy_until("And God said", ["\n"], max_tokens=12)
    tiny_lm.model.memory_length = 0
    try:
        recomputed = tiny_lm.greedy_until("And God said", ["\n"], max_tokens=12)
    finally:
        tiny_lm.model.memory_length = 128
    assert with_memory == recomputed and len(with_memory) > 0


def test_continuation_suite_items_are_true_continuations():
    items = continuation_suite(TEXTS, "mixed", n_items=3, n_choices=3, context_words=6, continuation_words=4, seed=2)
    assert items == continuation_suite(TEXTS, "mixed", n_items=3, n_choices=3, context_words=6,
                                       continuation_words=4, seed=2)
    for it in items:
        source = [t for t in TEXTS if (it.context + it.choices[it.answer]) in t]
        assert len(source) == 1 and len(it.choices) == 3
        assert all(choice.strip() not in source[0] for k, choice in enumerate(it.choices) if k != it.answer)
    lls = [0.0 if k == it.answer else -5.0 for it in items for k in range(3)]
    scores = accuracy_from_loglikelihoods(items, lls)
    assert scores["acc"] == 1.0 and scores["chance"] == pytest.approx(1 / 3) and "acc_pmi" not in scores
    # the true continuation is likely anyway (prior 0): the context adds nothing to it, so PMI ranks it last
    priors = [0.0 if k == it.answer else -9.0 for it in items for k in range(3)]
    assert accuracy_from_loglikelihoods(items, lls, priors)["acc_pmi"] == 0.0


SENTENCE = " ".join(TEXTS)


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_perturbations_are_seeded(name):
    perturb = PERTURBATIONS[name]
    assert perturb(SENTENCE, 0.3, 7) == perturb(SENTENCE, 0.3, 7)
    assert perturb(SENTENCE, 0.3, 7) != perturb(SENTENCE, 0.3, 8)
    assert perturb(SENTENCE, 0.0, 7) == " ".join(SENTENCE.split())


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5])
def test_perturbations_change_what_they_claim(rate):
    words = SENTENCE.split()
    typed = typo(SENTENCE, rate, 3).split()
    assert len(typed) == len(words)
    assert sum(a != b for a, b in zip(words, typed)) == round(rate * len(words))
    cased = case_change(SENTENCE, rate, 3)
    assert cased.lower() == SENTENCE.lower()
    letters = sum(ch.isalpha() for ch in SENTENCE)
    assert sum(a != b for a, b in zip(cased, SENTENCE)) == round(rate * letters)
    assert len(word_delete(SENTENCE, rate, 3).split()) == len(words) - round(rate * len(words))
    swapped = word_swap(SENTENCE, rate, 3).split()
    assert sorted(swapped) == sorted(words) and swapped != words
    assert 0 < sum(a != b for a, b in zip(words, swapped)) <= 2 * round(rate * (len(words) - 1))


def test_hotflip_flips_budgeted_tokens_and_raises_the_loss(tiny_lm):
    tok = tiny_lm.tokenizer
    pairs = [(tiny_lm.encode_context(t[:40]), tok.encode(t[40:70])) for t in TEXTS]
    histories = hotflip(tiny_lm, pairs, max_rate=0.25)
    for (ctx, _), history in zip(pairs, histories):
        budget = round(0.25 * (len(ctx) - 1))
        assert len(history) == budget + 1 and history[0] == ctx
        for k, attacked in enumerate(history):
            assert attacked[0] == tok.eos_id and sum(a != b for a, b in zip(attacked, ctx)) == k
    clean = tiny_lm.loglikelihood_tokens(pairs)
    attacked = tiny_lm.loglikelihood_tokens([(h[-1], x) for h, (_, x) in zip(histories, pairs)])
    assert all(a < c for a, c in zip(attacked, clean))


def test_translation_pairs_and_held_out_split(tmp_path):
    from dslib.data.shards import build_shards
    from dslib.data.tokenizer import get_tokenizer
    from dslib.eval import corpus, translation

    pairs = translation.verse_pairs(limit=3)
    assert pairs[0][0].startswith("In the beginning God created") and pairs[0][1].endswith("the heavens and the earth.")
    doc = translation.pair_document(*pairs[1])
    assert translation.split_document(doc) == pairs[1] and doc.startswith(translation.prompt(pairs[1][0]))
    texts, labels = corpus.flatten({"a": TEXTS[:3], "b": TEXTS[3:]})
    held = corpus.held_out(texts, labels, val_fraction=0.4, seed=1)
    tok = get_tokenizer(TEXTS, 300, cache=tmp_path)
    shards = build_shards(texts, tok, val_fraction=0.4, seed=1, cache=tmp_path)
    val_docs = [t for t in texts if t in held["a"] + held["b"]]  # corpus order, as the shards keep it
    expected = sum((tok.encode(t) + [tok.eos_id] for t in val_docs), [])
    assert shards.tokens("val").tolist() == expected and sum(map(len, held.values())) == 2


def test_score_outputs_copy_of_reference_is_perfect():
    from dslib.eval.translation import score_outputs

    refs = ["God said, Let there be light.", "Jesus wept."]
    perfect = score_outputs(refs, refs)
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["exact_match"] == 100.0 and perfect["token_f1"] == 100.0
    assert score_outputs(["nothing alike", "at all"], refs)["token_f1"] == 0.0


def test_cross_domain_distractors_come_from_other_domains():
    from dslib.eval.prompts import build_suites

    held = {"bible": [TEXTS[0], TEXTS[3]], "medical": [TEXTS[1], TEXTS[4]], "plays": [TEXTS[2]]}
    suites = build_suites(held, n_items=2, n_choices=3, context_words=6, continuation_words=4, distractors="other")
    for domain, items in suites.items():
        for it in items:
            for k, choice in enumerate(it.choices):
                owners = {d for d, docs in held.items() for t in docs if choice.strip() in t}
                assert (owners == {domain}) if k == it.answer else (domain not in owners)


from dslib.eval.lm import nucleus_probs  # noqa: E402
from dslib.eval.prompts import distinct_2, generation_rows, word_f1  # noqa: E402


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    torch.testing.assert_close(nucleus_probs(logits, top_p=0.7), torch.tensor([0.625, 0.375, 0.0, 0.0]))
    torch.testing.assert_close(nucleus_probs(logits, top_p=0.8), torch.tensor([0.625, 0.375, 0.0, 0.0]))
    assert int((nucleus_probs(logits, top_p=0.81) > 0).sum()) == 3
    assert int((nucleus_probs(logits, top_p=0.1) > 0).sum()) == 1  # the top token always stays
    torch.testing.assert_close(nucleus_probs(logits), torch.tensor([0.5, 0.3, 0.15, 0.05]))
    sharp = nucleus_probs(logits, temperature=0.5)
    assert sharp[0] > 0.5 and sharp[3] < 0.05  # temperature < 1 sharpens
    with pytest.raises(ValueError):
        nucleus_probs(logits, top_p=0.0)


def test_sampled_decoding_is_seeded_and_differs_from_greedy(tiny_lm):
    sample = lambda seed: tiny_lm.generate_until("And God said", ["\n"], 12, temperature=1.0, top_p=0.95,  # noqa
                                                 seed=seed)
    assert sample(0) == sample(0)
    greedy = tiny_lm.greedy_until("And God said", ["\n"], 12)
    assert any(sample(s) != greedy for s in range(4))
    near_greedy = tiny_lm.generate_until("And God said", ["\n"], 12, temperature=1.0, top_p=1e-6, seed=3)
    assert near_greedy == greedy  # a nucleus of one token is greedy decoding


def test_generation_rows_score_words_against_the_true_continuation(tiny_lm):
    assert word_f1("the lord said", "The Lord spake") == pytest.approx(2 / 3)
    assert word_f1("", "x") == 0.0 and distinct_2(["a b a b"]) == pytest.approx(2 / 3)
    items = continuation_suite(TEXTS, "bible", n_items=2, n_choices=2, context_words=4, continuation_words=3)
    rows = generation_rows(tiny_lm, items, {"greedy": {}, "t=1 p=0.9": {"temperature": 1.0, "top_p": 0.9}}, 6)
    assert [r["decoder"] for r in rows] == ["greedy", "t=1 p=0.9"] and all(0 <= r["word_f1"] <= 1 for r in rows)
    assert rows[1]["top_p"] == 0.9 and rows[0]["n"] == 2
