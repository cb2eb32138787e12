"""Evaluation (chapter 10): local `evaluate` metric modules and their registry, perplexity
with and without Transformer-XL memory, a narrow LM interface with prompt suites, and
robustness under adversarial perturbations."""
from dslib.eval.registry import available_metrics, combine, hub_load_error, load_metric, register_metric

__all__ = ["available_metrics", "combine", "hub_load_error", "load_metric", "register_metric"]
