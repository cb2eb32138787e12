"""Chapter 12's study functions compute what they say: cache bytes, MaxVio, equal-FLOP steps,
the balancing variants and the evidence rows built from seed means."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dslib.model import DeepSeekModel, load_deepseek_config
from dslib.model.deepseek_flops import deepseek_flops_per_token
from dslib.model.moe import Router
from dslib.studies import deepseek_arch as arch
from dslib.studies import deepseek_training as study


@pytest.fixture(scope="module")
def tiny():
    return load_deepseek_config("deepseek_tiny")


def test_measured_cache_bytes_equal_the_formula_for_mha_gqa_and_mla(tiny):
    rows = arch.kv_cache_table({"tiny": (tiny.hidden_size, tiny.attention)}, gqa_groups=[1, 2])
    by = {r["variant"]: r for r in rows}
    assert set(by) == {"MHA", "GQA-1", "GQA-2", "MLA"}
    a = tiny.attention
    assert by["MHA"]["measured_bytes"] == 2 * a.num_heads * a.head_dim * 4
    assert by["GQA-2"]["measured_bytes"] == 2 * 2 * a.head_dim * 4
    assert by["MLA"]["measured_bytes"] == (a.kv_lora_rank + a.qk_rope_head_dim) * 4
    assert all(r["measured_bytes"] == r["formula_bytes"] for r in rows)


def test_bf16_cache_halves_the_bytes_and_v3_mla_keeps_576_elements():
    v3 = load_deepseek_config("deepseek_v3").attention
    fp32 = arch.measured_cache_bytes(64, v3.model_copy(update={"num_heads": 4}))
    bf16 = arch.measured_cache_bytes(64, v3.model_copy(update={"num_heads": 4}), dtype=torch.bfloat16)
    assert fp32 == 576 * 4 and bf16 == 576 * 2
    assert arch.kv_cache_bytes_formula(v3.model_copy(update={"kind": "mha", "num_kv_heads": None}), 1) == 2 * 128 * 128


def test_v2_reduction_reproduces_the_stated_93_3_only_with_the_quantised_cache():
    assert arch.v2_cache_reduction(6.0) == pytest.approx(0.933, abs=5e-4)
    assert arch.v2_cache_reduction(16.0) == pytest.approx(1 - 60 * 576 / (95 * 2 * 8 * 128), rel=1e-12)
    measured = arch.model_cache_reductions()
    assert measured[0]["reduction"] == pytest.approx(arch.v2_cache_reduction(16.0))


def test_maxvio_of_known_loads():
    assert study.maxvio([10, 10, 10, 10]) == 0.0
    assert study.maxvio([40, 0, 0, 0]) == pytest.approx(3.0)  # max 40 / mean 10 - 1
    assert study.maxvio(np.array([3, 1, 2, 2])) == pytest.approx(0.5)


def test_equal_flop_steps_spend_the_budget(tiny):
    tokens = 8 * tiny.seq_len
    with_mtp = sum(deepseek_flops_per_token(tiny).values())
    without = sum(deepseek_flops_per_token(study.with_mtp_depth(tiny, 0)).values())
    steps = study.equal_flop_steps(100 * tokens * with_mtp, without, tokens)
    assert steps > 100  # dropping MTP frees FLOPs for more steps
    assert abs(steps * without - 100 * with_mtp) <= without / 2 + 1e-6


def test_balancing_variants_differ_only_in_the_router(tiny):
    variants = study.balancing_variants([0.01], [0.001])
    assert list(variants) == ["none", "aux_loss_0.01", "loss_free_0.001"]
    configs = {name: study.with_moe(tiny, **moe).moe for name, moe in variants.items()}
    assert configs["aux_loss_0.01"].score_func == "softmax" and configs["aux_loss_0.01"].aux_loss_alpha == 0.01
    assert configs["loss_free_0.001"].bias_update_speed == 0.001 and configs["loss_free_0.001"].aux_loss_alpha == 0
    assert configs["none"].bias_update_speed == 0 and configs["none"].seq_aux_loss_alpha == 0


def test_bias_balancing_on_a_skewed_router_moves_toward_balance(tiny):
    torch.manual_seed(0)
    moe = study.with_moe(tiny, **study.balancing_variants([], [0.01])["loss_free_0.01"]).moe
    router = Router(16, moe)
    with torch.no_grad():
        router.weight.normal_()
        router.weight[0] += 3.0  # expert 0 wins for most tokens
    x = torch.randn(512, 16).abs()

    def load() -> torch.Tensor:
        return torch.bincount(router(x).experts.flatten(), minlength=moe.n_routed_experts)
    before = study.maxvio(load())
    for _ in range(200):
        router.load_since_update += load()
        router.update_bias()
    assert study.maxvio(load()) < before / 2


def test_validation_balance_sums_loads_before_the_ratio(tiny):
    torch.manual_seed(0)
    model = DeepSeekModel(study.with_mtp_depth(tiny, 0))
    tokens = np.random.default_rng(0).integers(0, tiny.vocab_size, 4 * tiny.seq_len * 4)
    loader = study.StreamLoader(tokens, 4, tiny.seq_len)
    result = study.validation_balance(model, loader, batches=3)
    layer, E = tiny.first_k_dense, tiny.moe.n_routed_experts
    shares, losses = np.zeros(E), []
    model.eval()
    with torch.no_grad():
        for _ in range(3):
            idx, targets = loader.next_batch()
            out = model(idx, targets=targets)
            shares += [float(out.stats[f"moe_load_layer{layer}_e{e}"]) for e in range(E)]
            losses.append(float(out.loss))
    assert result["maxvio_global"] == pytest.approx(study.maxvio(shares))
    assert result["val_loss"] == pytest.approx(np.mean(losses))


def test_evidence_rows_come_from_the_seed_means():
    rows = [{"variant": v, "seed": s, "val_loss": loss + 0.01 * s, "maxvio_global": vio, "train_maxvio_batch": vio}
            for v, loss, vio in (("aux_loss_0.01", 5.0, 0.3), ("loss_free_0.001", 4.9, 0.2)) for s in range(3)]
    summary = study.seed_summary(rows, "variant", ["val_loss", "maxvio_global", "train_maxvio_batch"])
    assert summary[0]["val_loss"] == pytest.approx(5.01) and summary[0]["val_loss_std"] == pytest.approx(0.01)
    (row,) = study.balancing_evidence(summary, [0.01], [0.001])
    assert row["value"]["loss_advantage"] == pytest.approx(0.1)
    assert row["value"]["maxvio_excess"] == pytest.approx(-0.1)
    assert row["seeds"] == 3 and row["conditions"] == {"alpha": 0.01, "gamma": 0.001}


@pytest.fixture(scope="module")
def corpus(tiny):
    rng = np.random.default_rng(0)
    return study.Corpus(rng.integers(0, tiny.vocab_size, 20000), rng.integers(0, tiny.vocab_size, 4000),
                        tiny.vocab_size)


def test_mtp_study_gives_the_no_mtp_arm_the_mtp_runs_flops(tiny, corpus):
    rows, curves, models = study.mtp_study(tiny, corpus, seeds=[0], steps=4, batch_size=2, lr=1e-3, val_batches=1)
    by = {r["arm"]: r for r in rows}
    assert by["mtp"]["steps"] == by["no_mtp_equal_steps"]["steps"] == 4
    assert by["no_mtp_equal_flops"]["steps"] > 4
    per_step = by["no_mtp_equal_flops"]["train_flops"] / by["no_mtp_equal_flops"]["steps"]
    assert abs(by["no_mtp_equal_flops"]["train_flops"] - by["mtp"]["train_flops"]) <= per_step / 2
    assert by["mtp"]["total_params"] > by["no_mtp_equal_steps"]["total_params"]  # the MTP module counts
    assert set(models) == {0} and {c["arm"] for c in curves} == set(by)


def test_speculative_stats_reproduce_greedy_tokens(tiny, corpus):
    torch.manual_seed(0)
    stats = study.speculative_stats(DeepSeekModel(tiny), corpus, prompts=2, prompt_len=8, new_tokens=6, rounds=1)
    assert stats["same_tokens_as_greedy"] == 1.0
    assert 0.0 <= stats["acceptance_rate"] <= 1.0 and stats["drafted"] > 0
    assert 0.0 < stats["distinct_new_tokens"] <= 1.0
    assert 0.5 <= stats["main_forwards_per_token"] <= 1.0
