"""The DeepSeek-style model: MTP targets and causality, counts against the papers, FLOPs against
torch's counter, config errors, training on real tokens, speculative decoding, the dense baseline."""
import pytest
import torch
from pydantic import ValidationError
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from dslib.data import sources
from dslib.data.shards import build_shards
from dslib.data.tokenizer import get_tokenizer
from dslib.model import (DeepSeekConfig, DeepSeekModel, count_deepseek_parameters, deepseek_flops_per_token,
                         dense_equivalent, greedy_decode, load_deepseek_config, speculative_decode)
from dslib.model.mtp import mtp_forward
from dslib.model.transformer_xl import ModelOutput
from dslib.train import TrainConfig, Trainer, seed_everything


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _mtp_logits(model: DeepSeekModel, x: torch.Tensor) -> list[torch.Tensor]:
    """Per MTP depth, its logits for the window idx = x[:, :-1], targets = x[:, 1:]."""
    idx, targets = x[:, :-1], x[:, 1:]
    hidden, _, _ = model.trunk(idx)
    return [d.logits for d in mtp_forward(model.mtp, hidden, targets, model.embed, model.head)]


@torch.no_grad()
def test_mtp_depth_k_is_scored_against_token_t_plus_k_plus_1():
    model = DeepSeekModel(load_deepseek_config("deepseek_tiny", mtp={"depth": 2})).eval()
    T = 20
    x = torch.randint(0, 512, (3, T + 1))  # the whole stream: t_0 .. t_T
    out = model(x[:, :-1], targets=x[:, 1:])
    for k, logits in enumerate(_mtp_logits(model, x), start=1):
        assert logits.shape[1] == T - k
        # position i predicts t_{i+k+1}: the stream read k + 1 tokens ahead
        expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, k + 1:].flatten())
        torch.testing.assert_close(out.stats[f"mtp_loss_depth{k}"], expected)
    mtp = (out.stats["mtp_loss_depth1"] + out.stats["mtp_loss_depth2"]) / 2
    torch.testing.assert_close(out.aux_loss, model.config.mtp.loss_weight * mtp + out.stats["moe_aux_loss"])


@torch.no_grad()
def test_mtp_sees_the_next_token_and_no_later_one():
    """MTP depth 1 at position i reads t_0..t_{i+1}: changing t_j changes its logits from
    position j - 1 on, and none before."""
    model = DeepSeekModel(load_deepseek_config("deepseek_tiny")).eval()
    x = torch.randint(0, 512, (2, 25))
    j = 12
    changed = x.clone()
    changed[:, j] = (x[:, j] + 1) % 512
    (a,), (b,) = _mtp_logits(model, x), _mtp_logits(model, changed)
    torch.testing.assert_close(a[:, :j - 1], b[:, :j - 1])
    assert not torch.allclose(a[:, j - 1], b[:, j - 1])


def test_stats_are_detached_scalars_and_mems_empty():
    model = DeepSeekModel(load_deepseek_config("deepseek_tiny"))
    idx = torch.randint(0, 512, (2, 16))
    out = model(idx, mems=None, targets=idx)
    assert isinstance(out, ModelOutput) and out.mems == [] and out.aux_loss.requires_grad
    assert all(v.dim() == 0 and not v.requires_grad for v in out.stats.values())
    shares = [out.stats[f"moe_load_layer1_e{e}"] for e in range(8)]
    assert float(sum(shares)) == pytest.approx(1.0)
    expected = {"moe_maxvio", "moe_maxvio_layer1", "moe_maxvio_mtp1", "moe_dropped_at_capacity", "mtp_loss"}
    assert expected <= set(out.stats)
    assert "moe_maxvio_layer0" not in out.stats  # the first layer is dense


# ---- counts -------------------------------------------------------------------------------
V2 = dict(vocab_size=102400, hidden_size=5120, num_layers=60, seq_len=4096, intermediate_size=12288, first_k_dense=1,
          attention=dict(num_heads=128, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
                         qk_rope_head_dim=64, v_head_dim=128),
          moe=dict(n_routed_experts=160, n_shared_experts=2, top_k=6, moe_intermediate_size=1536, n_group=8,
                   topk_group=3, score_func="softmax"), mtp=dict(depth=0))


@pytest.mark.parametrize("config, total, activated", [
    (load_deepseek_config("deepseek_v3"), 671e9, 37e9),  # arXiv 2412.19437
    (DeepSeekConfig(**V2), 236e9, 21e9),  # arXiv 2405.04434
])
def test_parameter_counts_match_the_papers(config, total, activated):
    counts = count_deepseek_parameters(config)
    assert abs(counts["total"] / total - 1) < 0.01
    # the papers round activated parameters to the billion: 36.6B is V3's "37B" (1.0% below)
    assert abs(counts["activated"] - activated) < 0.5e9


def test_v3_mtp_module_and_the_685b_checkpoint():
    counts = count_deepseek_parameters(load_deepseek_config("deepseek_v3"))
    assert 11.5e9 < counts["mtp_total"] < 11.7e9  # its own weights; embedding and head shared
    # the released checkpoint stores the MTP module with copies of embedding and head: 685B
    stored = counts["total"] + counts["mtp_total"] + 2 * counts["embedding"]
    assert abs(stored / 685e9 - 1) < 0.01


@pytest.mark.parametrize("overrides", [
    {}, {"tie_embeddings": True}, {"attention": {"q_lora_rank": 0}}, {"mtp": {"depth": 2}, "first_k_dense": 0},
    {"attention": {"kind": "mha", "num_kv_heads": 2}, "ffn": "dense", "mtp": {"depth": 0}},
    {"moe": {"n_shared_experts": 0}},
])
def test_counts_equal_the_module(overrides):
    config = load_deepseek_config("deepseek_tiny", **overrides)
    model = DeepSeekModel(config)
    counts = count_deepseek_parameters(config)
    mtp = sum(p.numel() for p in model.mtp.parameters())
    assert counts["total"] == sum(p.numel() for p in model.parameters()) - mtp
    assert counts["mtp_total"] == mtp


def test_activated_parameters_are_those_one_token_touches():
    """The weights that get a gradient from one token's logits (routed experts counted only for
    the experts it was sent to; the embedding, a lookup, not counted). Two tokens, so that
    attention has a choice (one key gives query and key weights no gradient); the logits of
    the second only, whose experts alone matter since the one MoE layer is the last."""
    model = DeepSeekModel(load_deepseek_config("deepseek_tiny", mtp={"depth": 0}))
    assert [model.config.is_moe_layer(i) for i in range(2)] == [False, True]
    model.logits(model.trunk(torch.tensor([[7, 9]]))[0][:, 1]).square().sum().backward()
    touched = 0
    for name, p in model.named_parameters():
        if name == "embed.weight":
            continue
        if ".experts." in name:  # [E, ...]: count the experts whose slice has a gradient
            touched += int((p.grad.flatten(1).abs().sum(1) > 0).sum()) * p[0].numel()
        elif p.grad is not None and p.grad.abs().sum() > 0:
            touched += p.numel()
    assert touched == count_deepseek_parameters(model.config)["activated"]


@pytest.mark.parametrize("overrides", [
    {"moe": {"dispatch": "loop"}}, {"moe": {"dispatch": "loop"}, "attention": {"q_lora_rank": 0}, "mtp": {"depth": 3}},
    {"attention": {"kind": "mha", "num_kv_heads": 2}, "ffn": "dense", "mtp": {"depth": 0}},
])
def test_flops_formula_equals_torch_flop_counter(overrides):
    """Training FLOPs of one step measured by FlopCounterMode (matmuls and math-path attention)."""
    config = load_deepseek_config("deepseek_tiny", **overrides)
    model = DeepSeekModel(config)
    idx = torch.randint(0, 512, (2, config.seq_len))
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):  # the fused CPU kernel is not counted
        out = model(idx, targets=idx)
        (out.loss + out.aux_loss).backward()
    formula = sum(deepseek_flops_per_token(config).values())
    assert counter.get_total_flops() / idx.numel() == pytest.approx(formula, rel=1e-6)


def test_mha_flops_are_the_gpt_formula():
    config = dense_equivalent(load_deepseek_config("deepseek_small"))
    L, d, T = config.num_layers, config.hidden_size, config.seq_len
    flops = deepseek_flops_per_token(config)
    assert flops["attention"] == 12 * L * T * d and set(flops) == {"dense", "attention"}


@pytest.mark.parametrize("name", ["deepseek_tiny", "deepseek_small"])
@pytest.mark.parametrize("multiple_of", [1, 64])
def test_dense_baseline_has_the_same_activated_parameters(name, multiple_of):
    config = load_deepseek_config(name)
    dense = dense_equivalent(config, multiple_of)
    assert (dense.attention.kind, dense.ffn, dense.mtp.depth) == ("mha", "dense", 0)
    assert dense.intermediate_size % multiple_of == 0
    gap = count_deepseek_parameters(dense)["activated"] - count_deepseek_parameters(config)["activated"]
    assert abs(gap) <= 3 * config.hidden_size * config.num_layers * multiple_of / 2
    model = DeepSeekModel(dense)
    assert sum(p.numel() for p in model.parameters()) == count_deepseek_parameters(dense)["total"]
    assert model(torch.randint(0, config.vocab_size, (1, 8))).stats == {}


# ---- config ---------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, field", [
    ({"attention": {"kv_lora_rank": 0}}, "kv_lora_rank"),
    ({"moe": {"top_k": 9}}, "top_k"),
    ({"moe": {"n_group": 3}}, "n_group"),
    ({"moe": {"topk_group": 3}}, "topk_group"),  # deepseek_tiny has 2 groups
    ({"moe": {"n_group": 4, "topk_group": 1, "top_k": 3}}, "topk_group"),  # 1 group of 2 < top_k
    ({"attention": {"qk_rope_head_dim": 7}}, "qk_rope_head_dim"),
    ({"attention": {"num_kv_heads": 3}}, "num_kv_heads"),
    ({"attention": {"kind": "gqa"}}, "kind"),
    ({"first_k_dense": 3}, "first_k_dense"),
    ({"moe": {"bias_update_speed": -0.1}}, "bias_update_speed"),
    ({"mtp": {"depth": -1}}, "depth"),
    ({"moe": {"dispatch": "scatter"}}, "dispatch"),
    ({"n_layers": 2}, "n_layers"),
])
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(ValidationError, match=field):
        load_deepseek_config("deepseek_tiny", **overrides)


def test_configs_load_and_merge():
    v3 = load_deepseek_config("deepseek_v3")
    assert (v3.num_layers, v3.first_k_dense, v3.moe.n_routed_experts, v3.moe.top_k, v3.attention.kv_lora_rank,
            v3.attention.qk_rope_head_dim) == (61, 3, 256, 8, 512, 64)
    small = load_deepseek_config("deepseek_small", moe={"top_k": 1})
    assert small.name == "deepseek_small" and small.moe.top_k == 1 and small.moe.n_routed_experts == 16


# ---- training and decoding on real tokens ---------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    texts = sources.load("kjv", limit=1500)["text"]
    tok = get_tokenizer(texts, 512, cache=tmp_path_factory.mktemp("tok"))
    shards = build_shards(texts, tok, val_fraction=0.1, cache=tmp_path_factory.mktemp("shards"))
    seed_everything(0)
    model = DeepSeekModel(load_deepseek_config("deepseek_tiny", vocab_size=tok.vocab_size,
                                               moe={"bias_update_speed": 0.01}))
    cfg = TrainConfig(steps=200, batch_size=8, seq_len=64, lr=3e-3, min_lr=3e-4, warmup_steps=10, eval_every=100,
                      eval_batches=4, log_every=50, progress=False, use_memory=False)
    trainer = Trainer(model, cfg, shards.tokens("train"), shards.tokens("val"), device="cpu")
    first_val = trainer.evaluate()
    return model, trainer.fit(), first_val, shards


def test_model_trains_on_real_tokens_with_the_trainer(trained):
    model, result, first_val, _ = trained
    assert result.final_val_loss < first_val - 1.5
    last = result.history[-1]
    assert last["mtp_loss"] < result.history[0]["mtp_loss"]
    assert "moe_maxvio" in last and "moe_load_layer1_e0" in last
    router = model.blocks[1].ffn.router  # the one training step moved the balancing biases
    assert router.bias.abs().sum() > 0 and not router.bias.requires_grad


@torch.no_grad()
def test_speculative_decode_gives_the_greedy_tokens(trained):
    model, _, _, shards = trained
    prompt = torch.as_tensor(shards.tokens("val")[:16].astype("int64"))[None]
    result = speculative_decode(model, prompt, 40)
    assert torch.equal(result.tokens, greedy_decode(model, prompt, 40))
    generated = 1 + result.main_forwards + result.accepted  # the first token comes with the prompt
    assert generated - 1 <= 40 <= generated and result.drafted == result.main_forwards
    # a trained MTP head drafts better than chance (1/512); the notebook measures the rate
    assert result.acceptance_rate > 0.1


def test_speculative_decode_needs_an_mtp_module():
    model = DeepSeekModel(load_deepseek_config("deepseek_tiny", mtp={"depth": 0}))
    with pytest.raises(ValueError, match="mtp.depth"):
        speculative_decode(model, torch.zeros(1, 3, dtype=torch.long), 4)


@pytest.mark.parametrize("dispatch", ["grouped_mm", "loop"])
def test_forward_backward_under_autocast(dispatch):
    """Mixed precision (chapter 07) trains this model too: the experts' matmuls follow the dtype."""
    model = DeepSeekModel(load_deepseek_config("deepseek_tiny", moe={"dispatch": dispatch}))
    idx = torch.randint(0, 512, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(idx, targets=idx)
    (out.loss + out.aux_loss).backward()
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    assert model.blocks[1].ffn.experts.gate_up.grad.abs().sum() > 0
