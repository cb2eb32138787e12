"""A model card in markdown, from what a run measured and nothing else.

The sections follow Mitchell et al. (2019), "Model Cards for Model Reporting", reduced to
what this book measures: model details and training choices, the training data (the
pipeline's funnel: every document kept or dropped with a reason), the evaluation (held-out
perplexity per source against the unigram baseline, domain prompt accuracy, robustness),
the claims ledger (each claim's verdict computed by the claims engine from the evidence of the
latest full chapter runs, or "not yet checked": dslib.jobs.report reads the run records) and the
limitations the numbers show.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dslib.io import write_text_atomic
from dslib.jobs.report import claims_ledger, markdown_table

CARD_FILE = "model_card.md"


def funnel_rows(funnel: Any) -> list[dict[str, Any]]:
    """One row per pipeline step: documents in and kept, and the documents dropped per reason."""
    table = funnel.table()
    reasons = [c for c in table.columns if c not in ("step", "docs_in", "bytes_in", "docs_kept", "bytes_kept")]
    return [{"step": row["step"], "docs_in": int(row["docs_in"]), "docs_kept": int(row["docs_kept"]),
             "MB_kept": round(row["bytes_kept"] / 1e6, 3),
             "dropped": ", ".join(f"{r}: {int(row[r])}" for r in reasons if row[r]) or "-"}
            for _, row in table.iterrows()]


@dataclass
class ModelCard:
    title: str
    details: dict[str, Any]  # what the model is and how it was trained
    funnel: Any  # dslib.data.pipeline.Funnel
    data: dict[str, Any]  # sources, tokenizer and shard facts
    perplexity: list[dict[str, Any]]
    prompts: list[dict[str, Any]]
    robustness: list[dict[str, Any]]
    records: dict[Path, dict[str, Any]]  # run records whose evidence fills the ledger
    limitations: list[str] = field(default_factory=list)
    written: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def markdown(self) -> str:
        kept, total = self.funnel.kept_docs, self.funnel.input_docs
        sections = [
            f"# Model card: {self.title}\n",
            f"Written {self.written} from the measurements of "
            "one end-to-end run (`notebooks/11_end_to_end.ipynb`, `dslib.studies.end_to_end`).\n",
            "## Model details and training\n",
            markdown_table([{"item": k, "value": v} for k, v in self.details.items()], max_rows=len(self.details)),
            "## Training data\n",
            markdown_table([{"item": k, "value": v} for k, v in self.data.items()], max_rows=len(self.data)),
            f"Data pipeline funnel: {kept:,} of {total:,} documents kept "
            f"({self.funnel.kept_bytes / max(self.funnel.input_bytes, 1):.1%} of the bytes); "
            "every dropped document is stored with its reason.\n",
            markdown_table(funnel_rows(self.funnel)),
            "## Evaluation\n",
            "Held-out perplexity per source (tokens of whole validation documents): the model with "
            "Transformer-XL memory, without it, and the unigram baseline on the same tokens.\n",
            markdown_table(self.perplexity),
            "Domain prompt tests (multiple choice, distractors from the other sources, chance 1/4):\n",
            markdown_table(self.prompts),
            "Robustness (attacked contexts, clean continuations; `acc_retained` = accuracy / clean accuracy):\n",
            markdown_table(self.robustness),
            claims_ledger(self.records),
            f"Evidence is read from the latest full run of each chapter ({len(self.records)} run records "
            "found; a chapter with no full run contributes its latest smoke or JupyterLab record, whose rows "
            "are marked and never decide); a claim no run checked says *not yet checked*.\n",
        ]
        if self.limitations:
            sections += ["## Limitations\n", "\n".join(f"- {line}" for line in self.limitations) + "\n"]
        return "\n".join(sections)

    def write(self, folder: str | Path) -> Path:
        return write_text_atomic(Path(folder) / CARD_FILE, self.markdown())
