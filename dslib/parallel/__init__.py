"""Multi-process runs: the launcher, DeepSpeed/ZeRO, tensor/pipeline/sequence parallel."""
