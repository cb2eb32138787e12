"""Evidence rows: the numbers a chapter records for a claim, and where a record came from.

A chapter records rows (``Run.evidence``); the run record says what produced them. The origin of
a record decides whether its rows may decide a verdict:
  full         a finished ``dslib run`` in a real profile (cpu, gpu, cluster): the only rows that decide
  smoke        the smoke profile (seconds-long, for tests)
  interactive  JupyterLab (``outputs/lab``: no runner section, no profile, no commit)
  failed       a run whose notebook raised
  unfinished   a run still going, or killed before the runner closed its record
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from dslib.claims.definitions import Claim, finite_number, load_claims

Kind = Literal["measured", "modelled"]
KINDS: tuple[str, ...] = ("measured", "modelled")
ORIGINS: tuple[str, ...] = ("full", "smoke", "interactive", "failed", "unfinished")
SMOKE_PROFILE = "smoke"


@dataclass(frozen=True)
class Evidence:
    """One row: the claim's quantities measured (or modelled) under some conditions."""

    claim: str
    values: dict[str, float]
    unit: str = ""
    conditions: dict[str, Any] = field(default_factory=dict)
    kind: Kind = "measured"
    seeds: int = 1
    default: bool = False  # the chapter's own default setting
    note: str = ""
    # from the run record, filled in when records are merged
    chapter: str = ""
    origin: str = "interactive"
    profile: str = ""
    run_dir: str = ""
    commit: str = ""

    def key(self) -> tuple[str, str, str]:
        """Rows with the same key replace each other (a cell run twice records once)."""
        return self.claim, json.dumps(self.conditions, sort_keys=True, default=str), self.kind

    def stored(self) -> dict[str, Any]:
        """What metrics.json keeps: the row without the provenance the run record holds."""
        row = asdict(self)
        for name in ("chapter", "origin", "profile", "run_dir", "commit"):
            row.pop(name)
        return row


def make_evidence(claim_id: str, value: float | dict[str, float], unit: str = "",
                  conditions: dict | None = None, kind: str = "measured", seeds: int = 1,
                  default: bool = False, note: str = "",
                  claims: dict[str, Claim] | None = None) -> Evidence:
    """A checked row: a known claim id, one finite number per quantity of the claim."""
    claims = claims if claims is not None else load_claims()
    if claim_id not in claims:
        raise KeyError(f"unknown claim id {claim_id!r}; known: {', '.join(sorted(claims))}")
    claim = claims[claim_id]
    names = claim.quantity_names()
    if isinstance(value, dict):
        if set(value) != set(names):
            raise ValueError(f"{claim_id}: values must name exactly the quantities {names}, got {sorted(value)}")
        values = {name: finite_number(value[name], f"{claim_id}.{name}") for name in names}
    else:
        if len(names) != 1:
            raise ValueError(f"{claim_id} has quantities {names}: pass a dict name -> number")
        values = {names[0]: finite_number(value, f"{claim_id}.{names[0]}")}
    if unit and len(names) == 1 and claim.quantities[0].unit and unit != claim.quantities[0].unit:
        raise ValueError(f"{claim_id}.{names[0]} is in {claim.quantities[0].unit!r}, got unit {unit!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive int, got {seeds!r}")
    conditions = dict(conditions or {})
    for key, cond in conditions.items():
        if not isinstance(key, str) or not (cond is None or isinstance(cond, (str, int, float, bool))):
            raise TypeError(f"{claim_id}: condition {key!r} must map a name to a str/number/bool, got {cond!r}")
    return Evidence(claim_id, values, unit or (claim.quantities[0].unit if len(names) == 1 else ""),
                    conditions, kind, seeds, bool(default), note)


def record_origin(record: dict[str, Any], finished: bool = False) -> str:
    """full / smoke / interactive / failed / unfinished, from a run record's runner section.
    ``finished=True`` reads a still-running record as done (a notebook judging its own rows)."""
    info = record.get("run")
    if not info:
        return "interactive"
    status = info.get("status")
    if status == "running" and finished:
        status = "ok"
    if status == "failed":
        return "failed"
    if status != "ok":
        return "unfinished"
    return "smoke" if info.get("profile") == SMOKE_PROFILE else "full"


def record_evidence(record: dict[str, Any], run_dir: str = "", finished: bool = False) -> list[Evidence]:
    """The rows of one run record, each with the record's chapter, origin, profile, dir and commit."""
    info = record.get("run") or {}
    provenance = dict(chapter=record.get("stem", ""), origin=record_origin(record, finished),
                      profile=info.get("profile", ""), run_dir=str(run_dir),
                      commit=str(info.get("git_commit", ""))[:10] + ("+dirty" if info.get("git_dirty") else ""))
    return [Evidence(**row, **provenance) for row in record.get("evidence", [])]
