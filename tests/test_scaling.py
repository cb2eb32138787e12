"""Compute-optimal tokens (dslib.plan.scaling) against values worked by hand."""
import math

import pytest

from dslib.model.config import load_config
from dslib.plan import scaling


def test_chinchilla_is_twenty_tokens_per_parameter():
    assert scaling.chinchilla_tokens(70e9) == pytest.approx(1.4e12)  # Chinchilla itself: 70B on 1.4T
    with pytest.raises(ValueError):
        scaling.chinchilla_tokens(0)


def test_deepseek_model_scale_is_their_formula():
    # DeepSeek's 7B (30 layers, d 4096, l_seq 4096): 72*30*4096^2 + 12*30*4096*4096
    assert scaling.deepseek_model_scale(30, 4096, 4096) == 72 * 30 * 4096**2 + 12 * 30 * 4096 * 4096
    # a non-4x FFN counts its own weights: 24 L d^2 + 12 L d ff
    assert scaling.deepseek_model_scale(2, 64, 10, intermediate=128) == 2 * (24 * 64**2 + 12 * 64 * 128 + 12 * 64 * 10)


def test_deepseek_allocation_at_a_worked_budget():
    # C = 1e20 FLOPs: M = 0.1715 * 1e20^0.5243 = 0.1715 * 10^10.486; D = 5.8316 * 10^9.514
    m, d = scaling.deepseek_optimal_allocation(1e20)
    assert m == pytest.approx(0.1715 * 10 ** 10.486, rel=1e-9)
    assert d == pytest.approx(5.8316 * 10 ** 9.514, rel=1e-9)
    assert m * d == pytest.approx(1e20, rel=1e-3)  # C = M * D, to the fit's rounding
    assert m == pytest.approx(5.25e9, rel=0.01) and d == pytest.approx(1.90e10, rel=0.01)


def test_inverting_the_fit_returns_the_model():
    scale = 1.5e9
    tokens, compute = scaling.deepseek_optimal_tokens(scale)
    assert scaling.deepseek_optimal_allocation(compute)[0] == pytest.approx(scale, rel=1e-9)
    assert tokens == pytest.approx(compute / scale, rel=1e-3)
    # a 4x larger model wants (4)^(0.4757/0.5243) = 3.52x the tokens
    assert scaling.deepseek_optimal_tokens(4 * scale)[0] / tokens == pytest.approx(4 ** (0.4757 / 0.5243), rel=1e-9)


def test_chapter_02_article_config_by_hand():
    cfg = load_config("article")  # 18 layers, d 1024, ff 4096, T = M = 512, vocab 32000
    assert scaling.model_scale_of(cfg) == 72 * 18 * 1024**2 + 12 * 18 * 1024 * 1024
    m = 72 * 18 * 1024**2 + 12 * 18 * 1024 * 1024
    c = (m / 0.1715) ** (1 / 0.5243)
    assert scaling.compute_optimal_tokens(cfg) == pytest.approx(5.8316 * c ** 0.4757, rel=1e-9)
    assert 6.3e9 < scaling.compute_optimal_tokens(cfg) < 6.6e9
    rows = {r["rule"].split(",")[0] + str(i): r for i, r in enumerate(scaling.compute_optimal_rows(cfg, 10e9))}
    assert math.isclose(rows["Chinchilla0"]["tokens"], 20 * rows["Chinchilla0"]["model_size"])
    assert all(r["planned_over_optimal"] == pytest.approx(10e9 / r["tokens"]) for r in rows.values())
