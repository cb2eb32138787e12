"""Optimizers: Lion as published, the article's sign-Adam formula, and their comparison."""
from dslib.optim.lion import ArticleSignAdam, Lion, state_bytes_per_param

__all__ = ["Lion", "ArticleSignAdam", "state_bytes_per_param"]
