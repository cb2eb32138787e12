"""Domain filter (HPO terms, cascade, MiniLM) and label validation (kappas, suspects)."""
from __future__ import annotations

import datasets
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from dslib.data import config, domain, governance, labels, pipeline
from dslib.studies import data_governance as study


@pytest.fixture(scope="module")
def terms() -> domain.TermList:
    background = ["And the blind man said unto him, Lord, that I might receive my sight."] * 3 + ["x"] * 97
    return domain.hpo_term_list(background_texts=background, max_background_df=0.02)


def test_term_list_from_hpo_drops_generic_terms(terms):
    assert "short stature" in terms.terms and "ulna" in terms.terms  # a term and a component word
    assert "ra" in terms.removed["too_short"] and "ra" not in terms.terms
    assert "sight" in terms.removed["background"]  # in 3% of the background, limit 2%
    assert {"short stature", "bowed ulna", "ulna"} <= set(terms.hits("Short stature with a bowed ulna."))


def test_cascade_routes_only_the_uncertain_middle():
    assert domain.cascade(np.array([0, 1, 2, 5, 6, 9]), accept_hits=6, reject_hits=1).tolist() == [0, 0, -1, -1, 1, 1]


def test_keyword_filter_in_pipeline_drops_with_reason(tmp_path):
    cfg = config.parse_config({"steps": [{"kind": "domain", "mode": "keyword", "min_hits": 2}]})
    texts = ["Abnormal shortening of the ulna with joint hypermobility and scoliosis.",
             "In the beginning God created the heaven and the earth."]
    ds = datasets.Dataset.from_dict({"id": ["med", "gen"], "text": texts})
    result = pipeline.run_pipeline(ds, governance.build_steps(cfg), tmp_path)
    assert result.kept["id"] == ["med"]
    assert result.rejected("domain")["reason"].tolist() == ["off_domain_keyword"]


def test_semantic_scorer_prefers_medical_context():
    scorer = domain.SemanticScorer(["Hypertension", "Short stature", "Seizure", "Renal insufficiency"], top_k=2)
    medical, verse = scorer.score(["Episodes of abnormally high blood pressure in the kidneys' arteries.",
                                   "And Jesus answered and said unto them, Go and shew John again those things."])
    assert medical > verse + 0.1


def test_precision_recall_and_threshold():
    truth = np.array([1, 1, 0, 0], bool)
    assert study.precision_recall(np.array([1, 0, 1, 0], bool), truth) == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    assert study.best_threshold(np.array([0.9, 0.8, 0.3, 0.1]), truth) == pytest.approx(0.8)


def test_cohen_kappa_matches_sklearn():
    ratings = labels.simulate_annotators(np.random.default_rng(1).integers(0, 3, 500), 3, 2, 0.3, seed=2)
    assert labels.cohen_kappa(ratings[:, 0], ratings[:, 1], 3) == pytest.approx(cohen_kappa_score(ratings[:, 0], ratings[:, 1]))


def test_fleiss_kappa_textbook_example():
    # Fleiss (1971) as tabulated on Wikipedia: 10 items, 14 raters, 5 categories -> 0.210
    counts = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
              [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    ratings = np.array([np.repeat(np.arange(5), row) for row in counts])
    assert labels.fleiss_kappa(ratings, 5) == pytest.approx(0.210, abs=5e-4)
    assert labels.fleiss_kappa(np.zeros((5, 3), int) + np.arange(5)[:, None] % 2, 2) == pytest.approx(1.0)


def test_simulated_noise_and_majority_vote():
    truth = np.random.default_rng(0).integers(0, 3, 4000)
    ratings = labels.simulate_annotators(truth, 3, 3, 0.2, seed=1)
    assert np.mean(ratings != truth[:, None]) == pytest.approx(0.2, abs=0.02)
    vote = labels.majority_vote(np.array([[0, 0, 1], [2, 1, 2], [1, 1, 1]]), 3)
    assert vote.tolist() == [0, 2, 1]


def test_cross_validation_finds_planted_label_errors():
    rng = np.random.default_rng(0)
    vocab = [["fever", "rash", "tumor", "renal", "cardiac"], ["lord", "israel", "king", "spake", "temple"]]
    truth = rng.integers(0, 2, 300)
    texts = [" ".join(rng.choice(vocab[c], 8)) for c in truth]
    given = truth.copy()
    flipped = rng.choice(300, 15, replace=False)
    given[flipped] = 1 - given[flipped]
    suspects = labels.suspect_labels(labels.out_of_fold_probabilities(texts, given, folds=5), given)
    scores = labels.detection_scores(suspects, given != truth)
    assert scores["recall"] >= 0.7 and scores["precision"] >= 0.9
