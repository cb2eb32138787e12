"""Chapter 03's inspections: the four score terms add up to the model's score, the memory is a
stop-gradient, and one token's measured reach equals the structural bound."""
import pytest
import torch

from dslib.model import TransformerXL, load_config, sinusoidal_embedding
from dslib.model.attention import attend_with_scores, score_terms
from dslib.studies import architecture


def _model(**overrides) -> TransformerXL:
    torch.manual_seed(0)
    model = TransformerXL(load_config("tiny", **overrides))
    for block in model.blocks:  # u and v start at zero: give the bias terms something to show
        torch.nn.init.normal_(block.attn.pos_bias_u, std=0.5)
        torch.nn.init.normal_(block.attn.pos_bias_v, std=0.5)
    return model.eval()


def test_four_terms_sum_to_the_models_score_and_give_its_output():
    model = _model()
    tokens = torch.randint(0, model.config.vocab_size, (2, 2 * model.config.seq_len))
    terms, rows = architecture.score_terms_on_batch(model, tokens)
    assert len(terms) == model.config.num_layers
    for row in rows:
        assert row["sum_vs_model_score"] < 1e-5 and row["output_vs_model"] < 1e-5
        assert row["memory_length"] == model.config.memory_length and row["mean_abs"] > 0
    # every term is needed: leaving one out moves the score
    attn, d = model.blocks[0].attn, model.config.hidden_size
    context = torch.randn(2, 24, d)
    pos_emb = sinusoidal_embedding(24, d)
    split = score_terms(attn, context[:, 8:], context, pos_emb)
    model_score = attn.scores(context[:, 8:], context, pos_emb)
    visible = split.visible
    assert (split.total() - model_score)[..., visible].abs().max() < 1e-5
    assert torch.isinf(model_score[..., ~visible]).all() and torch.isinf(split.total()[..., ~visible]).all()
    for name, term in split.named().items():
        assert (split.total() - term - model_score)[..., visible].abs().max() > 1e-3, name
    out = attend_with_scores(attn, split.total(), context)
    assert torch.allclose(out, attn(context[:, 8:], context, pos_emb), atol=1e-6)


def test_content_bias_depends_on_the_key_only_and_position_bias_on_the_distance_only():
    model = _model()
    attn, d = model.blocks[1].attn, model.config.hidden_size
    context = torch.randn(1, 20, d)
    split = score_terms(attn, context[:, 4:], context, sinusoidal_embedding(20, d))
    c, p = split.content_bias[0, 0], split.position_bias[0, 0]  # head 0, row 0: [Q, S]
    assert torch.allclose(c[-1, :5], c[10, :5])  # same key, two queries that both see it
    assert torch.allclose(p[5, 3], p[6, 4]) and torch.allclose(p[12, 0], p[15, 3])  # same distance
    assert not torch.allclose(p[5, 3], p[5, 4])


def test_memory_is_a_stop_gradient():
    model = _model()
    tokens = torch.randint(0, model.config.vocab_size, (2, 2 * model.config.seq_len + 1))
    rows = architecture.memory_gradient_rows(model, tokens)
    detached = [r for r in rows if r["memory"].startswith("detached")]
    attached = [r for r in rows if r["memory"].startswith("attached")]
    assert len(detached) == len(attached) == model.config.num_layers
    assert all(r["grad_is_none"] and not r["memory_requires_grad"] for r in detached)
    assert all(not r["grad_is_none"] and r["grad_norm"] > 0 for r in attached)


@pytest.mark.parametrize("memory_length", [0, 16, 64])
def test_measured_reach_equals_the_structural_bound(memory_length):
    model = _model()
    T, L = model.config.seq_len, model.config.num_layers
    tokens = torch.randint(0, model.config.vocab_size, (1, 5 * T))
    rows = architecture.reach_rows(model, tokens, [memory_length], [0, T // 2, T - 1])
    for row in rows:
        assert row["measured_reach"] == row["bound_reach"]
    assert model.memory_length == model.config.memory_length  # restored
    # the last token of a segment reaches L whole segments whenever there is any memory
    assert architecture.reach_bound(L, T, memory_length, T - 1) - (T - 1) == (L * T if memory_length else 0)
    # a token at a segment's start needs a memory of a whole segment to reach the next one
    assert (architecture.reach_bound(1, T, memory_length, 0) >= T) == (memory_length >= T)


def test_influence_is_zero_before_the_changed_token_and_reach_needs_a_long_enough_stream():
    model = _model()
    T = model.config.seq_len
    tokens = torch.randint(0, model.config.vocab_size, (1, 3 * T))
    influence = architecture.influence_map(model, tokens, T + 5)
    assert influence.shape == (model.config.num_layers + 1, 3 * T)
    assert (influence[:, :T + 5] == 0).all() and influence[0, T + 5] > 0 and (influence[0, T + 6:] == 0).all()
    with pytest.raises(ValueError, match="stream"):
        architecture.reach_rows(model, tokens[:, :T], [64], [T - 1])
