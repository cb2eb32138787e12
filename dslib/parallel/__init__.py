"""The parallelisms, applied from outside the model: the dp x pp x tp grid, expert parallel, Megatron tensor and
sequence parallel, the DeepSpeed pipeline, and ZeRO (the recipe on ranks, its memory counted)."""
__all__ = ["expert", "grid", "pipeline", "sequence", "tensor", "zero", "zero_memory"]
