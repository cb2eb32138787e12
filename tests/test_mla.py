"""Multi-head latent attention: absorbed equals naive, what the cache holds, causality, MHA/GQA."""
import pytest
import torch

from dslib.model import DeepSeekModel, KVCache, MultiHeadLatentAttention, greedy_decode, load_deepseek_config
from dslib.model.deepseek_config import AttentionConfig


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _cached_logits(model: DeepSeekModel, idx: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits of idx computed as a prefill of `prefill` tokens, then one cached token at a time."""
    caches = model.new_cache(idx.size(0), idx.size(1))
    outs = [model.logits(model.trunk(idx[:, :prefill], caches)[0])]
    for t in range(prefill, idx.size(1)):
        outs.append(model.logits(model.trunk(idx[:, t:t + 1], caches)[0]))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("q_lora_rank", [0, 32])
def test_absorbed_equals_naive_attention(q_lora_rank):
    config = AttentionConfig(num_heads=4, q_lora_rank=q_lora_rank, kv_lora_rank=24, qk_nope_head_dim=8,
                             qk_rope_head_dim=4, v_head_dim=12)
    attn = MultiHeadLatentAttention(48, config).eval()
    x, positions = torch.randn(2, 10, 48), torch.arange(10)
    naive = attn(x, positions)
    attn.absorb = True
    torch.testing.assert_close(attn(x, positions), naive, rtol=1e-5, atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("absorb", [False, True])
def test_cached_decode_equals_full_forward(absorb):
    model = DeepSeekModel(load_deepseek_config("deepseek_tiny")).eval()
    idx = torch.randint(0, 512, (2, 24))
    full = model(idx).logits
    model.set_absorb(absorb)
    torch.testing.assert_close(_cached_logits(model, idx, prefill=7), full, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_greedy_decode_same_tokens_on_both_paths():
    model = DeepSeekModel(load_deepseek_config("deepseek_tiny")).eval()
    prompt = torch.randint(0, 512, (2, 5))
    naive = greedy_decode(model, prompt, 20, absorb=False)
    assert torch.equal(naive, greedy_decode(model, prompt, 20, absorb=True))
    assert naive.shape == (2, 25) and torch.equal(naive[:, :5], prompt)


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("attention, per_token", [
    ({"kind": "mla"}, 32 + 8),  # kv_lora_rank + qk_rope_head_dim of deepseek_tiny
    ({"kind": "mha"}, 2 * 4 * 16),  # keys and values, 4 heads x 16
    ({"kind": "mha", "num_kv_heads": 2}, 2 * 2 * 16),  # GQA: 2 key/value heads
    ({"kind": "mha", "num_kv_heads": 1}, 2 * 1 * 16),  # MQA
])
def test_cache_holds_only_what_the_formula_says(attention, per_token, dtype):
    model = DeepSeekModel(load_deepseek_config("deepseek_tiny", attention=attention, mtp={"depth": 0})).to(dtype)
    B, T = 3, 11
    caches = model.new_cache(B, T)
    model.trunk(torch.randint(0, 512, (B, T)), caches)
    element = torch.finfo(dtype).bits // 8
    for cache in caches:  # every tensor a cache owns, measured
        tensors = [v for v in vars(cache).values() if isinstance(v, torch.Tensor)]
        assert sum(t.nbytes for t in tensors) == B * T * per_token * element
        assert cache.length == T and cache.bytes_per_token() == per_token * element


@torch.no_grad()
def test_mla_cache_is_the_normalised_latent_and_rotary_key():
    """Per token, the cache's first kv_lora_rank columns are the layer input's latent after its
    RMSNorm (unit mean square at initialisation), the rest the rotary key."""
    model = DeepSeekModel(load_deepseek_config("deepseek_tiny", mtp={"depth": 0})).eval()
    idx = torch.randint(0, 512, (1, 9))
    caches = model.new_cache(1, 9)
    model.trunk(idx[:, :8], caches)
    x = model.embed(idx[:, :8])
    for block, cache in zip(model.blocks, caches):
        h = block.attn_norm(x)
        latent = block.attn.kv_norm(block.attn.kv_down(h)[..., :32])
        torch.testing.assert_close(cache.buffer[:, :8, :32], latent)
        assert torch.all(cache.buffer[:, :8, :32].pow(2).mean(-1).sub(1).abs() < 1e-3)  # RMS-normalised
        x, _, _ = block(x, torch.arange(8))


@torch.no_grad()
def test_cache_overflow_is_an_error():
    cache = KVCache(1, 4, 3, torch.float32, torch.device("cpu"))
    cache.append(torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="max_len=4"):
        cache.append(torch.zeros(1, 1, 3))


@torch.no_grad()
@pytest.mark.parametrize("attention", [{"kind": "mla"}, {"kind": "mha", "num_kv_heads": 2}])
def test_future_token_changes_no_earlier_logit(attention):
    model = DeepSeekModel(load_deepseek_config("deepseek_tiny", attention=attention)).eval()
    idx = torch.randint(0, 512, (2, 32))
    base = model(idx).logits
    for j in (0, 13, 31):  # change token j: positions before it keep their logits, j's own change
        changed = idx.clone()
        changed[:, j] = (idx[:, j] + 1) % 512
        logits = model(changed).logits
        torch.testing.assert_close(logits[:, :j], base[:, :j])
        assert (logits[:, j] - base[:, j]).abs().max() > 1e-4


def test_rope_makes_scores_depend_on_relative_position_only():
    """Shifting every position by the same offset leaves MLA's output unchanged."""
    config = AttentionConfig(num_heads=2, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8)
    attn = MultiHeadLatentAttention(32, config).eval()
    x = torch.randn(1, 6, 32)
    torch.testing.assert_close(attn(x, torch.arange(6)), attn(x, torch.arange(6) + 37), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(attn(x, torch.arange(6)), attn(x, torch.arange(6) * 3), atol=1e-4)
