"""Training: the single-process loop, its schedule and checkpoints that survive SIGKILL."""
from dslib.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from dslib.env import seed_everything
from dslib.train.recipe import OptimizerFactory, TrainConfig, adamw, lr_at, param_groups
from dslib.train.trainer import Trainer, TrainResult, evaluate, train

__all__ = [
    "OptimizerFactory", "TrainConfig", "TrainResult", "Trainer", "adamw", "evaluate", "latest_checkpoint",
    "load_checkpoint", "lr_at", "param_groups", "save_checkpoint", "seed_everything", "train",
]
