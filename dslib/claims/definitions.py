"""configs/claims.yaml as validated claim definitions: what is measured and how it is compared.

A bad file is refused with the claim and the field named, e.g.
``claims.gate_skips_30_50.quantities.0.low: Field required``.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dslib.configs import validation_message
from dslib.env import REPO_ROOT

CLAIMS_FILE = REPO_ROOT / "configs" / "claims.yaml"
SOURCES = ("article", "DeepSeek-V2/V3 paper", "book")


class Quantity(BaseModel):
    """One measured number of an evidence row and the comparison that meets the claim."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    unit: str = ""
    compare: Literal["at_least", "at_most", "within", "between"]
    value: float | None = None      # at_least, at_most, within
    tolerance: float = Field(0.0, ge=0, lt=1)  # within: relative, e.g. 0.1 for "2.3x within 10%"
    low: float | None = None        # between
    high: float | None = None

    @model_validator(mode="after")
    def _fields_of_the_comparison(self) -> "Quantity":
        if self.compare == "between":
            if self.low is None or self.high is None or self.low > self.high:
                raise ValueError("'between' needs low <= high")
        elif self.value is None:
            raise ValueError(f"{self.compare!r} needs a value")
        if self.compare == "within" and self.tolerance == 0:
            raise ValueError("'within' needs a tolerance > 0")
        return self

    def meets(self, x: float) -> bool:
        if self.compare == "at_least":
            return x >= self.value
        if self.compare == "at_most":
            return x <= self.value
        if self.compare == "within":
            return abs(x - self.value) <= self.tolerance * abs(self.value)
        return self.low <= x <= self.high

    def describe(self) -> str:
        """The comparison in words: 'improvement within 10% of 2.3x'."""
        unit = {"x": "x", "fraction": "", "": ""}.get(self.unit, f" {self.unit}")
        if self.compare == "between":
            return f"{self.name} between {self.low:g} and {self.high:g}{unit}"
        if self.compare == "within":
            return f"{self.name} within {self.tolerance:.0%} of {self.value:g}{unit}"
        return f"{self.name} {self.compare.replace('_', ' ')} {self.value:g}{unit}"


class EvidenceNeeded(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seeds: int = Field(1, ge=1, description="rows with fewer seeds do not decide")
    modelled_decides: bool = Field(False, description="False: the claim is about a measurement")


class Claim(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    source: Literal[SOURCES]
    section: str
    claim: str
    check: str
    chapters: list[str]
    quantities: list[Quantity] = Field(min_length=1)
    stated_conditions: bool
    evidence: EvidenceNeeded = EvidenceNeeded()

    @model_validator(mode="after")
    def _unique_quantities(self) -> "Claim":
        names = [q.name for q in self.quantities]
        if len(set(names)) != len(names):
            raise ValueError(f"quantity names repeat: {names}")
        return self

    def quantity_names(self) -> list[str]:
        return [q.name for q in self.quantities]

    def meets(self, values: dict[str, float]) -> bool:
        """True when every quantity of the row meets its comparison."""
        return all(q.meets(values[q.name]) for q in self.quantities)

    def describe(self) -> str:
        return "; ".join(q.describe() for q in self.quantities)


class ClaimsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    claims: dict[str, Claim]


def parse_claims(data: dict) -> dict[str, Claim]:
    """Validate the YAML's content; the error names the claim and the field."""
    if not isinstance(data, dict) or not isinstance(data.get("claims"), dict):
        raise ValueError("the claims file needs a top-level 'claims:' mapping")
    with_ids = {"claims": {cid: {"id": cid, **(body or {})} for cid, body in data["claims"].items()}}
    try:
        return ClaimsFile.model_validate(with_ids).claims
    except ValidationError as error:
        raise ValueError(f"claims file: {validation_message(error)}") from None


@lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> dict[str, Claim]:
    return parse_claims(yaml.safe_load(Path(path).read_text()))


def load_claims(path: Path = CLAIMS_FILE) -> dict[str, Claim]:
    """The claim definitions, validated (re-read when the file changes)."""
    return _load(str(path), Path(path).stat().st_mtime)


def finite_number(value: object, what: str) -> float:
    """``value`` as a float; bools, strings, None, NaN and infinities are refused, naming ``what``."""
    if hasattr(value, "item") and not isinstance(value, (int, float)):
        value = value.item()  # numpy / torch scalars
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}: {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return float(value)
