"""Compute-optimal training tokens: Chinchilla's rule of thumb and DeepSeek's fitted allocation.

Chinchilla (Hoffmann et al. 2022): for a compute budget, loss is lowest at about 20 training
tokens per parameter.
DeepSeek LLM (Bi et al. 2024, arXiv 2401.02954, section 3.2) measures model scale as non-embedding
FLOPs per token, M = 72 n_layer d^2 + 12 n_layer d l_seq (attention included, the vocabulary
not), budgets compute as C = M * D and fits on IsoFLOP profiles (1e17 to 3e20 FLOPs):
    M_opt = 0.1715 * C^0.5243        D_opt = 5.8316 * C^0.4757
(the two exponents add to 1 and the coefficients multiply to 1, as C = M * D requires).
"""
from __future__ import annotations

from typing import Any

from dslib.model.config import ModelConfig
from dslib.model.flops import count_parameters

CHINCHILLA_TOKENS_PER_PARAM = 20.0
DEEPSEEK_M_COEF, DEEPSEEK_M_EXP = 0.1715, 0.5243
DEEPSEEK_D_COEF, DEEPSEEK_D_EXP = 5.8316, 0.4757


def chinchilla_tokens(n_params: float, tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM) -> float:
    """Compute-optimal training tokens by Chinchilla's rule: ~20 per parameter."""
    if n_params <= 0:
        raise ValueError(f"n_params must be positive, got {n_params}")
    return tokens_per_param * n_params


def deepseek_model_scale(num_layers: int, hidden: int, seq_len: int, intermediate: int | None = None) -> float:
    """DeepSeek's M, non-embedding training FLOPs per token: 6 x (the 4d^2 + 2 d ff weights of a
    layer) + 12 d l_seq of attention, per layer. With ff = 4d it is their 72 L d^2 + 12 L d l_seq."""
    ff = 4 * hidden if intermediate is None else intermediate
    return num_layers * (6.0 * (4 * hidden * hidden + 2 * hidden * ff) + 12.0 * hidden * seq_len)


def deepseek_optimal_allocation(compute: float) -> tuple[float, float]:
    """(M_opt, D_opt) for a budget of ``compute`` FLOPs: DeepSeek's fitted power laws."""
    if compute <= 0:
        raise ValueError(f"compute must be positive, got {compute}")
    return DEEPSEEK_M_COEF * compute ** DEEPSEEK_M_EXP, DEEPSEEK_D_COEF * compute ** DEEPSEEK_D_EXP


def deepseek_optimal_tokens(model_scale: float) -> tuple[float, float]:
    """(D, C) for a model of scale M: the budget C whose optimal model is this one
    (M_opt(C) = M) and the tokens D_opt(C) it should then train on."""
    if model_scale <= 0:
        raise ValueError(f"model_scale must be positive, got {model_scale}")
    compute = (model_scale / DEEPSEEK_M_COEF) ** (1.0 / DEEPSEEK_M_EXP)
    return deepseek_optimal_allocation(compute)[1], compute


def model_scale_of(config: ModelConfig) -> float:
    """DeepSeek's M for a Transformer-XL config: l_seq is the keys a query sees (segment + memory)."""
    return deepseek_model_scale(config.num_layers, config.hidden_size, config.seq_len + config.memory_length,
                                config.intermediate_size)


def compute_optimal_tokens(config: ModelConfig) -> float:
    """Training tokens that make ``config`` compute-optimal by DeepSeek's fit."""
    return deepseek_optimal_tokens(model_scale_of(config))[0]


def compute_optimal_rows(config: ModelConfig, train_tokens: float) -> list[dict[str, Any]]:
    """The compute-optimal token count of ``config`` by each rule, next to ``train_tokens``."""
    n_params = count_parameters(config)
    non_embedding = n_params - config.vocab_size * config.hidden_size
    scale = model_scale_of(config)
    deepseek_d, budget = deepseek_optimal_tokens(scale)
    rows = [
        {"rule": "Chinchilla, 20 tokens / parameter (all parameters)", "tokens": chinchilla_tokens(n_params),
         "model_size": n_params, "compute_FLOP": 6.0 * n_params * chinchilla_tokens(n_params)},
        {"rule": "Chinchilla, 20 tokens / non-embedding parameter", "tokens": chinchilla_tokens(non_embedding),
         "model_size": non_embedding, "compute_FLOP": 6.0 * non_embedding * chinchilla_tokens(non_embedding)},
        {"rule": "DeepSeek LLM fit, M = non-embedding FLOPs/token", "tokens": deepseek_d,
         "model_size": scale, "compute_FLOP": budget},
    ]
    for row in rows:
        row["planned_over_optimal"] = train_tokens / row["tokens"]
    return rows
