"""The book's time budgets, reported against measured wall times and never asserted.

A notebook runs in the ``smoke`` profile in under 90 s and in the ``cpu`` profile in under 4
minutes; the whole book (cpu) in under 30 minutes. Wall time depends on the machine (AVX2 or
AVX-512, its load), so a budget is a number to read in a table, not a test: tests decide
correctness, and hangs are caught by timeouts several times these budgets (pytest-timeout).
"""
from __future__ import annotations

from typing import Any

NOTEBOOK_BUDGET_S: dict[str, float] = {"smoke": 90.0, "cpu": 240.0}
BOOK_BUDGET_S: dict[str, float] = {"cpu": 1800.0}


def budget_rows(wall_s: dict[str, float], profile: str) -> list[dict[str, Any]]:
    """One row per notebook (stem -> measured seconds), then the whole book, each against its budget."""
    budget = NOTEBOOK_BUDGET_S.get(profile)
    rows = [{"notebook": stem, "wall_s": round(wall, 1), "budget_s": budget,
             "of_budget": round(wall / budget, 2) if budget else None,
             "over": bool(budget and wall > budget)} for stem, wall in sorted(wall_s.items())]
    book_budget = BOOK_BUDGET_S.get(profile)
    total = sum(wall_s.values())
    rows.append({"notebook": "whole book", "wall_s": round(total, 1), "budget_s": book_budget,
                 "of_budget": round(total / book_budget, 2) if book_budget else None,
                 "over": bool(book_budget and total > book_budget)})
    return rows


def budget_table(wall_s: dict[str, float], profile: str) -> str:
    """A plain-text table of ``budget_rows``, the rows over budget marked OVER."""
    lines = [f"Time budgets ({profile} profile): measured wall time against the budget, reported, not asserted",
             f"{'notebook':28s} {'wall s':>8s} {'budget s':>9s} {'share':>6s}"]
    for row in budget_rows(wall_s, profile):
        budget = f"{row['budget_s']:.0f}" if row["budget_s"] else "-"
        share = f"{row['of_budget']:.0%}" if row["of_budget"] is not None else "-"
        lines.append(f"{row['notebook']:28s} {row['wall_s']:8.1f} {budget:>9s} {share:>6s}"
                     f"{'  OVER' if row['over'] else ''}")
    return "\n".join(lines)
