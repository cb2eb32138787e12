"""Processes: the launcher (torchrun, DeepSpeed's launcher, srun), one rank's worker, free
ports, and DeepSpeed's compiled ops and engine start."""
