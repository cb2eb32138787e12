"""The one config of the end-to-end run (configs/end_to_end.yaml), validated before any work.

Four sections (data, model, train, eval) and the seed. A notebook's flat parameters override
the file by name: ``load_end_to_end_config("end_to_end", steps=20)`` sets ``train.steps``; every name
belongs to exactly one section, and an unknown name or a bad value is an error naming it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dslib.configs import ConfigError, Strict, config_path, read_file, validate
from dslib.data.config import load_pipeline_config
from dslib.data.sources import available
from dslib.env import REPO_ROOT
from dslib.model import load_config as load_model_config
from dslib.train import TrainConfig

CONFIG_DIR = REPO_ROOT / "configs"




class DataSection(Strict):
    sources: dict[str, int | None] = Field(min_length=1)
    chunk_words: int = Field(200, gt=0)
    pipeline: str = "default"
    vocab_size: int = Field(2048, ge=257)
    val_fraction: float = Field(0.05, gt=0, lt=1)

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, value: dict[str, int | None]) -> dict[str, int | None]:

        unknown = sorted(set(value) - set(available()))
        if unknown:
            raise ValueError(f"unknown sources {unknown}; available: {available()}")
        return value

    @field_validator("pipeline")
    @classmethod
    def _pipeline_loads(cls, value: str) -> str:

        load_pipeline_config(value)  # a missing or invalid pipeline config fails here, naming its field
        return value


class ModelSection(Strict):
    architecture: str = "tiny"
    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(4, gt=0)
    seq_len: int = Field(128, gt=0)
    memory_length: int = Field(128, ge=0)


class TrainSection(Strict):
    zero_stage: Literal[0, 1, 2, 3] = 0
    nprocs: int = Field(2, ge=1)
    precision: Literal["fp32", "bf16"] = "fp32"
    optimizer: Literal["adamw", "lion"] = "adamw"
    lion_lr_ratio: float = Field(0.2, gt=0, le=1)
    checkpoint_every: int | None = Field(None, ge=1)
    steps: int = Field(500, gt=0)
    batch_size: int = Field(8, gt=0)
    lr: float = Field(3e-3, gt=0)
    launch_timeout_s: float = Field(900, gt=0)


class EvalSection(Strict):
    ppl_docs: int = Field(60, gt=0)
    prompt_items: int = Field(40, gt=0)
    robust_items: int = Field(12, gt=0)
    robust_attack: Literal["typo", "word_swap", "word_delete", "case"] = "typo"
    robust_rate: float = Field(0.2, ge=0, le=1)
    min_gain_vs_unigram: float = Field(1.5, ge=0)


class EndToEndConfig(Strict):
    seed: int = 0
    data: DataSection
    model: ModelSection = ModelSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()

    @model_validator(mode="after")
    def _consistent(self) -> "EndToEndConfig":
        if self.train.zero_stage and self.train.batch_size % self.train.nprocs:
            raise ValueError(f"batch_size={self.train.batch_size} does not split over nprocs={self.train.nprocs}")
        self.architecture_config(vocab_size=self.data.vocab_size)  # the model config must validate too
        return self

    def architecture_config(self, vocab_size: int) -> Any:

        m = self.model
        return load_model_config(m.architecture, vocab_size=vocab_size, hidden_size=m.hidden_size,
                                 num_layers=m.num_layers, intermediate_size=4 * m.hidden_size,
                                 seq_len=m.seq_len, memory_length=m.memory_length)

    def recipe(self) -> Any:
        """The recipe's TrainConfig; Lion gets lr * ratio and weight decay / ratio (chapter 08)."""

        t, lion = self.train, self.train.optimizer == "lion"
        lr = t.lr * t.lion_lr_ratio if lion else t.lr
        decay = TrainConfig.model_fields["weight_decay"].default
        return TrainConfig(steps=t.steps, batch_size=t.batch_size, seq_len=self.model.seq_len, lr=lr, min_lr=lr / 10,
                           warmup_steps=min(50, t.steps // 5), weight_decay=decay / t.lion_lr_ratio if lion else decay,
                           eval_every=0, precision=t.precision, seed=self.seed, progress=False, name="end_to_end")


SECTIONS = {"data": DataSection, "model": ModelSection, "train": TrainSection, "eval": EvalSection}


def load_end_to_end_config(name_or_path: str | Path = "end_to_end", **overrides: Any) -> EndToEndConfig:
    """configs/<name>.yaml (or a path) with flat overrides (``steps=20`` sets train.steps)."""

    path = config_path(name_or_path, CONFIG_DIR, ".yaml", "end-to-end")
    raw = read_file(path)
    owner = {name: section for section, model in SECTIONS.items() for name in model.model_fields}
    for name, value in overrides.items():
        if name in owner:
            raw.setdefault(owner[name], {})[name] = value
        elif name in EndToEndConfig.model_fields and name not in SECTIONS:
            raw[name] = value
        else:
            raise ConfigError(f"unknown end-to-end parameter {name!r}; known: {', '.join(parameter_names())}")
    return validate(EndToEndConfig, raw, str(path))


def parameter_names() -> list[str]:
    """Every flat name ``load_end_to_end_config`` accepts (notebook 11's parameters besides ``config``)."""
    return ["seed", *(name for model in SECTIONS.values() for name in model.model_fields)]
