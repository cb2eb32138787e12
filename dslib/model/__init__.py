"""Transformer-XL language model with relative attention and a trainable dynamic gate."""
from dslib.model.attention import RelativeAttention, rel_shift, sinusoidal_embedding
from dslib.model.config import GateConfig, ModelConfig, load_config
from dslib.model.flops import count_parameters, flops_breakdown, flops_per_token, matmul_parameters
from dslib.model.gate import DynamicGate
from dslib.model.transformer_xl import ModelOutput, TransformerXL

__all__ = [
    "DynamicGate", "GateConfig", "ModelConfig", "ModelOutput", "RelativeAttention",
    "TransformerXL", "count_parameters", "flops_breakdown", "flops_per_token",
    "load_config", "matmul_parameters", "rel_shift", "sinusoidal_embedding",
]
