"""What only a chapter uses: its sweeps, comparisons, reports, plots and demo data.

A notebook calls its study module; a study calls the library (dslib.<package>); the library
never imports a study (tests/test_layers.py enforces it).
"""
__all__ = [
    "compression", "data_governance", "data_plots", "deepspeed_runs", "ds_checkpointing", "end_to_end",
    "end_to_end_config", "gating", "memory_sweeps", "mixed_precision", "optimizers", "overlap",
    "pipeline_report", "pipeline_study", "planning_claims", "planning_plots", "resource_planning",
    "topology", "tp_report", "tp_study", "tuning_claims", "tuning_plots", "zero3", "zero3_report",
]
