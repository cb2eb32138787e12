"""Chapter 12's attention measurements: what multi-head latent attention (MLA, DeepSeek-V2
section 2.1) keeps in the KV cache, against MHA and GQA, and what decoding against it costs.

- `kv_cache_bytes_formula` is the cache size per token per layer from the config alone;
  `kv_cache_table` fills real caches (dslib.model.mla.KVCache) through the attention modules
  and reads the bytes back from the tensors, next to the formula.
- `v2_cache_reduction` recomputes DeepSeek-V2's stated 93.3% KV-cache reduction against
  DeepSeek 67B from the two models' published shapes, with and without V2's deployed
  KV-cache quantisation (about 6 bits per element, V2 section 3.2.3).
- `decode_seconds` times one new token's attention against an already filled cache of S
  tokens: MLA absorbed, MLA naive, and MHA of the same heads (also benchmarks/bench_deepseek.py).
"""
from __future__ import annotations

from typing import Any

import torch

from dslib.model.deepseek_config import AttentionConfig
from dslib.model.mla import KVCache, MultiHeadLatentAttention, RotaryAttention
from dslib.plan.measure import interleaved_seconds

# DeepSeek 67B (arXiv 2401.02954, table 2): 95 layers, 64 query heads, GQA with 8 key/value
# heads of 128 dims; DeepSeek-V2 (arXiv 2405.04434): 60 layers, kv_lora_rank 512 + rope dim 64
DEEPSEEK_67B = {"num_layers": 95, "num_heads": 64, "num_kv_heads": 8, "head_dim": 128}
DEEPSEEK_V2 = {"num_layers": 60, "num_heads": 128, "kv_lora_rank": 512, "qk_rope_head_dim": 64,
               "qk_nope_head_dim": 128, "v_head_dim": 128}
V2_STATED_REDUCTION = 0.933  # "reduces the KV cache by 93.3%" (V2 abstract)
V2_DEPLOYED_BITS = 6.0  # V2 section 3.2.3: KV cache quantised to 6 bits per element on average


def kv_cache_bytes_formula(attention: AttentionConfig, element_bytes: float) -> float:
    """Bytes per token per layer: MLA (kv_lora_rank + qk_rope_head_dim) elements, MHA/GQA
    2 x kv_heads x head_dim (a key and a value per key/value head)."""
    if attention.kind == "mla":
        return (attention.kv_lora_rank + attention.qk_rope_head_dim) * element_bytes
    return 2 * attention.kv_heads * attention.head_dim * element_bytes


def attention_module(hidden_size: int, attention: AttentionConfig) -> torch.nn.Module:
    """The chapter's attention of this config: MLA, or RotaryAttention (MHA/GQA)."""
    if attention.kind == "mla":
        return MultiHeadLatentAttention(hidden_size, attention)
    return RotaryAttention(hidden_size, attention)


@torch.no_grad()
def measured_cache_bytes(hidden_size: int, attention: AttentionConfig, tokens: int = 8,
                         dtype: torch.dtype = torch.float32) -> float:
    """Run `tokens` tokens through the attention with a cache and read back the bytes the cache
    tensor holds per token (its filled part's bytes / tokens). The query runs full-rank: it never
    touches the cache, and V3's 1536-rank query alone would allocate 38M weights for nothing."""
    module = attention_module(hidden_size, attention.model_copy(update={"q_lora_rank": 0})).to(dtype).eval()
    cache = KVCache(1, tokens, module.cache_width, dtype, torch.device("cpu"))
    module(torch.randn(1, tokens, hidden_size, dtype=dtype), torch.arange(tokens), cache)
    filled = cache.buffer[:, :cache.length]
    return filled.nbytes / cache.length


def cache_variants(attention: AttentionConfig, gqa_groups: list[int]) -> dict[str, AttentionConfig]:
    """MHA (one key/value head per query head, head_dim of the config), GQA with each number of
    key/value heads in `gqa_groups` that divides the heads, and the config's MLA."""
    mha = attention.model_copy(update={"kind": "mha", "num_kv_heads": None})
    variants = {"MHA": mha}
    for groups in gqa_groups:
        if groups < attention.num_heads and attention.num_heads % groups == 0:
            variants[f"GQA-{groups}"] = mha.model_copy(update={"num_kv_heads": groups})
    variants["MLA"] = attention.model_copy(update={"kind": "mla"})
    return variants


def kv_cache_table(shapes: dict[str, tuple[int, AttentionConfig]], gqa_groups: list[int],
                   dtype: torch.dtype = torch.float32) -> list[dict[str, Any]]:
    """Per shape and variant: elements and bytes per token per layer, measured from the cache
    tensors and from the formula, and the share of MHA's cache. `shapes`: name -> (hidden size,
    attention config); a wide shape may run on a narrow residual stream, since the cache
    depends only on the attention's key/value side."""
    element = torch.empty((), dtype=dtype).element_size()
    rows = []
    for shape, (hidden, attention) in shapes.items():
        variants = cache_variants(attention, gqa_groups)
        mha_bytes = kv_cache_bytes_formula(variants["MHA"], element)
        for name, config in variants.items():
            measured = measured_cache_bytes(hidden, config, dtype=dtype)
            rows.append({"shape": shape, "variant": name, "kv_heads": config.kv_heads if name != "MLA" else 0,
                         "elements_per_token_layer": measured / element, "measured_bytes": measured,
                         "formula_bytes": kv_cache_bytes_formula(config, element), "dtype": str(dtype)[6:],
                         "vs_mha": measured / mha_bytes, "reduction_vs_mha": 1 - measured / mha_bytes})
    return rows


def v2_cache_reduction(mla_bits: float, baseline_bits: float = 16.0) -> float:
    """1 - V2's KV cache per token (all layers) / DeepSeek 67B's, at the given bits per element."""
    v2 = DEEPSEEK_V2["num_layers"] * (DEEPSEEK_V2["kv_lora_rank"] + DEEPSEEK_V2["qk_rope_head_dim"]) * mla_bits
    dense = DEEPSEEK_67B["num_layers"] * 2 * DEEPSEEK_67B["num_kv_heads"] * DEEPSEEK_67B["head_dim"] * baseline_bits
    return 1 - v2 / dense


def v2_attention_shapes() -> tuple[AttentionConfig, AttentionConfig]:
    """(DeepSeek-V2's MLA, DeepSeek 67B's GQA) as attention configs, for measuring their caches."""
    v2 = AttentionConfig(kind="mla", num_heads=DEEPSEEK_V2["num_heads"], kv_lora_rank=DEEPSEEK_V2["kv_lora_rank"],
                         qk_rope_head_dim=DEEPSEEK_V2["qk_rope_head_dim"],
                         qk_nope_head_dim=DEEPSEEK_V2["qk_nope_head_dim"], v_head_dim=DEEPSEEK_V2["v_head_dim"])
    dense = AttentionConfig(kind="mha", num_heads=DEEPSEEK_67B["num_heads"], head_dim=DEEPSEEK_67B["head_dim"],
                            num_kv_heads=DEEPSEEK_67B["num_kv_heads"])
    return v2, dense


def model_cache_reductions(hidden_size: int = 64) -> list[dict[str, Any]]:
    """V2 against DeepSeek 67B, whole model per token: caches measured per layer in bf16 times
    the layer counts, and the same with V2's deployed ~6-bit cache (modelled: the quantised
    cache is not built here), next to the paper's 93.3%."""
    v2, dense = v2_attention_shapes()
    per_layer_v2 = measured_cache_bytes(hidden_size, v2, dtype=torch.bfloat16)
    per_layer_dense = measured_cache_bytes(hidden_size, dense, dtype=torch.bfloat16)
    v2_total = DEEPSEEK_V2["num_layers"] * per_layer_v2
    dense_total = DEEPSEEK_67B["num_layers"] * per_layer_dense
    return [{"comparison": "V2 MLA bf16 vs 67B GQA-8 bf16", "kind": "measured", "mla_bits": 16.0,
             "v2_kB_per_token": v2_total / 1e3, "dense_kB_per_token": dense_total / 1e3,
             "reduction": 1 - v2_total / dense_total, "paper": V2_STATED_REDUCTION},
            {"comparison": f"V2 MLA {V2_DEPLOYED_BITS:g}-bit vs 67B GQA-8 bf16", "kind": "modelled",
             "mla_bits": V2_DEPLOYED_BITS, "v2_kB_per_token": v2_total * V2_DEPLOYED_BITS / 16 / 1e3,
             "dense_kB_per_token": dense_total / 1e3, "reduction": v2_cache_reduction(V2_DEPLOYED_BITS),
             "paper": V2_STATED_REDUCTION}]


@torch.no_grad()
def decode_seconds(hidden_size: int, attention: AttentionConfig, contexts: list[int], batch_size: int = 1,
                   rounds: int = 3, per_round: int = 10) -> list[dict[str, Any]]:
    """Seconds for one new token's attention against a cache already holding S tokens, for each
    S in `contexts`: MLA absorbed, MLA naive (the cached latents up-projected every step) and
    MHA with the config's heads and head_dim, timed side by side (`interleaved_seconds`)."""
    mla = MultiHeadLatentAttention(hidden_size, attention.model_copy(update={"kind": "mla"})).eval()
    mha = RotaryAttention(hidden_size, attention.model_copy(update={"kind": "mha", "num_kv_heads": None})).eval()
    x = torch.randn(batch_size, 1, hidden_size)
    rows = []
    for S in contexts:
        caches = {}
        for label, module in (("mla", mla), ("mha", mha)):
            caches[label] = KVCache(batch_size, S + 1, module.cache_width, torch.float32, torch.device("cpu"))
            caches[label].append(torch.randn(batch_size, S, module.cache_width))

        def one_token(module, cache, absorb=False):
            def run():
                module.absorb = absorb
                module(x, torch.tensor([S]), cache)
                cache.truncate(S)  # the context stays S tokens
            return run
        seconds = interleaved_seconds({"mha": one_token(mha, caches["mha"]),
                                       "mla_naive": one_token(mla, caches["mla"], absorb=False),
                                       "mla_absorbed": one_token(mla, caches["mla"], absorb=True)},
                                      rounds, per_round)
        for variant, s in seconds.items():
            cache = caches["mha" if variant == "mha" else "mla"]
            rows.append({"context": S, "batch_size": batch_size, "variant": variant, "ms_per_token": 1e3 * s,
                         "vs_mha": s / seconds["mha"], "cache_bytes_per_token_layer": cache.bytes_per_token()})
    return rows
