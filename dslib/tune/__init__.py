"""Memory and communication tuning, applied from outside the model: activation checkpointing,
ALBERT-style parameter sharing, PowerSGD with every all-reduced byte counted."""
__all__ = ["checkpointing", "powersgd", "sharing"]
