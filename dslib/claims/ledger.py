"""The claims ledger: every claim once, its evidence merged over every run record that has rows
for it, and the engine's decision on them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dslib.claims.definitions import Claim, load_claims
from dslib.claims.engine import Decision, decide
from dslib.claims.evidence import Evidence, record_evidence


@dataclass(frozen=True)
class Entry:
    claim: Claim
    decision: Decision
    rows: list[Evidence]

    @property
    def chapters(self) -> list[str]:
        return sorted({row.chapter for row in self.rows})


def merge(records: dict[Path, dict[str, Any]], counted: tuple[str, ...] = ("full",),
          finished: bool = False) -> list[Entry]:
    """One entry per claim of configs/claims.yaml, in its order (rows of unknown ids are dropped)."""
    claims = load_claims()
    rows: dict[str, list[Evidence]] = {cid: [] for cid in claims}
    for run_dir, record in records.items():
        for row in record_evidence(record, run_dir, finished):
            if row.claim in rows:
                rows[row.claim].append(row)
    return [Entry(claim, decide(claim, rows[cid], counted), rows[cid]) for cid, claim in claims.items()]


def preview(record: dict[str, Any], run_dir: Path | str = "") -> list[dict[str, str]]:
    """What the engine says about the claims one run has rows for, as the run itself sees them:
    a still-running run counts as finished, and a JupyterLab session counts (it never counts in
    the ledger of the report or the model card). Smoke rows still never decide."""
    entries = merge({Path(run_dir): record}, counted=("full", "interactive"), finished=True)
    return [{"claim": e.claim.id, "verdict": e.decision.headline, "reason": e.decision.reason,
             "rows": len(e.rows)} for e in entries if e.rows]
