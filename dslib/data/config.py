"""Pipeline configuration: a YAML file (configs/data/*.yaml) validated by pydantic.

Every field is checked before any document is read; a bad value raises ``ConfigError``
naming the file and the field, e.g. ``steps.3.near_dedup.threshold: Input should be less
than or equal to 1``. Unknown fields are errors too, so a misspelt threshold cannot be
silently ignored.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dslib.configs import validation_message
from dslib.env import REPO_ROOT

CONFIG_DIR = REPO_ROOT / "configs" / "data"


class ConfigError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CleanConfig(_Strict):
    kind: Literal["clean"]
    nfkc: bool = True


class QualityConfig(_Strict):
    kind: Literal["quality"] = "quality"
    max_chars: int = Field(100_000, gt=0)
    min_words: int = Field(3, ge=0)
    max_words: int = Field(100_000, gt=0)
    min_mean_word_length: float = Field(2.0, ge=0)
    max_mean_word_length: float = Field(12.0, gt=0)
    max_symbol_ratio: float = Field(0.25, ge=0)
    max_digit_ratio: float = Field(0.25, ge=0, le=1)
    min_alpha_word_fraction: float = Field(0.8, ge=0, le=1)
    max_duplicate_line_fraction: float = Field(0.3, ge=0, le=1)
    # repetition rules (lines, n-grams) judge long documents only: in a 20-word verse one
    # repeated "of the" already covers 20% of the characters
    repetition_min_words: int = Field(50, ge=0)
    # Gopher: word n-gram size -> largest share of characters its most frequent n-gram may cover
    max_top_ngram_fraction: dict[int, float] = Field(default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16})

    @model_validator(mode="after")
    def _bounds_ordered(self) -> "QualityConfig":
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) > max_words ({self.max_words})")
        if self.min_mean_word_length > self.max_mean_word_length:
            raise ValueError("min_mean_word_length > max_mean_word_length")
        return self


class ExactDedupConfig(_Strict):
    kind: Literal["exact_dedup"]


class NearDedupConfig(_Strict):
    kind: Literal["near_dedup"]
    threshold: float = Field(0.7, gt=0, le=1)
    num_perm: int = Field(128, ge=2, le=1024)
    shingle_size: int = Field(5, ge=1, le=20)
    bands: int | None = Field(None, ge=1)
    rows: int | None = Field(None, ge=1)
    verify: Literal["estimated", "exact", "none"] = "exact"
    seed: int = 1

    @model_validator(mode="after")
    def _bands_fit(self) -> "NearDedupConfig":
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither (then they follow from threshold)")
        if self.bands and self.rows and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands*rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self


class DomainConfig(_Strict):
    kind: Literal["domain"]
    mode: Literal["keyword", "semantic", "cascade"] = "cascade"
    min_term_chars: int = Field(4, ge=1)  # shorter HPO names/synonyms (acronyms) are ambiguous
    component_words: bool = True  # each word of a term is a term too (generic ones filtered)
    background_source: str | None = None  # a general corpus: terms frequent there are too generic
    max_background_df: float = Field(0.005, ge=0, le=1)
    patterns: list[str] = Field(default_factory=list)  # extra regexes, each match is a hit
    min_hits: int = Field(1, ge=1)  # keyword mode: keep with at least this many distinct hits
    accept_hits: int = Field(6, ge=1)  # cascade: this many hits keep without the model
    reject_hits: int = Field(1, ge=0)  # cascade: this many or fewer drop without the model
    semantic_threshold: float = Field(0.35, ge=-1, le=1)
    n_prototypes: int = Field(256, ge=1)
    top_k: int = Field(5, ge=1)
    batch_size: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _cascade_ordered(self) -> "DomainConfig":
        if self.reject_hits >= self.accept_hits:
            raise ValueError(f"reject_hits ({self.reject_hits}) must be below accept_hits ({self.accept_hits})")
        return self

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"pattern {p!r} is not a valid regex: {e}") from None
        return patterns


StepConfig = Annotated[Union[CleanConfig, QualityConfig, ExactDedupConfig, NearDedupConfig, DomainConfig],
                       Field(discriminator="kind")]


class PipelineConfig(_Strict):
    num_proc: int = Field(1, ge=1)
    text_field: str = "text"
    max_doc_bytes: int = Field(1_000_000, gt=0)  # larger documents are rejected at read time
    steps: list[StepConfig] = Field(min_length=1)


def parse_config(data: dict[str, Any], origin: str = "config") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{origin}: {validation_message(e)}") from None


def load_config(path: str | Path) -> PipelineConfig:
    """A config by path, or by name in configs/data (``"default"`` -> configs/data/default.yaml)."""
    path = Path(path)
    if not path.exists() and (CONFIG_DIR / f"{path}.yaml").exists():
        path = CONFIG_DIR / f"{path}.yaml"
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'steps' list")
    return parse_config(data, str(path))


def build_steps(config: PipelineConfig) -> list[Any]:
    """The step objects, in the configured order."""
    from dslib.data import clean, dedup, domain, quality

    makers = {"clean": lambda c: clean.Clean(c.nfkc), "quality": quality.Quality,
              "exact_dedup": lambda c: dedup.ExactDedup(), "near_dedup": dedup.NearDedup,
              "domain": domain.DomainFilter.from_config}
    return [makers[c.kind](c) for c in config.steps]
