"""Processes: the launcher (torchrun, DeepSpeed's launcher, srun), one rank's worker, free
ports, DeepSpeed's config validation, its compiled ops and the engine start."""
__all__ = ["demo", "ds_config", "launch", "ops", "ports", "worker"]
