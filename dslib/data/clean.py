"""Raw cleaning: Unicode NFKC, control characters, whitespace; empty results are dropped.

NFKC folds compatibility forms (full-width letters, ligatures, non-breaking spaces) into
their plain equivalents, so that the same word is the same bytes before hashing and
dedup. Control characters (C0/C1, zero-width marks, BOM) are removed; runs of blanks
become one space, lines are stripped and more than one blank line becomes one.
"""
from __future__ import annotations

import re
import unicodedata

from dslib.data.pipeline import DocStep

# C0 and C1 controls except \t \n \r (whitespace, handled below), zero-width marks, BOM
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2060\ufeff]")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize(text: str, nfkc: bool = True) -> str:
    if nfkc:
        text = unicodedata.normalize("NFKC", text)
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = text.replace("\u2028", "\n").replace("\u2029", "\n\n")
    lines = (" ".join(line.split()) for line in text.split("\n"))  # split() knows Unicode blanks
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


class Clean(DocStep):
    """Normalise every text; drop documents left empty (reason ``empty``)."""

    name = "clean"

    def __init__(self, nfkc: bool = True) -> None:
        self.nfkc = nfkc

    def decide(self, texts: list[str]) -> tuple[list[str], list[str], list[str]]:
        cleaned = [normalize(t, self.nfkc) for t in texts]
        reasons = ["" if t else "empty" for t in cleaned]
        details = ["" if t else f"{len(raw)} chars before cleaning" for t, raw in zip(cleaned, texts)]
        return cleaned, reasons, details
