"""Transformer-XL model: relative shift, masking, memory, gate, config, counts (tiny sizes)."""
import math

import pytest
import torch

from dslib.configs import ConfigError
from dslib.model import attention
from dslib.model import (
    RelativeAttention, TransformerXL, count_parameters, flops_per_token, load_config,
    matmul_parameters, rel_shift, sinusoidal_embedding,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("M", [0, 5])
def test_rel_shift_equals_direct_scores(M):
    B, H, T, D = 2, 3, 7, 4
    S = M + T
    q, r, v_bias = torch.randn(B, H, T, D), torch.randn(H, S, D), torch.randn(H, 1, D)
    by_distance = (q + v_bias) @ r.transpose(1, 2)  # column c = distance S-1-c
    shifted = rel_shift(by_distance)
    for i in range(T):
        for j in range(i + M + 1):  # every visible key
            direct = ((q[:, :, i] + v_bias[:, 0]) * r[:, S - 1 - (i + M - j)]).sum(-1)
            torch.testing.assert_close(shifted[:, :, i, j], direct)


def exact_sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """R[c] for distance length-1-c: sines then cosines of d / 10000^(2i/dim), with Python's math."""
    rows = []
    for d in range(length - 1, -1, -1):
        angles = [d / 10000 ** (2 * i / dim) for i in range(dim // 2)]
        rows.append([math.sin(a) for a in angles] + [math.cos(a) for a in angles])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-7), (torch.bfloat16, 4e-3)])
def test_sinusoidal_embedding_is_exact_in_the_requested_dtype(dtype, tolerance):
    """A float64 model gets float64-accurate positions, not float32 ones cast up (7.6e-8 off)."""
    length, dim = 1000, 64
    got = sinusoidal_embedding(length, dim, dtype=dtype)
    assert got.dtype == dtype and got.shape == (length, dim)
    assert (got.double() - exact_sinusoid_table(length, dim)).abs().max() < tolerance


def test_attention_with_query_positions_matches_full_attention():
    attn = RelativeAttention(16, 4).eval()
    M, T = 3, 6
    context, pos_emb = torch.randn(2, M + T, 16), sinusoidal_embedding(M + T, 16)
    full = attn(context[:, M:], context, pos_emb)
    pos = torch.tensor([[0, 2, 5], [4, 1, 3]])
    subset = attn(context[:, M:].gather(1, pos[..., None].expand(-1, -1, 16)), context, pos_emb, pos + M)
    torch.testing.assert_close(subset, full.gather(1, pos[..., None].expand(-1, -1, 16)))


def direct_relative_attention(attn, x, context, pos_emb):
    """Transformer-XL's attention written out per query and key, straight from the formula:
    score(i, j) = (q_i + u) . k_j + (q_i + v) . W_r R[distance i + M - j], keys j <= i + M."""
    B, T, _ = x.shape
    S, H, dh = context.size(1), attn.num_heads, attn.head_dim
    M = S - T
    q = attn.q_proj(x).view(B, T, H, dh)
    k, v = attn.k_proj(context).view(B, S, H, dh), attn.v_proj(context).view(B, S, H, dh)
    r = attn.r_proj(pos_emb).view(S, H, dh)  # row c: distance S-1-c
    rows = []
    for i in range(T):
        visible = i + M + 1
        content = ((q[:, i, None] + attn.pos_bias_u) * k[:, :visible]).sum(-1)  # [B, visible, H]
        position = ((q[:, i, None] + attn.pos_bias_v) * r[S - 1 - (i + M - torch.arange(visible))]).sum(-1)
        probs = ((content + position) / math.sqrt(dh)).softmax(dim=1)
        rows.append((probs[..., None] * v[:, :visible]).sum(1))  # [B, H, dh]
    return attn.o_proj(torch.stack(rows, 1).reshape(B, T, H * dh))


@pytest.mark.parametrize("query_block", [128, 3, 2])  # 7 queries: 1, 2 or 4 causal blocks
@pytest.mark.parametrize("M", [0, 5])
def test_attention_matches_the_formula_forward_and_backward(M, query_block, monkeypatch):
    """The batched layout (heads first, one matmul per head for the position term), causal
    query blocks on prefixes of the keys, the relative shift as a view and the in-place sums
    give the formula's outputs and gradients."""
    monkeypatch.setattr(attention, "QUERY_BLOCK", query_block)
    attn = RelativeAttention(24, 3)
    with torch.no_grad():  # non-zero biases: zeros would hide a wrong u/v
        attn.pos_bias_u.normal_()
        attn.pos_bias_v.normal_()
    T = 7
    context = torch.randn(2, M + T, 24, dtype=torch.float64, requires_grad=True)
    pos_emb = sinusoidal_embedding(M + T, 24, dtype=torch.float64)
    attn.double()
    grad_out = torch.randn(2, T, 24, dtype=torch.float64)
    results = []
    for fn in (attn, lambda *a: direct_relative_attention(attn, *a)):
        attn.zero_grad()
        context.grad = None
        out = fn(context[:, M:], context, pos_emb)
        out.backward(grad_out)
        results.append([out.detach(), context.grad.clone()] + [p.grad.clone() for p in attn.parameters()])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_causal_mask_future_token_does_not_change_earlier_logits():
    model = TransformerXL(load_config("tiny")).eval()
    idx = torch.randint(0, 512, (2, 32))
    changed = idx.clone()
    changed[:, 20] = (idx[:, 20] + 1) % 512
    a, b = model(idx).logits, model(changed).logits
    torch.testing.assert_close(a[:, :20], b[:, :20])
    assert not torch.allclose(a[:, 20:], b[:, 20:])


@pytest.mark.parametrize("memory_length", [0, 16])
def test_memory_carries_information_across_segments(memory_length):
    model = TransformerXL(load_config("tiny", memory_length=memory_length)).eval()
    seg1a, seg1b, seg2 = (torch.randint(0, 512, (2, 16)) for _ in range(3))
    mems_a, mems_b = model(seg1a).mems, model(seg1b).mems
    assert all(m.size(1) == memory_length and not m.requires_grad for m in mems_a)
    a, b = model(seg2, mems_a).logits, model(seg2, mems_b).logits
    if memory_length:
        assert (a - b).abs().max() > 1e-3
    else:
        torch.testing.assert_close(a, b)


def test_memory_is_truncated_to_memory_length():
    model = TransformerXL(load_config("tiny", memory_length=24))
    out = model(torch.randint(0, 512, (2, 16)))
    out = model(torch.randint(0, 512, (2, 16)), out.mems)
    assert [m.shape for m in out.mems] == [torch.Size([2, 24, 64])] * 2


def test_loss_is_mean_cross_entropy_and_none_without_targets():
    model = TransformerXL(load_config("tiny"))
    idx = torch.randint(0, 512, (2, 16))
    out = model(idx, targets=idx)
    expected = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 512), idx.reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    assert model(idx).loss is None and float(out.aux_loss) == 0.0 and out.stats == {}
    assert model.head.weight is model.embed.weight


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("memory", [False, True])
def test_forward_backward_under_autocast(dtype, memory):
    """Mixed precision (chapter 07) trains this model: in-place score ops must keep up with autocast."""
    model = TransformerXL(load_config("tiny", memory_length=8))
    idx = torch.randint(0, 512, (2, 8))
    mems = model(idx).mems if memory else None
    with torch.autocast("cpu", dtype=dtype):
        out = model(idx, mems=mems, targets=idx)
    out.loss.backward()
    assert out.logits.dtype == dtype and torch.isfinite(out.loss)
    assert all(p.grad is not None for p in model.blocks[0].attn.parameters())


def _gated(granularity, penalty=0.0):
    return load_config("tiny", gate={"enabled": True, "penalty": penalty, "granularity": granularity})


@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_gate_parameters_get_gradients(granularity):
    model = TransformerXL(_gated(granularity, penalty=0.1))
    idx = torch.randint(0, 512, (4, 16))
    out = model(idx, targets=idx)
    (out.loss + out.aux_loss).backward()
    for name, p in model.named_parameters():
        if ".gate." in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_eval_skipping_equals_hard_gating(granularity):
    model = TransformerXL(_gated(granularity)).eval()
    for block in model.blocks:  # mixed decisions: about half kept
        torch.nn.init.zeros_(block.gate.fc_out.bias)
        torch.nn.init.normal_(block.gate.fc_out.weight, std=1.0)
    idx = torch.randint(0, 512, (8, 16))
    mems = model(torch.randint(0, 512, (8, 16))).mems
    skipped = model(idx, mems)
    assert 0.1 < float(skipped.stats["gate_skip_fraction"]) < 0.9
    model.set_skip_compute(False)
    dense = model(idx, mems)
    torch.testing.assert_close(skipped.logits, dense.logits, rtol=1e-4, atol=1e-5)
    for a, b in zip(skipped.mems, dense.mems):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_gate_learns_to_skip_under_high_penalty():
    model = TransformerXL(_gated("sequence", penalty=5.0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, 512, (8, 16))
    for _ in range(40):
        out = model(idx, targets=idx)
        opt.zero_grad()
        (out.loss + out.aux_loss).backward()
        opt.step()
    model.eval()
    skipping = model(idx)
    assert float(skipping.stats["gate_skip_fraction"]) > 0.5
    model.set_skip_compute(False)  # the same hard decisions, computed densely and masked
    torch.testing.assert_close(skipping.logits, model(idx).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"num_attention_heads": 5}, "num_attention_heads"),
        ({"hidden_size": -64}, "hidden_size"),
        ({"memory_length": -1}, "memory_length"),
        ({"num_layer": 3}, "num_layer"),
        ({"gate": {"penalty": -1.0}}, "penalty"),
        ({"gate": {"granularity": "layer"}}, "granularity"),
    ],
)
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        load_config("tiny", **overrides)


def test_configs_load_and_overrides_merge():
    small = load_config("small")
    assert small.num_layers == 6 and small.name == "small"
    article = load_config("article")
    assert (article.hidden_size, article.num_attention_heads, article.intermediate_size,
            article.memory_length) == (1024, 16, 4096, 512)
    gated = load_config("tiny", gate={"enabled": True})
    assert gated.gate.enabled and gated.gate.temperature == 1.0


@pytest.mark.parametrize("gate", [False, True])
def test_parameter_count_matches_module(gate):
    config = load_config("tiny", gate={"enabled": gate})
    model = TransformerXL(config)
    assert count_parameters(config) == sum(p.numel() for p in model.parameters())


def test_flops_formula():
    config = load_config("small")
    L, d, T, M = 6, 384, 256, 256
    gpt = 6 * matmul_parameters(config) + 12 * L * T * d
    assert flops_per_token(config, with_memory=False, relative_attention=False) == gpt
    with_mem = flops_per_token(config, with_memory=True)
    assert with_mem == 6 * matmul_parameters(config) + 12 * L * d * d * M / T + 18 * L * (T + M) * d
