"""Transformer-XL language model with relative attention and a trainable dynamic gate; the
DeepSeek-V3-style model of chapter 12 (MLA, DeepSeekMoE, multi-token prediction)."""
from dslib.model.attention import RelativeAttention, rel_shift, sinusoidal_embedding
from dslib.model.builder import build_model
from dslib.model.config import GateConfig, ModelConfig, load_config
from dslib.model.decode import SpeculativeResult, greedy_decode, speculative_decode
from dslib.model.deepseek import DeepSeekModel
from dslib.model.deepseek_config import (AttentionConfig, DeepSeekConfig, MoEConfig, MTPConfig,
                                         load_deepseek_config)
from dslib.model.deepseek_flops import count_deepseek_parameters, deepseek_flops_per_token, dense_equivalent
from dslib.model.flops import count_parameters, flops_breakdown, flops_per_token, matmul_parameters
from dslib.model.gate import DynamicGate
from dslib.model.mla import KVCache, MultiHeadLatentAttention, RotaryAttention
from dslib.model.moe import DeepSeekMoE, SwiGLU
from dslib.model.transformer_xl import ModelOutput, TransformerXL

__all__ = [
    "AttentionConfig", "DeepSeekConfig", "DeepSeekMoE", "DeepSeekModel", "DynamicGate", "GateConfig",
    "KVCache", "MTPConfig", "ModelConfig", "ModelOutput", "MoEConfig", "MultiHeadLatentAttention",
    "RelativeAttention", "RotaryAttention", "SpeculativeResult", "SwiGLU", "TransformerXL",
    "build_model", "count_deepseek_parameters", "count_parameters", "deepseek_flops_per_token", "dense_equivalent",
    "flops_breakdown", "flops_per_token", "greedy_decode", "load_config", "load_deepseek_config",
    "matmul_parameters", "rel_shift", "sinusoidal_embedding", "speculative_decode",
]
