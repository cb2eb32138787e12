"""Training: the one step and its steppers, the single-process trainer, its recipe and schedule,
checkpoints that survive SIGKILL, the precision policy and peak-memory measurement."""
from dslib.env import seed_everything
from dslib.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from dslib.train.recipe import OptimizerFactory, TrainConfig, adamw, lr_at, param_groups
from dslib.train.step import EngineStepper, OptimizerStepper, StepResult, batch_loss, train_step
from dslib.train.trainer import Trainer, TrainResult, train, validation_loss

__all__ = [
    "EngineStepper", "OptimizerFactory", "OptimizerStepper", "StepResult", "TrainConfig", "TrainResult",
    "Trainer", "adamw", "batch_loss", "latest_checkpoint", "load_checkpoint", "lr_at", "param_groups",
    "save_checkpoint", "seed_everything", "train", "train_step", "validation_loss",
]
