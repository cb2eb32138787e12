"""Raw cleaning: Unicode NFKC, escape sequences, bidi and control characters, whitespace;
empty results are dropped.

NFKC folds compatibility forms (full-width letters, ligatures, non-breaking spaces) into
their plain equivalents, so that the same word is the same bytes before hashing and
dedup. Terminal escape sequences (ECMA-48: CSI ``ESC [ params intermediates final``, the
string commands OSC/DCS/SOS/PM/APC ``ESC ] ... BEL or ESC \\``, and two- or three-character
escapes such as ``ESC ( B``) are removed whole, before control characters: removing ESC
alone would leave ``[31m`` in the text. A string command is at most 1024 characters; a
longer or unterminated one loses only its ESC. Unicode bidi controls (embeddings,
overrides, isolates, the Arabic letter mark) are removed: they reorder what a reader sees
without being text. Then control characters (C0/C1, zero-width marks, BOM); runs of blanks
become one space, lines are stripped and more than one blank line becomes one. The step
counts, per document, the escape sequences, bidi controls and control characters it
removed; the funnel sums them (``Funnel.edits``).
"""
from __future__ import annotations

import re
import unicodedata

from dslib.data.pipeline import DocStep

_ESCAPE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: parameter bytes, intermediate bytes, final byte
    r"|\x1b[P\]X^_][^\x07\x1b]{0,1024}(?:\x07|\x1b\\)"  # DCS, OSC, SOS, PM, APC ... BEL or ST
    r"|\x1b[ -/]*[0-~]")  # any other escape: intermediates, final byte
_BIDI = re.compile("[\u061c\u202a-\u202e\u2066-\u2069]")
# C0 and C1 controls except \t \n \r (whitespace, handled below), zero-width marks, BOM
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2060\ufeff]")
_BLANK_LINES = re.compile(r"\n{3,}")
REMOVED = ("escape_sequences", "bidi_controls", "control_characters")  # what Clean counts


def clean_text(text: str, nfkc: bool = True) -> tuple[str, dict[str, int]]:
    """The cleaned text and how many of each ``REMOVED`` kind it lost."""
    if nfkc:
        text = unicodedata.normalize("NFKC", text)
    removed = {}
    for kind, pattern in zip(REMOVED, (_ESCAPE, _BIDI, _CONTROL)):
        text, removed[kind] = pattern.subn("", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n\n")
    lines = (" ".join(line.split()) for line in text.split("\n"))  # split() knows Unicode blanks
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip(), removed


def normalize(text: str, nfkc: bool = True) -> str:
    return clean_text(text, nfkc)[0]


class Clean(DocStep):
    """Normalise every text; drop documents left empty (reason ``empty``)."""

    name = "clean"

    def __init__(self, nfkc: bool = True) -> None:
        self.nfkc = nfkc

    def decide(self, texts: list[str]) -> tuple[list[str], list[str], list[str], dict[str, list[int]]]:
        cleaned, removed = zip(*(clean_text(t, self.nfkc) for t in texts)) if texts else ((), ())
        reasons = ["" if t else "empty" for t in cleaned]
        details = ["" if t else f"{len(raw)} chars before cleaning" for t, raw in zip(cleaned, texts)]
        return list(cleaned), reasons, details, {kind: [r[kind] for r in removed] for kind in REMOVED}
