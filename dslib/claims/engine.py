"""The claims engine: evidence rows in, a verdict out. The only place a verdict is decided.

  holds                measured rows in the chapter's default setting meet the claim, and every
                       row that may decide meets it (only for claims whose conditions the source states)
  holds only when      some rows meet it and others do not: the verdict names the conditions of
                       each, from the rows' condition values; or every row meets it but the source
                       states no setting (the range tested and the share of the grid are given)
  does not hold        no row that may decide meets it
  not enough evidence  no row may decide: smoke, failed, unfinished or interactive runs, fewer
                       seeds than the claim needs, or modelled rows where the claim is about a measurement
Each decision carries a one-line reason.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

from dslib.claims.definitions import Claim
from dslib.claims.evidence import Evidence

HOLDS = "holds"
HOLDS_ONLY_WHEN = "holds only when"
DOES_NOT_HOLD = "does not hold"
NOT_ENOUGH = "not enough evidence"
NOT_CHECKED = "not yet checked"
VERDICTS: tuple[str, ...] = (HOLDS, HOLDS_ONLY_WHEN, DOES_NOT_HOLD, NOT_ENOUGH)

MEETS, MISSES = "meets", "misses"
ORIGIN_LABELS = {"smoke": "smoke run", "interactive": "interactive session", "failed": "failed run",
                 "unfinished": "unfinished run", "full": "full run"}
MAX_LISTED = 6  # condition values listed before "..."
MAX_COMBOS = 3  # meeting settings listed one by one when several conditions separate them


@dataclass(frozen=True)
class Decision:
    verdict: str
    reason: str
    when: str = ""  # holds only when: the conditions of the rows that meet the claim
    status: tuple[str, ...] = ()  # per row: meets / misses / why it does not decide

    @property
    def headline(self) -> str:
        return f"{self.verdict} {self.when}" if self.when else self.verdict


def _why_not_deciding(claim: Claim, row: Evidence, counted: Iterable[str]) -> str:
    if row.origin not in counted:
        return ORIGIN_LABELS.get(row.origin, row.origin)
    if row.seeds < claim.evidence.seeds:
        return f"{row.seeds} of {claim.evidence.seeds} seeds"
    if row.kind == "modelled" and not claim.evidence.modelled_decides:
        return "modelled (the claim is about a measurement)"
    return ""


def decide(claim: Claim, rows: list[Evidence], counted: tuple[str, ...] = ("full",)) -> Decision:
    """The verdict on ``claim`` from ``rows``; rows of origins outside ``counted`` do not decide."""
    if not rows:
        return Decision(NOT_CHECKED, "no chapter has recorded evidence")
    status, deciding = [], []
    for row in rows:
        why = _why_not_deciding(claim, row, counted)
        if not why:
            why = MEETS if claim.meets(row.values) else MISSES
            deciding.append((row, why == MEETS))
        status.append(why)
    status = tuple(status)
    ignored = ", ".join(f"{n} x {label}" for label, n in Counter(s for s in status if s not in (MEETS, MISSES)).items())
    if not deciding:
        return Decision(NOT_ENOUGH, f"no row may decide ({ignored})", status=status)
    aside = f"; not deciding: {ignored}" if ignored else ""
    met = [row for row, ok in deciding if ok]
    missed = [row for row, ok in deciding if not ok]
    n, values = len(deciding), _value_ranges(claim, [row for row, _ in deciding])
    if not met:
        return Decision(DOES_NOT_HOLD, f"none of {n} rows meets {claim.describe()} ({values}){aside}", status=status)
    share = f"{len(met)} of {n} settings ({100 * len(met) / n:.2g}%)"
    if missed:
        when, unless = describe_conditions([r.conditions for r in met], [r.conditions for r in missed])
        return Decision(HOLDS_ONLY_WHEN, f"{share} meet {claim.describe()}; not when {unless} ({values}){aside}",
                        when, status)
    tested = describe_conditions([r.conditions for r in met], [])[0]
    if not claim.stated_conditions:
        return Decision(HOLDS_ONLY_WHEN, f"every tested setting meets it ({share}; {values}), but the source "
                        f"states no setting: it holds for the settings tested{aside}", tested, status)
    if not any(r.default and r.kind == "measured" for r in met):
        return Decision(HOLDS_ONLY_WHEN, f"every row meets it ({values}), none measured in the chapter's "
                        f"default setting{aside}", tested, status)
    return Decision(HOLDS, f"all {n} rows meet {claim.describe()} ({values}), the chapter's default "
                    f"setting included{aside}", status=status)


def _value_ranges(claim: Claim, rows: list[Evidence]) -> str:
    parts = []
    for q in claim.quantities:
        values = [row.values[q.name] for row in rows]
        lo, hi = min(values), max(values)
        parts.append(f"{q.name} {lo:.3g}" if lo == hi else f"{q.name} {lo:.3g} to {hi:.3g}")
    return ", ".join(parts)


def describe_conditions(met: list[dict[str, Any]], missed: list[dict[str, Any]]) -> tuple[str, str]:
    """(conditions of the meeting rows, conditions only the other rows have), e.g.
    ("micro_batch >= 16", "micro_batch <= 8"). Keys whose values do not separate the two are left
    out; a few meeting rows that differ in several keys are listed one by one; with no other rows,
    every key's tested range is given."""
    keys = list(dict.fromkeys(k for c in met + missed for k in c))
    when, unless, separating = [], [], []
    for key in keys:
        in_met = {_hashable(c.get(key)) for c in met}
        in_missed = {_hashable(c.get(key)) for c in missed}
        grid = in_met | in_missed
        if not missed or in_met != grid:
            when.append(_span(key, in_met, grid))
            separating.append(key)
        if in_missed - in_met:
            unless.append(_span(key, in_missed - in_met, grid))
    combos = list(dict.fromkeys(tuple(_hashable(c.get(k)) for k in separating) for c in met))
    if missed and len(separating) > 1 and len(combos) <= MAX_COMBOS:
        when = [" or ".join("(" + ", ".join(f"{k} = {_text(v)}" for k, v in zip(separating, combo)) + ")"
                            for combo in combos)]
    if missed and not when:  # no single condition separates them: an interaction of several
        when = [f"in {len(met)} combinations of {', '.join(keys)}" if keys else "in some runs"]
    return " and ".join(when), " or ".join(unless) or "the other settings of the same ranges"


def _text(value: Any) -> str:
    return "none" if value is None else f"{value:g}" if _is_number(value) else str(value)


def _hashable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _span(key: str, values: set, grid: set) -> str:
    """``values`` of ``key`` as a range of the grid's values where they are contiguous in it."""
    if all(_is_number(v) for v in grid):
        ordered, chosen = sorted(grid), sorted(values)
        lo, hi = chosen[0], chosen[-1]
        if [v for v in ordered if lo <= v <= hi] == chosen:
            if lo == hi:
                return f"{key} = {lo:g}"
            if hi == ordered[-1] and lo != ordered[0]:
                return f"{key} >= {lo:g}"
            if lo == ordered[0] and hi != ordered[-1]:
                return f"{key} <= {hi:g}"
            return f"{lo:g} <= {key} <= {hi:g}"
        shown = [_text(v) for v in chosen]
    else:
        shown = sorted(_text(v) for v in values)
    if len(shown) == 1:
        return f"{key} = {shown[0]}"
    listed = ", ".join(shown[:MAX_LISTED]) + (", ..." if len(shown) > MAX_LISTED else "")
    return f"{key} in {{{listed}}}"
