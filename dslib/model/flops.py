"""Parameter and FLOP counts of the model, as plain functions of its config.

Used by chapter 02 (resource planning) and by the MFU in benchmarks/bench_model.py.
"""
from __future__ import annotations

from dslib.model.config import ModelConfig


def count_parameters(config: ModelConfig) -> int:
    """Exact trainable parameter count of TransformerXL(config) (the tied head counted once).

    per block: LayerNorms 2*2d, q/k/v/o/r projections 5d^2 (no biases), u and v
    biases 2d, MLP 2*d*ff, gate (if enabled) LayerNorm 2d + d*g + g + g + 1;
    plus the embedding V*d and the final LayerNorm 2d.
    """
    d, ff, g = config.hidden_size, config.intermediate_size, config.gate.hidden_size
    block = 4 * d + 5 * d * d + 2 * d + 2 * d * ff
    if config.gate.enabled:
        block += 2 * d + d * g + 2 * g + 1
    return config.num_layers * block + config.vocab_size * d + 2 * d


def matmul_parameters(config: ModelConfig) -> int:
    """Weights every token multiplies with: q/k/v/o and MLP per layer, plus the head.

    Excluded: the embedding (a lookup), r_proj (applied once per segment to the S
    position embeddings, shared by the batch), norms, biases and the gate's MLP.
    """
    d, ff = config.hidden_size, config.intermediate_size
    return config.num_layers * (4 * d * d + 2 * d * ff) + config.vocab_size * d


def flops_breakdown(
    config: ModelConfig, with_memory: bool, relative_attention: bool = True
) -> dict[str, float]:
    """Training FLOPs per segment token (forward + backward = 3x forward), by part.

    T = seq_len, M = memory_length if with_memory else 0, S = T + M, L layers, width d:
      dense      = 6 * N_matmul                       (2 FLOPs per multiply-add, x3)
      memory_kv  = 6 * L * 2d^2 * M / T               (k/v projections of the M cached
                                                       states, recomputed each segment)
      attention  = 6 * L * S * d * n_score_matmuls    (content q.k, position (q+v).r,
                                                       probs.v: 3 matmuls; absolute
                                                       attention has 2)
    Scores are counted for the full T x S rectangle, the PaLM/MFU convention (12*L*T*d for a
    GPT), although the attention skips part of the causal upper half (blocks of queries over
    prefixes of the keys): MFU stays comparable with other models' figures.
    """
    L, d, T = config.num_layers, config.hidden_size, config.seq_len
    M = config.memory_length if with_memory else 0
    score_matmuls = 3 if relative_attention else 2
    return {
        "dense": 6.0 * matmul_parameters(config),
        "memory_kv": 6.0 * L * 2 * d * d * M / T,
        "attention": 6.0 * L * (T + M) * d * score_matmuls,
    }


def flops_per_token(
    config: ModelConfig, with_memory: bool, relative_attention: bool = True
) -> float:
    """Training FLOPs per token: sum of `flops_breakdown` (see its formula).

    relative_attention=False gives the plain GPT baseline (6N + 12*L*T*d).
    """
    return sum(flops_breakdown(config, with_memory, relative_attention).values())
